"""The demo without a browser or server: controls from the typed config, config assembly, readable
errors with the CLI's text, upload limit, side-by-side runs, the work dir and the command line."""
from __future__ import annotations

import enum
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import pytest

from reenact.config import GeneratorStyle, MappingName, SmoothingMethod
from reenact.demo import backend as B
from reenact.demo.cli import DEFAULT_HOST, DEFAULT_PORT, parse_args
from reenact.demo.workdir import WorkDir

REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- controls
def test_controls_come_from_the_config_schema_and_yaml():
    assert B.field_choices("generator") == tuple(s.value for s in GeneratorStyle)
    assert B.field_choices("smoothing.method") == tuple(s.value for s in SmoothingMethod)
    assert B.field_choices("mouth_gain") == ()
    defaults = B.default_values()
    assert defaults["smoothing.ema_alpha"] == 0.5 and defaults["mouth_gain"] == 1.0
    assert defaults["relative"] is False and defaults["generator"] == "default"
    for spec in B.CONTROLS:                  # every control is a key of the schema
        assert B.has_key(spec.key), spec.key
        if spec.kind in ("dropdown", "radio"):
            assert spec.default in spec.choices, spec.key
    assert {c.key for c in B.LIVE_CONTROLS} <= {c.key for c in B.CONTROLS}


class _Mapping(str, enum.Enum):
    edtn = "edtn"
    basis_fit = "basis_fit"
    vertex_fit = "vertex_fit"


@dataclass
class _SchemaWithMappings:
    mapping: _Mapping = _Mapping.edtn


def test_a_new_mapping_in_the_schema_appears_as_a_choice():
    assert B.field_choices("mapping", _SchemaWithMappings) == ("edtn", "basis_fit", "vertex_fit")
    assert B.field_choices("mapping") == tuple(m.value for m in MappingName)


def test_nest_drops_unknown_and_unset_values():
    nested = B._nest({"smoothing.method": "ema", "smoothing.beta": 0.5, "fps": 0, "max_frames": 0.0,
                      "mapping": "edtn", "mouth_gain": None, "relative": True})
    assert nested == {"smoothing": {"method": "ema", "beta": 0.5}, "relative": True, "mapping": "edtn"}
    assert B._nest({"no_such_key": 1}) == {}
    assert B._nest({"max_frames": 7.0}) == {"max_frames": 7}


# ----------------------------------------------------------------------------- backend
@pytest.fixture()
def workdir(tmp_path):
    with WorkDir(tmp_path) as wd:
        yield wd


def test_missing_asset_is_the_cli_message(workdir, authors_dir, tmp_path):
    missing = tmp_path / "nowhere" / "EDTN.pt"
    backend = B.DemoBackend(workdir, "cpu", overrides={"edtn_path": str(missing)})
    with pytest.raises(B.UserError) as info:
        backend.run_video(str(authors_dir / "example.mp4"), str(authors_dir / "basis.png"), {"max_frames": 2})
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(REPO / "infer.py"), f"driving={authors_dir / 'example.mp4'}",
                           f"source={authors_dir / 'basis.png'}", f"edtn_path={missing}", f"out={tmp_path / 'a.mp4'}"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 1
    assert proc.stderr.strip() == f"infer.py: error: {info.value}"
    assert "EDTN.pt" in str(info.value)


def test_options_and_uploads_are_checked(workdir, authors_dir, tmp_path):
    backend = B.DemoBackend(workdir, "cpu", max_upload_mb=0.5)
    with pytest.raises(B.UserError, match="more than the demo's upload limit of 0.5 MB"):
        backend.run_video(str(authors_dir / "example.mp4"), str(authors_dir / "basis.png"), {})
    with pytest.raises(B.UserError, match="driving video: nothing uploaded"):
        backend.run_video(None, str(authors_dir / "basis.png"), {})
    with pytest.raises(B.UserError, match="mouth_gain"):
        backend.config({"mouth_gain": -2.0}, driving="x.mp4", source="y.png")
    bad = B.DemoBackend(workdir, "cpu", overrides={"batch_size": "many"})
    with pytest.raises(B.UserError, match="batch_size"):
        bad.check_overrides()
    with pytest.raises(B.UserError, match="upload an anime source image"):
        backend.live_session(None, None, {})


