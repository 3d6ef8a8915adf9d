"""Asset resolution: the documented errors for missing / wrong files, the check table, downloads."""
from __future__ import annotations

import hashlib
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from infra.assets import ASSETS, AssetError, asset_home, check_asset, resolve_asset
from helpers.local import StaticFiles, local_http_server
from infra.download import DownloadError, download

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", sorted(ASSETS))
def test_missing_asset_error_names_file_what_and_where(name):
    spec = ASSETS[name]
    with pytest.raises(AssetError) as info:
        resolve_asset(name)
    message = str(info.value)
    assert spec.filename in message
    assert spec.what in message
    assert spec.obtain in message
    assert str(asset_home()) in message


def test_explicit_config_path_must_exist(tmp_path):
    with pytest.raises(AssetError, match="generic_model.pkl"):
        resolve_asset("flame_model", tmp_path / "nowhere" / "generic_model.pkl")


def test_asset_found_in_cache_and_by_path(tmp_path, authors_dir):
    cached = asset_home() / "EDTN.pt"
    cached.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(authors_dir / "EDTN.pt", cached)
    assert resolve_asset("edtn_weights", verify=True) == cached
    assert resolve_asset("edtn_weights", str(authors_dir / "EDTN.pt")) == authors_dir / "EDTN.pt"


def test_wrong_content_is_reported(tmp_path):
    bogus = tmp_path / "EDTN.pt"
    torch.save({"weight": torch.zeros(3)}, bogus)
    with pytest.raises(AssetError, match="not valid"):
        resolve_asset("edtn_weights", bogus, verify=True)
    status = check_asset("edtn_weights", bogus)
    assert status.present and not status.ok and "INVALID" in status.detail


def test_check_asset_reports_real_files(reference_dir, authors_dir):
    ok = check_asset("transform_matrix", authors_dir / "transform_matrix_08_30.npy")
    assert ok.ok and "(17, 50)" in ok.detail and ok.size > 0
    emb = check_asset("landmark_embedding", reference_dir / "deca" / "landmark_embedding.npy")
    assert emb.ok, emb.detail
    assert not check_asset("deca_model").present


def test_check_assets_script_prints_table(authors_dir, tmp_path):
    out = tmp_path / "status.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "check_assets.py"), "--json", str(out),
         "--path", f"edtn_weights={authors_dir / 'EDTN.pt'}"],
        capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0  # missing files are no failure unless a use is required
    assert "edtn_weights" in proc.stdout and "ok" in proc.stdout
    assert "flame.is.tue.mpg.de" in proc.stdout  # where to get FLAME
    assert "Traceback" not in proc.stderr
    assert out.exists()


class _RangeHandler(StaticFiles):
    """Serves one in-memory payload at every path and honours 'Range: bytes=N-'."""


@pytest.fixture()
def http_server():
    with local_http_server(_RangeHandler) as server:
        yield server


def test_download_resumes_and_verifies(http_server, tmp_path):
    payload = np.random.default_rng(0).bytes(300_000)
    _RangeHandler.files = {"*": payload}
    url = f"http://127.0.0.1:{http_server.server_address[1]}/file.bin"
    dest = tmp_path / "file.bin"
    dest.with_name("file.bin.part").write_bytes(payload[:123_456])  # an interrupted download
    digest = hashlib.sha256(payload).hexdigest()
    download(url, dest, sha256=digest[:10], progress=False)
    assert dest.read_bytes() == payload
    assert not dest.with_name("file.bin.part").exists()

    with pytest.raises(DownloadError, match="does not match"):
        download(url, tmp_path / "other.bin", sha256="0000000000", progress=False)
    assert not (tmp_path / "other.bin").exists()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_download_offline_fails_fast_with_message(tmp_path):
    with pytest.raises(DownloadError, match="offline"):
        download(f"http://127.0.0.1:{_closed_port()}/x.pth", tmp_path / "x.pth", timeout=2, progress=False)


def test_fetch_assets_lists_manual_assets_and_fails_offline():
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "fetch_assets.py"), "flame_model", "deca_model"],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 1
    assert "generic_model.pkl must be obtained by hand" in proc.stdout
    assert "deca_model.tar must be obtained by hand" in proc.stdout
    bad = subprocess.run([sys.executable, str(REPO / "scripts" / "fetch_assets.py"), "nonsense"],
                         capture_output=True, text=True, cwd=REPO)
    assert bad.returncode == 2 and "unknown asset" in bad.stderr


def test_fetch_assets_fetches_the_public_evaluation_weights(monkeypatch, tmp_path, capsys):
    """inception_fid and anime_landmarker have public addresses: fetch_assets.py downloads them
    into the torch hub cache (where torch-fidelity / anime-face-detector keep them)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("fetch_assets", REPO / "scripts" / "fetch_assets.py")
    fetch = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fetch)
    fetched = []
    monkeypatch.setattr(fetch, "download", lambda url, dest, **kw: fetched.append((url, Path(dest))))
    assert fetch.main(["inception_fid", "anime_landmarker"]) == 0
    hub = fetch.torch_hub_dir()
    assert fetched == [
        ("https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
         "weights-inception-2015-12-05-6726825d.pth", hub / "weights-inception-2015-12-05-6726825d.pth"),
        ("https://github.com/hysts/anime-face-detector/releases/download/v0.0.1/mmpose_anime-face_hrnetv2.pth",
         hub / "mmpose_anime-face_hrnetv2.pth")]
    assert {"inception_fid", "anime_landmarker"} <= {n for n, s in ASSETS.items() if s.url}


def test_evaluation_asset_content_checks(tmp_path):
    wrong = tmp_path / "weights-inception-2015-12-05-6726825d.pth"
    torch.save({"fc.weight": torch.zeros(10, 2048)}, wrong)
    status = check_asset("inception_fid", wrong)
    assert status.present and not status.ok and "Conv2d_1a_3x3.conv.weight" in status.detail
    from helpers.eval_standins import inception_standin

    assert check_asset("inception_fid", inception_standin(tmp_path / "ok.pth")).ok
    landmarker = tmp_path / "mmpose_anime-face_hrnetv2.pth"
    torch.save({"state_dict": {"backbone.conv1.weight": torch.zeros(64, 3, 3, 3)}}, landmarker)
    status = check_asset("anime_landmarker", landmarker)
    assert not status.ok and "keypoint_head.final_layer.3.weight" in status.detail
