"""The stand-in asset kit (scripts/make_standin_assets.py): deterministic, marked, loadable by every
real loader, recognised by check_assets.py; and the py2 FLAME pickle writer it uses."""
from __future__ import annotations

import pickletools
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from infra.assets import ASSETS, check_asset, sha256_of
from infra.legacy_pickle import ChumpyArray, dump_py2_pickle, write_py2_pickle
from infra.pickle_files import load_flame_model
from infra.standin import (STANDIN_KEY, STANDIN_NOTE, STANDIN_WARNING, has_standin_key, is_standin_file,
                           read_note, standin_entry, warn_if_standin)

from conftest import STANDIN_GENERATOR_SIZE
from helpers.local import free_port, load_script

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "make_standin_assets.py"


def make_kit(out: Path, deca_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), "--out", str(out), "--no-progress",
                           "--head-template", str(deca_dir / "head_template.obj"),
                           "--landmark-embedding", str(deca_dir / "landmark_embedding.npy"), *extra],
                          capture_output=True, text=True, cwd=REPO, timeout=600)


@pytest.fixture(scope="module")
def kit(tmp_path_factory, deca_dir) -> Path:
    """A kit made by the command, every file a stand-in (no --edtn / --transform-matrix)."""
    out = tmp_path_factory.mktemp("standin") / "assets"
    proc = make_kit(out, deca_dir, "--generator-size", str(STANDIN_GENERATOR_SIZE))
    assert proc.returncode == 0, proc.stderr
    assert "stand-in weights: output is noise" in proc.stdout
    return out


def _globals(data: bytes) -> set[str]:
    return {arg for op, arg, _ in pickletools.genops(data) if op.name in ("GLOBAL", "STACK_GLOBAL")}


# ----------------------------------------------------------------------------- py2 pickle writer
def test_py2_pickle_round_trips_the_official_chumpy_fixture(flame_deca_kit, tmp_path):
    fixture = flame_deca_kit / "chumpy_pickle_fixture.pkl"
    ref = load_flame_model(fixture)
    written = write_py2_pickle({k: ChumpyArray(v) if k == "shapedirs" else v for k, v in ref.items()},
                               tmp_path / "m.pkl")
    back = load_flame_model(written)
    assert list(back) == list(ref)
    for key, value in ref.items():
        if hasattr(value, "toarray"):
            assert type(back[key]) is type(value) and back[key].dtype == value.dtype
            np.testing.assert_array_equal(back[key].toarray(), value.toarray())
        elif isinstance(value, np.ndarray):
            assert back[key].dtype == value.dtype, key
            np.testing.assert_array_equal(back[key], value)
        else:
            assert back[key] == value
    # the same globals as the official-format file, nothing else
    assert _globals(written.read_bytes()) == _globals(fixture.read_bytes())
    assert dump_py2_pickle({"a": np.arange(3)}) == dump_py2_pickle({"a": np.arange(3)})
    with pytest.raises(TypeError, match="cannot write"):
        dump_py2_pickle({"a": object()})


# ----------------------------------------------------------------------------- the kit
def test_kit_is_byte_identical_on_two_runs(kit, tmp_path, deca_dir):
    again = tmp_path / "again"
    proc = make_kit(again, deca_dir, "--generator-size", str(STANDIN_GENERATOR_SIZE))
    assert proc.returncode == 0, proc.stderr
    names = sorted(p.name for p in kit.iterdir())
    assert names == sorted(p.name for p in again.iterdir())
    for name in names:
        assert (kit / name).read_bytes() == (again / name).read_bytes(), name


def test_every_file_is_marked(kit):
    note = read_note(kit)
    expected = {ASSETS[n].filename for n in ("flame_model", "landmark_embedding", "deca_model", "edtn_weights",
                                             "transform_matrix", "generator_default", "generator_cartoon", "vgg19")}
    assert set(note) == expected and set(p.name for p in kit.iterdir()) == expected | {STANDIN_NOTE}
    for name, entry in note.items():
        path = kit / name
        assert entry["size"] == path.stat().st_size
        real_copy = name == "landmark_embedding.npy"        # DECA's public file, copied unchanged
        assert entry["standin"] is not real_copy
        assert is_standin_file(path, sha256_of) is not real_copy
        assert (standin_entry(path) is None) is real_copy
    # a key inside every stand-in that can hold one
    assert has_standin_key(load_flame_model(kit / "generic_model.pkl"))
    for name in ("deca_model.tar", "EDTN.pt", "generator_default.ckpt", "generator_cartoon.ckpt",
                 "vgg19-dcbb9e9d.pth"):
        obj = torch.load(kit / name, map_location="cpu", weights_only=True)
        assert STANDIN_KEY in obj and "noise" in obj[STANDIN_KEY], name
    lines = []
    assert warn_if_standin([kit / "EDTN.pt", kit / "landmark_embedding.npy"], lines.append)
    assert len(lines) == 1 and STANDIN_WARNING in lines[0] and "landmark" not in lines[0]
    assert not warn_if_standin([kit / "landmark_embedding.npy"], lines.append)