def test_side_by_side_of_a_second_mapping(standin_kit, workdir, authors_dir, monkeypatch):
    """The comparison run re-uses the first run's DECA codes (a packed-code input) and puts both
    animations next to each other with the same frame count."""
    import imageio.v3 as iio

    from reenact.pipeline import run

    monkeypatch.setenv("EDTN_HOME", str(standin_kit))
    backend = B.DemoBackend(workdir, "cpu")
    assert backend.standin_warning
    run_dir = workdir.new_run()
    cfg = backend.config({"max_frames": 3}, driving=str(authors_dir / "example.mp4"),
                         source=str(authors_dir / "basis.png"), out=str(run_dir / "anime.mp4"))
    first = run(cfg)
    side = backend._compare(first, cfg, {"max_frames": 3}, "edtn", run_dir, lambda *a: None)
    frames = list(iio.imiter(side))
    anime = iio.imread(first.out, index=0)
    assert len(frames) == 3 and frames[0].shape[1] == 2 * anime.shape[1]
    # the same codes and mapping on both sides: the same picture (up to video compression)
    half = anime.shape[1]
    assert np.abs(frames[0][:, :half, :].astype(int) - frames[0][:, half:, :].astype(int))[24:].mean() < 3
    with pytest.raises(B.UserError, match="must differ"):
        backend.run_video(str(authors_dir / "example.mp4"), str(authors_dir / "basis.png"),
                          {"mapping": "edtn"}, compare="edtn")


def test_video_tab_side_by_side_of_edtn_and_basis_fit(standin_kit, workdir, authors_dir, monkeypatch):
    """The user's path: the Video tab with mapping edtn and a basis_fit comparison. The second run
    gets the first run's DECA codes and really maps them with basis_fit (checked against
    edtn.mappings directly); the side-by-side video has the animation's frame count."""
    import imageio.v3 as iio

    import reenact.pipeline as pipeline
    from deca_edit.codes import edtn_input_from_code156
    from edtn.mappings import build_mapping

    monkeypatch.setenv("EDTN_HOME", str(standin_kit))
    runs = []
    real_run = pipeline.run

    def spy(cfg, **kwargs):
        result = real_run(cfg, **kwargs)
        runs.append((cfg.mapping.value, result))
        return result

    monkeypatch.setattr(pipeline, "run", spy)
    backend = B.DemoBackend(workdir, "cpu")
    assert {"edtn", "basis_fit", "vertex_fit"} <= set(backend.mappings)
    result = backend.run_video(str(authors_dir / "example.mp4"), str(authors_dir / "basis.png"),
                               {"mapping": "edtn", "max_frames": 3}, compare="basis_fit")
    assert [m for m, _ in runs] == ["edtn", "basis_fit"]
    first, second = runs[0][1], runs[1][1]
    codes = torch.from_numpy(edtn_input_from_code156(first.codes.code156))
    expected = build_mapping("basis_fit", basis_path=standin_kit / "transform_matrix_08_30.npy")(codes)
    np.testing.assert_allclose(second.morphs_raw, expected.numpy(), atol=1e-6)
    assert np.abs(second.morphs_raw - first.morphs_raw).max() > 0.05   # another mapping, other morphs
    frames = list(iio.imiter(result.side_by_side))
    anime = iio.imread(result.anime, index=0)
    assert len(frames) == result.frames == 3 and frames[0].shape[1] == 2 * anime.shape[1]


# ----------------------------------------------------------------------------- work dir, CLI
def test_workdir_runs_prune_and_cleanup(tmp_path):
    wd = WorkDir(tmp_path, max_age_s=60)
    a, b = wd.new_run(), wd.new_run()
    assert a != b and a.parent == wd.runs and wd.gradio_cache.is_dir()
    old = time.time() - 3600
    os.utime(a, (old, old))
    assert wd.prune() == [a] and not a.exists() and b.exists()
    wd.cleanup()
    assert not wd.root.exists() and list(tmp_path.iterdir()) == []


def test_cli_defaults_bind_localhost_without_share():
    args = parse_args([])
    assert (args.host, args.port, args.share) == (DEFAULT_HOST, DEFAULT_PORT, False) == ("127.0.0.1", 7860, False)
    args = parse_args(["--host", "0.0.0.0", "--port", "8080", "--share", "--set", "mouth_gain=1.5"])
    assert (args.host, args.port, args.share, args.overrides) == ("0.0.0.0", 8080, True, {"mouth_gain": "1.5"})
    with pytest.raises(SystemExit):
        parse_args(["--set", "no-equals-sign"])
    with pytest.raises(SystemExit):
        parse_args(["--port", "0"])


def test_cli_bad_setting_is_one_message(tmp_path):
    env = {**os.environ, "EDTN_HOME": str(tmp_path), "TMPDIR": str(tmp_path)}
    proc = subprocess.run([sys.executable, str(REPO / "demo.py"), "--set", "smoothing.beta=-1"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 1
    assert proc.stderr.strip().startswith("demo.py: error:") and "smoothing.beta" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not list(tmp_path.glob("edtn_demo_*"))     # its temp folder is gone too
