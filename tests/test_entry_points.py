"""The training entry points stop with one readable message (no traceback) on a missing asset."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _run(script: str, args: list[str], home: Path, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "EDTN_HOME": str(home), "TORCH_HOME": str(home / "torch"), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(REPO / script), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_train_py_missing_flame_is_one_message(tmp_path, authors_dir):
    codes = authors_dir / "vox_deca"
    proc = _run("train.py", [f"data.train={codes}", f"data.test={codes}", f"data.cache_dir={tmp_path / 'cache'}",
                             f"hydra.run.dir={tmp_path / 'run'}"], tmp_path / "home", tmp_path)
    assert proc.returncode == 1
    assert "train.py: error: generic_model.pkl" in proc.stderr
    assert "flame.is.tue.mpg.de" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


def test_train_ag_py_missing_vgg_is_one_message(tmp_path, generator_kit):
    tiny = generator_kit / "tiny_dataset"
    proc = _run("train_ag.py", [f"run_dir={tmp_path / 'run'}", f"data.root={tiny / 'animeceleb'}",
                                f"data.train_list={tiny / 'lists' / 'train_list.txt'}",
                                f"data.cache_path={tmp_path / 'cached.json'}"], tmp_path / "home", tmp_path)
    assert proc.returncode == 1
    assert "train_ag.py: error: vgg19-dcbb9e9d.pth" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