def test_real_loaders_accept_the_kit(kit):
    from anime_generator.checkpoint import load_generator
    from anime_generator.perceptual import load_vgg19_features
    from deca_edit.encoder import load_deca_checkpoint
    from deca_edit.flame import FLAME
    from edtn.model import load_edtn

    codes = load_deca_checkpoint(kit / "deca_model.tar")(torch.rand(1, 3, 224, 224))
    assert codes.shape == (1, 236) and torch.isfinite(codes).all()
    assert load_edtn(kit / "EDTN.pt")(torch.zeros(2, 53)).shape == (2, 17)
    gen = load_generator(kit / "generator_cartoon.ckpt", asset="generator_cartoon")
    assert gen.config.image_size == STANDIN_GENERATOR_SIZE
    out = gen(torch.rand(1, 3, STANDIN_GENERATOR_SIZE, STANDIN_GENERATOR_SIZE), torch.zeros(1, 20), stage="gen")
    assert out["fake_image"].shape == (1, 3, STANDIN_GENERATOR_SIZE, STANDIN_GENERATOR_SIZE)
    assert len(load_vgg19_features(kit / "vgg19-dcbb9e9d.pth")) > 0
    basis = np.load(kit / "transform_matrix_08_30.npy")
    assert basis.shape == (17, 50) and basis.dtype == np.float64

    flame = FLAME(kit / "generic_model.pkl", kit / "landmark_embedding.npy", n_shape=100, n_exp=50)
    zeros = torch.zeros(1, 100), torch.zeros(1, 50), torch.zeros(1, 6)
    rest = flame(*zeros).vertices[0]
    template = torch.as_tensor(load_flame_model(kit / "generic_model.pkl")["v_template"], dtype=rest.dtype)
    torch.testing.assert_close(rest, template, atol=1e-6, rtol=0)
    # the jaw opens the mouth: lower-face vertices move, the skull does not
    jaw = torch.zeros(1, 6)
    jaw[0, 3] = 0.3
    moved = (flame(zeros[0], zeros[1], jaw).vertices[0] - rest).norm(dim=1)
    assert moved.max() > 5e-3 and (moved < 1e-9).float().mean() > 0.5
    # an expression moves the face by a few millimetres
    exp = torch.zeros(1, 50)
    exp[0, 0] = 1.0
    shift = (flame(zeros[0], exp, zeros[2]).vertices[0] - rest).norm(dim=1).max()
    assert 1e-3 < shift < 1e-2


def test_check_assets_marks_the_kit(kit, tmp_path):
    for name in ("flame_model", "deca_model", "generator_default", "vgg19"):
        status = check_asset(name, kit / ASSETS[name].filename)
        assert status.ok and status.standin, (name, status.detail)
    real = check_asset("landmark_embedding", kit / "landmark_embedding.npy")
    assert real.ok and not real.standin
    env = {"EDTN_HOME": str(kit), "TORCH_HOME": str(tmp_path / "torch"), "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "check_assets.py"),
                           "--require", "infer_video", "--require", "edtn_training"],
                          capture_output=True, text=True, cwd=REPO, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = {line.split()[0]: line.split()[1] for line in proc.stdout.splitlines()
            if line.split() and line.split()[0] in ASSETS}
    assert rows["generator_default"] == "stand-in" and rows["landmark_embedding"] == "ok"
    assert rows["face_detector"] == "missing"
    assert "infer from video     yes (stand-ins:" in proc.stdout
    assert STANDIN_WARNING in proc.stdout


def test_given_edtn_is_copied_not_a_standin(standin_kit, authors_dir):
    note = read_note(standin_kit)
    assert note["EDTN.pt"]["standin"] is False and note["transform_matrix_08_30.npy"]["standin"] is False
    assert (standin_kit / "EDTN.pt").read_bytes() == (authors_dir / "EDTN.pt").read_bytes()
    assert not is_standin_file(standin_kit / "EDTN.pt", sha256_of)
    assert note["generator_default.ckpt"]["standin"] is True and is_standin_file(standin_kit / "deca_model.tar", sha256_of)


def test_offline_without_template_paths_is_one_clear_message(tmp_path, monkeypatch, capsys):
    from reenact import standin

    monkeypatch.setattr(standin, "HEAD_TEMPLATE_URL", f"http://127.0.0.1:{free_port()}/head_template.obj")
    script = load_script("make_standin_assets")
    with pytest.raises(SystemExit) as info:
        script.main(["--out", str(tmp_path / "kit"), "--timeout", "2", "--no-progress"])
    assert info.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("make_standin_assets.py: error: cannot download DECA's public head_template.obj")
    assert "--head-template" in err and "Traceback" not in err
    assert not (tmp_path / "kit" / STANDIN_NOTE).exists()
