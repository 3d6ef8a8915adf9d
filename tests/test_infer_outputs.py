"""infer.py's extra outputs: ``pose_plot`` (the pose-curves figure), ``grid_out`` (the grid video
from the same frames), and a run on the stand-in asset kit (one warning line, an MP4)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import reenact.plots as plots
from infra.standin import STANDIN_WARNING
from reenact.pipeline import run
from reenact.pose import POSE_COLUMNS

REPO = Path(__file__).resolve().parents[1]
N_CODES = 12
N_VIDEO_FRAMES = 3


@pytest.fixture(scope="module")
def codes(authors_dir, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("plot_codes") / "vox_deca"
    folder.mkdir()
    for f in sorted((authors_dir / "vox_deca").glob("*.mat"))[:N_CODES]:
        shutil.copy(f, folder / f.name)
    return folder


def _frame_count(path: Path) -> int:
    import imageio.v3 as iio

    return sum(1 for _ in iio.imiter(path))


def _cli(args: list[str], home: Path, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "EDTN_HOME": str(home), "TORCH_HOME": str(home / "torch"), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(REPO / "infer.py"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def test_pose_plot_has_four_panels_and_the_csv_data(codes, authors_dir, tmp_path, monkeypatch):
    """The figure written to pose_plot= is the one checked here (captured on its way to the file)."""
    saved = []
    original = plots.save_figure

    def capture(fig, path):
        saved.append(fig)
        return original(fig, path)

    monkeypatch.setattr(plots, "save_figure", capture)
    result = run({"driving": str(codes), "render": "none", "device": "cpu", "progress": False,
                  "pose_csv": str(tmp_path / "poses.csv"), "pose_plot": str(tmp_path / "poses.png"),
                  "relative": True, "mouth_gain": 1.5, "smoothing": {"method": "ema", "ema_alpha": 0.3},
                  "edtn_path": str(authors_dir / "EDTN.pt")})
    assert result.pose_plot == tmp_path / "poses.png" and result.pose_plot.stat().st_size > 10_000
    (fig,) = saved
    assert len(fig.axes) == 4
    table = pd.read_csv(tmp_path / "poses.csv")
    assert len(table) == N_CODES
    drawn = {ln.get_gid(): np.asarray(ln.get_ydata()) for ax in fig.axes for ln in ax.get_lines()}
    for name in POSE_COLUMNS:
        np.testing.assert_allclose(drawn[f"pose:{name}"], table[name].to_numpy(), rtol=1e-6, atol=1e-6)
    # thin lines: the mapping's raw output, i.e. not relative (frame 0 is not zero) and no gain
    np.testing.assert_allclose(drawn["raw:morph_00"], result.morphs_raw[:, 0], rtol=0, atol=0)
    assert not np.allclose(drawn["raw:morph_12"], table["morph_12"].to_numpy())
    from PIL import Image

    with Image.open(result.pose_plot) as img:
        assert img.size == tuple(int(v * fig.dpi) for v in fig.get_size_inches())


def test_pose_plot_cli_and_bad_suffix(codes, authors_dir, tmp_path):
    ok = _cli([f"driving={codes}", "render=none", f"pose_plot={tmp_path / 'curves.svg'}",
               f"edtn_path={authors_dir / 'EDTN.pt'}", "progress=false"], tmp_path / "home", tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "curves.svg").read_text().lstrip().startswith("<?xml")
    bad = _cli([f"driving={codes}", "render=none", f"pose_plot={tmp_path / 'curves.txt'}",
                f"edtn_path={authors_dir / 'EDTN.pt'}"], tmp_path / "home", tmp_path)
    assert bad.returncode == 1 and "pose_plot" in bad.stderr and ".png" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_infer_on_the_standin_kit_writes_mp4_grid_and_warns_once(standin_kit, authors_dir, tmp_path):
    """The stand-in kit runs the whole video path (detect, DECA, EDTN, generator)."""
    out, grid = tmp_path / "anime.mp4", tmp_path / "grid.mp4"
    proc = _cli([f"driving={authors_dir / 'example.mp4'}", f"source={authors_dir / 'basis.png'}", f"out={out}",
                 f"grid_out={grid}", f"max_frames={N_VIDEO_FRAMES}", "device=cpu", "progress=false"],
                standin_kit, tmp_path)
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout + proc.stderr
    assert text.count(STANDIN_WARNING) == 1
    assert _frame_count(out) == N_VIDEO_FRAMES and _frame_count(grid) == N_VIDEO_FRAMES
    import imageio.v3 as iio

    anime = iio.imread(out, index=0)
    panel = iio.imread(grid, index=0)
    assert panel.shape[0] == anime.shape[0] and panel.shape[1] >= 3 * anime.shape[1]   # driving | anime | chart


def test_real_assets_print_no_standin_warning(codes, authors_dir, tmp_path, capsys):
    run({"driving": str(codes), "render": "none", "device": "cpu", "progress": False,
         "edtn_path": str(authors_dir / "EDTN.pt")})
    assert STANDIN_WARNING not in capsys.readouterr().out
