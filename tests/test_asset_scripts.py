"""scripts/check_assets.py (per-use report, exit status) and scripts/fetch_assets.py (tries every
public file, lists every licensed one, fails when a download failed)."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch

from helpers.local import StaticFiles, free_port, load_script, local_http_server
from infra.assets import ASSETS, asset_home, torch_hub_dir

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def check_script():
    return load_script("check_assets")


@pytest.fixture(scope="module")
def fetch_script():
    return load_script("fetch_assets")


# ----------------------------------------------------------------------------- check_assets
def test_docstring_names_the_real_flag(check_script):
    assert "--path flame_model=" in check_script.__doc__ and "--name" not in check_script.__doc__


def test_report_per_use_and_exit_status(check_script, authors_dir, capsys, tmp_path):
    home = asset_home()
    home.mkdir(parents=True, exist_ok=True)
    shutil.copy(authors_dir / "EDTN.pt", home / "EDTN.pt")
    out = tmp_path / "report.json"
    # nothing required: missing files are no failure
    assert check_script.main(["--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "infer from codes     no: needs generator_default.ckpt" in text
    assert "generator training   no: needs vgg19-dcbb9e9d.pth" in text
    report = json.loads(out.read_text())
    assert report["uses"]["infer_codes"]["lacking"] == ["generator_default.ckpt"]
    assert report["uses"]["infer_video"]["lacking"] == ["generator_default.ckpt", "deca_model.tar"]
    assert {row["name"]: row["status"] for row in report["assets"]}["edtn_weights"] == "ok"

    # --require: 1 when that use lacks files, 0 when it has them
    assert check_script.main(["--require", "infer_codes"]) == 1
    assert "not enough for infer from codes: needs generator_default.ckpt" in capsys.readouterr().err
    shutil.copy(authors_dir / "transform_matrix_08_30.npy", home / "transform_matrix_08_30.npy")
    assert check_script.main(["--require", "edtn_training"]) == 1       # FLAME still missing
    capsys.readouterr()

    # a present but invalid file is a failure even when nothing is required
    torch.save({"not": torch.zeros(1)}, home / "deca_model.tar")
    assert check_script.main([]) == 1
    captured = capsys.readouterr()
    assert "INVALID" in captured.out and "deca_model.tar" in captured.err
    assert "infer from video     no: needs generator_default.ckpt, deca_model.tar" in captured.out


def test_require_rejects_unknown_use(check_script, capsys):
    with pytest.raises(SystemExit) as info:
        check_script.main(["--require", "dance"])
    assert info.value.code == 2


# ----------------------------------------------------------------------------- fetch_assets
class _Handler(StaticFiles):
    """Per-test files; unknown paths get 404."""


@pytest.fixture()
def server():
    with local_http_server(_Handler) as srv:
        yield f"http://127.0.0.1:{srv.server_address[1]}"


def test_fetch_tries_every_public_file_and_lists_every_licensed_one(fetch_script, server, monkeypatch, capsys):
    public = [n for n, s in ASSETS.items() if s.url]
    licensed = [n for n, s in ASSETS.items() if not s.url]
    assert len(public) >= 3 and licensed
    good = b"weights" * 1000
    _Handler.files = {"/good.bin": good}
    # the first public asset fails (offline), the second is a 404, the rest download
    urls = {public[0]: f"http://127.0.0.1:{free_port()}/x", public[1]: f"{server}/missing.bin"}
    for name in public:
        url = urls.get(name, f"{server}/good.bin")
        monkeypatch.setitem(ASSETS, name, dataclasses.replace(ASSETS[name], url=url,
                                                              sha256=hashlib.sha256(good).hexdigest()[:8]))
    code = fetch_script.main(["--timeout", "2"])
    out, err = capsys.readouterr()
    assert code == 2
    for name in public[2:]:
        spec = ASSETS[name]
        dest = (torch_hub_dir() if spec.in_torch_hub else asset_home()) / spec.filename
        assert dest.read_bytes() == good, name
        assert f"{name}: downloaded to" in out
    assert f"error: {public[0]}:" in err and "offline" in err
    assert f"error: {public[1]}:" in err and "HTTP 404" in err
    assert f"failed to download: {public[0]}, {public[1]}" in err
    for name in licensed:
        assert f"{ASSETS[name].filename} must be obtained by hand: {ASSETS[name].obtain}" in out

    # second run: the downloaded files are present, the failures are retried, licensed still listed
    _Handler.files["/missing.bin"] = good
    code = fetch_script.main(["--timeout", "2"])
    out, err = capsys.readouterr()
    assert code == 2 and f"{public[1]}: downloaded to" in out and f"{public[2]}: present at" in out
    assert f"failed to download: {public[0]}" in err


def test_fetch_exit_1_when_only_licensed_files_are_missing(fetch_script, server, monkeypatch, capsys):
    good = b"x" * 10
    _Handler.files = {"/good.bin": good}
    for name, spec in ASSETS.items():
        if spec.url:
            monkeypatch.setitem(ASSETS, name, dataclasses.replace(spec, url=f"{server}/good.bin", sha256=None))
    assert fetch_script.main([]) == 1
    assert "generic_model.pkl must be obtained by hand" in capsys.readouterr().out
    assert fetch_script.main([n for n, s in ASSETS.items() if s.url]) == 0
