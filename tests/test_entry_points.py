"""The entry points: one readable message (no traceback) on a user error, typed keys, their own
configs, no empty run folders, one log line per record."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _run_script(path: Path, args: list[str], home: Path, cwd: Path) -> subprocess.CompletedProcess:
    # a fresh matplotlib cache: its "generated new fontManager" INFO line is what must stay out of logs
    env = {**os.environ, "EDTN_HOME": str(home), "TORCH_HOME": str(home / "torch"), "OMP_NUM_THREADS": "1",
           "MPLCONFIGDIR": str(home / "mpl")}
    return subprocess.run([sys.executable, str(path), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def _run(script: str, args: list[str], home: Path, cwd: Path) -> subprocess.CompletedProcess:
    return _run_script(REPO / script, args, home, cwd)


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


def test_failed_start_leaves_no_run_dir(tmp_path, authors_dir):
    """A run that fails before training leaves no empty dated folder; with run_dir= given, Hydra's
    run dir is run_dir (no second outputs/edtn/<date> folder either)."""
    codes = authors_dir / "vox_deca"
    base = [f"data.train={codes}", f"data.test={codes}", f"data.cache_dir={tmp_path / 'cache'}"]
    proc = _run("train.py", base, tmp_path / "home", tmp_path)
    assert proc.returncode == 1 and "generic_model.pkl" in proc.stderr
    assert not (tmp_path / "outputs").exists()
    proc = _run("train.py", base + [f"run_dir={tmp_path / 'mine'}"], tmp_path / "home", tmp_path)
    assert proc.returncode == 1
    assert not (tmp_path / "outputs").exists() and not (tmp_path / "mine").exists()


def test_train_log_lines_are_written_once(tmp_path, authors_dir, synthetic_flame_path,
                                          landmark_embedding_path):
    codes = authors_dir / "vox_deca"
    run_dir = tmp_path / "run"
    args = [f"data.train={codes}", f"data.test={codes}", f"data.cache_dir={tmp_path / 'cache'}",
            f"run_dir={run_dir}", "device=cpu", "epochs=1", "max_steps=2", "data.batch_size=64",
            "data.eval_batch_size=308", "log.progress=false", "log.every=1", "log.figure_every=1",
            f"loss.flame_model={synthetic_flame_path}", f"loss.landmark_embedding={landmark_embedding_path}",
            f"loss.basis={authors_dir / 'transform_matrix_08_30.npy'}"]
    proc = _run("train.py", args, tmp_path / "home", tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [line for line in (run_dir / "train.log").read_text().splitlines() if line.strip()]
    assert any("run dir" in line for line in lines)
    assert len(lines) == len(set(lines)), "a log line was written twice"
    assert not any("fontManager" in line or "font_manager" in line for line in lines)
    assert not (tmp_path / "outputs").exists()


def test_entry_points_read_the_configs_of_their_own_checkout(tmp_path):
    """A second checkout sharing the installed packages sees its own YAML (no pkg:// lookup)."""
    checkout = tmp_path / "checkout"
    shutil.copytree(REPO / "configs", checkout / "configs")
    shutil.copy(REPO / "train.py", checkout / "train.py")
    (checkout / "configs" / "edtn" / "experiment" / "mine.yaml").write_text(
        "# @package _global_\nseed: 4242\n")
    proc = _run_script(checkout / "train.py", ["experiment=mine", "data.train=x", "--cfg", "job"],
                       tmp_path / "home", tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "seed: 4242" in proc.stdout
    proc = _run("train.py", ["experiment=mine", "data.train=x", "--cfg", "job"], tmp_path / "home", tmp_path)
    assert proc.returncode != 0 and "mine" in proc.stderr     # this checkout has no such preset


def test_unknown_training_key_is_named_without_a_plus_hint(tmp_path):
    proc = _run("train.py", ["optim.lrr=0.1", "data.train=x"], tmp_path / "home", tmp_path)
    assert proc.returncode == 1 and "unknown EDTN config key 'optim.lrr'" in proc.stderr
    assert "optim.lr" in proc.stderr and "+optim" not in proc.stderr
    proc = _run("train_ag.py", ["train.epochs=1.5"], tmp_path / "home", tmp_path)
    assert proc.returncode == 1 and "train.epochs" in proc.stderr and "Traceback" not in proc.stderr
