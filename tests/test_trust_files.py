"""Issue 10 §1: loading a model file never runs code.

Every hostile file below carries a pickled object whose ``__reduce__`` calls ``os.system`` (global
``posix.system``) or ``builtins.exec`` to create a marker file. Each loader must refuse it with a
message naming the file, the offending global and the opt-in, and the marker must never appear.
The official layouts (the kit's chumpy fixture and synthetic FLAME model, DECA's real landmark
embedding, ``EDTN.pt``, the authors' Lightning and DECA checkpoint layouts) still load without it.
"""
from __future__ import annotations

import logging
import os
import pickle
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch

from anime_generator.checkpoint import load_generator
from deca_edit.encoder import DETAIL_DIM, DecaEncoder, load_deca_checkpoint
from deca_edit.flame import FLAME
from edtn.model import load_edtn
from infra.assets import check_asset
from infra.checkpoint import UnsafeFileError, load_torch_file, unsafe_globals
from infra.pickle_files import load_flame_model, load_landmark_embedding
from helpers.hostile import PAYLOADS, ExecPayload, SystemPayload

REPO = Path(__file__).resolve().parents[1]
OPT_IN = "trust_checkpoint=true"


@pytest.fixture(params=sorted(PAYLOADS))
def payload(request, tmp_path):
    """``(pickled-object factory, its global, marker path)``."""
    marker = tmp_path / "PWNED"
    return PAYLOADS[request.param](marker), request.param, marker


def assert_refused(info, path: Path, global_name: str, marker: Path) -> None:
    message = str(info.value)
    python2_name = global_name.replace("builtins.", "__builtin__.")  # protocol-2 pickles say so
    assert str(path) in message and OPT_IN in message, message
    assert global_name in message or python2_name in message, message
    assert "--trust-checkpoint" in message
    assert not marker.exists(), "the hostile file ran code"


# ----------------------------------------------------------------------------- FLAME / embedding
def test_flame_pickle_is_refused(payload, tmp_path, landmark_embedding_path):
    obj, name, marker = payload
    path = tmp_path / "generic_model.pkl"
    path.write_bytes(pickle.dumps({"v_template": obj, "f": np.zeros((1, 3), np.uint32)}, protocol=2))
    with pytest.raises(UnsafeFileError) as info:
        load_flame_model(path)
    assert_refused(info, path, name, marker)
    with pytest.raises(UnsafeFileError) as info:           # through the FLAME layer too
        FLAME(path, landmark_embedding_path)
    assert_refused(info, path, name, marker)


def test_flame_pickle_with_a_hostile_object_inside_an_allowed_container(tmp_path):
    """An array of dtype object is rebuilt through the same allow-list: its items cannot escape."""
    marker = tmp_path / "PWNED"
    path = tmp_path / "generic_model.pkl"
    inner = np.empty(1, dtype=object)
    inner[0] = SystemPayload(marker)
    path.write_bytes(pickle.dumps({"shapedirs": inner}, protocol=2))
    with pytest.raises(UnsafeFileError, match="posix.system"):
        load_flame_model(path)
    assert not marker.exists()


def test_landmark_embedding_is_refused(payload, tmp_path):
    obj, name, marker = payload
    path = tmp_path / "landmark_embedding.npy"
    np.save(path, np.array({"static_lmk_faces_idx": obj}, dtype=object), allow_pickle=True)
    with pytest.raises(UnsafeFileError) as info:
        load_landmark_embedding(path)
    assert_refused(info, path, name, marker)


def test_landmark_embedding_with_a_hostile_embedded_torch_blob(tmp_path):
    """The real file rebuilds tensors through ``torch.storage._load_from_bytes``, which unpickles a
    torch blob fully; ours reads that blob with ``weights_only``."""
    import io

    marker = tmp_path / "PWNED"

    class HostileStorage:
        def __reduce__(self):
            blob = io.BytesIO()
            torch.save(SystemPayload(marker), blob)
            return torch.storage._load_from_bytes, (blob.getvalue(),)

    path = tmp_path / "landmark_embedding.npy"
    np.save(path, np.array({"dynamic_lmk_faces_idx": HostileStorage()}, dtype=object), allow_pickle=True)
    with pytest.raises(UnsafeFileError, match="posix.system") as info:
        load_landmark_embedding(path)
    assert str(path) in str(info.value) and not marker.exists()


def test_trusted_opt_in_is_a_logged_full_unpickle(tmp_path, caplog):
    """The opt-in really unpickles fully (so it is only for files you created) and says so."""
    marker = tmp_path / "RAN"
    path = tmp_path / "generic_model.pkl"
    path.write_bytes(pickle.dumps({"extra": ExecPayload(marker)}, protocol=2))
    with caplog.at_level(logging.WARNING, logger="infra.pickle_files"):
        load_flame_model(path, trust_checkpoint=True)
    assert marker.exists() and "trust_checkpoint" in caplog.text
    torch_file = tmp_path / "trusted.pt"
    torch.save({"x": ExecPayload(tmp_path / "RAN2")}, torch_file)
    with caplog.at_level(logging.WARNING, logger="infra.checkpoint"):
        load_torch_file(torch_file, trust_checkpoint=True)
    assert (tmp_path / "RAN2").exists() and "full unpickle" in caplog.text


def test_official_flame_layouts_load_without_the_opt_in(flame_deca_kit, synthetic_flame_path):
    model = load_flame_model(flame_deca_kit / "chumpy_pickle_fixture.pkl")
    expected = np.load(flame_deca_kit / "chumpy_pickle_fixture_expected.npz")
    np.testing.assert_array_equal(model["shapedirs"], expected["shapedirs"])
    np.testing.assert_array_equal(model["J_regressor"].toarray(), expected["J_regressor_dense"])
    assert load_flame_model(synthetic_flame_path)["shapedirs"].shape == (5023, 3, 400)


def test_real_landmark_embedding_reads_exactly_as_a_full_unpickle(landmark_embedding_path):
    """The restricted reader rebuilds the very arrays the stock unpickler gives (run here on the
    trusted kit file only, to compare)."""
    ours = load_landmark_embedding(landmark_embedding_path)
    stock = np.load(landmark_embedding_path, allow_pickle=True, encoding="latin1").item()
    assert set(ours) <= set(stock)
    for key, value in ours.items():
        reference = stock[key].numpy() if isinstance(stock[key], torch.Tensor) else np.asarray(stock[key])
        assert reference.dtype == value.dtype
        np.testing.assert_array_equal(reference.reshape(value.shape), value, err_msg=key)


def test_corrupt_pickles_give_a_message_naming_the_file(landmark_embedding_path, synthetic_flame_path,
                                                        tmp_path):
    for source, reader in ((synthetic_flame_path, load_flame_model),
                           (landmark_embedding_path, load_landmark_embedding)):
        cut = tmp_path / source.name
        cut.write_bytes(source.read_bytes()[: source.stat().st_size // 2])
        with pytest.raises(ValueError, match="truncated") as info:
            reader(cut)
        assert str(cut) in str(info.value)


# ----------------------------------------------------------------------------- torch files
def _lightning_layout(state: dict) -> dict:
    """The authors' PL-1.5.8 top level (kit generator README §6)."""
    return {"epoch": 200, "global_step": 83_000, "pytorch-lightning_version": "1.5.8",
            "state_dict": state,
            "callbacks": {"ModelCheckpoint{'monitor': None, 'mode': 'min'}": {
                "monitor": None, "best_model_score": None, "best_model_path": "", "current_score": None,
                "dirpath": "/ckpt", "best_k_models": {}, "kth_best_model_path": "",
                "kth_value": torch.tensor(float("inf")), "last_model_path": ""}},
            "optimizer_states": [{"state": {0: {"step": 5, "exp_avg": torch.zeros(3),
                                                "exp_avg_sq": torch.zeros(3)}},
                                  "param_groups": [{"lr": 2e-5, "betas": (0.5, 0.999), "eps": 1e-8,
                                                    "weight_decay": 0, "amsgrad": False,
                                                    "initial_lr": 1e-4, "params": [0]}]}],
            "lr_schedulers": [{"step_size": 150, "gamma": 0.2, "base_lrs": [1e-4], "last_epoch": 200,
                               "_step_count": 201, "verbose": False,
                               "_get_lr_called_within_step": False, "_last_lr": [2e-5]}]}


@pytest.fixture(scope="module")
def generator_state() -> OrderedDict:
    from anime_generator import AnimeGenerator

    return AnimeGenerator().state_dict()


@pytest.mark.parametrize("layout", ["lightning_callbacks", "lightning_hparams", "bare"])
def test_generator_checkpoint_is_refused(layout, payload, generator_state, tmp_path):
    obj, name, marker = payload
    if layout == "bare":
        ckpt = OrderedDict(generator_state)
        ckpt["mapping_net.first.0.weight"] = obj
    else:
        ckpt = _lightning_layout({f"generator.{k}": v for k, v in generator_state.items()})
        if layout == "lightning_callbacks":
            ckpt["callbacks"]["EvilCallback"] = obj
        else:
            ckpt["hyper_parameters"] = {"cfg": obj}
    path = tmp_path / "generator_default.ckpt"
    torch.save(ckpt, path)
    with pytest.raises(UnsafeFileError) as info:
        load_generator(path)
    assert_refused(info, path, name, marker)


def test_deca_and_edtn_files_are_refused(payload, tmp_path):
    obj, name, marker = payload
    deca = tmp_path / "deca_model.tar"
    torch.save({"E_flame": DecaEncoder().state_dict(), "opt": obj}, deca)
    with pytest.raises(UnsafeFileError) as info:
        load_deca_checkpoint(deca)
    assert_refused(info, deca, name, marker)
    edtn = tmp_path / "EDTN.pt"
    torch.save(OrderedDict({"main.0.weight": obj}), edtn)
    with pytest.raises(UnsafeFileError) as info:
        load_edtn(edtn)
    assert_refused(info, edtn, name, marker)


@pytest.mark.parametrize("zipfile", [True, False], ids=["zip", "legacy"])
def test_official_torch_layouts_load_without_the_opt_in(zipfile, generator_state, authors_dir, tmp_path):
    """The authors' Lightning layout (both state-dict variants), DECA's tar (with the optimiser
    state and counters its trainer may add) and EDTN.pt load with weights_only, in the zip and in
    the legacy serialisation; their pickles reference no global outside torch's allow-list."""
    gen = {f"generator.{k}": v for k, v in generator_state.items()}
    ema = {f"generator_ema.{k}": v for k, v in generator_state.items()}
    for name, state in (("mlp.ckpt", {**gen, **ema}), ("pirender.ckpt", gen)):
        path = tmp_path / name
        torch.save(_lightning_layout(state), path, _use_new_zipfile_serialization=zipfile)
        if zipfile:
            assert unsafe_globals(path) == []
        assert load_generator(path).config.image_size == 256
    encoder = DecaEncoder()
    optimizer = torch.optim.Adam(encoder.parameters())
    encoder(torch.zeros(1, 3, 224, 224)).sum().backward()
    optimizer.step()
    deca = tmp_path / "deca_model.tar"
    torch.save({"E_flame": encoder.state_dict(), "E_detail": DecaEncoder(DETAIL_DIM).state_dict(),
                "D_detail": OrderedDict(w=torch.zeros(2)), "opt": optimizer.state_dict(),
                "global_step": 7, "batch_size": 8}, deca, _use_new_zipfile_serialization=zipfile)
    flame_enc, detail_enc = load_deca_checkpoint(deca, with_detail=True)
    assert torch.equal(flame_enc.layers[0].weight, encoder.layers[0].weight)
    assert load_edtn(authors_dir / "EDTN.pt")(torch.zeros(1, 53)).shape == (1, 17)
    if zipfile:
        assert unsafe_globals(deca) == [] and unsafe_globals(authors_dir / "EDTN.pt") == []


def test_asset_check_reports_hostile_files_without_running_them(tmp_path):
    marker = tmp_path / "PWNED"
    flame = tmp_path / "generic_model.pkl"
    flame.write_bytes(pickle.dumps({"f": SystemPayload(marker)}, protocol=2))
    edtn = tmp_path / "EDTN.pt"
    torch.save({"main.0.weight": SystemPayload(marker)}, edtn)
    for name, path in (("flame_model", flame), ("edtn_weights", edtn)):
        status = check_asset(name, path)
        assert status.present and not status.ok and "posix.system" in status.detail
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "check_assets.py"), "--only",
                           "flame_model", "--path", f"flame_model={flame}"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 1 and "INVALID" in proc.stdout and "posix.system" in proc.stdout
    assert "Traceback" not in proc.stderr and not marker.exists()


def test_export_generator_refuses_and_names_the_opt_in(generator_state, tmp_path):
    marker = tmp_path / "PWNED"
    ckpt = _lightning_layout({f"generator.{k}": v for k, v in generator_state.items()})
    ckpt["hyper_parameters"] = SystemPayload(marker)
    path = tmp_path / "authors.ckpt"
    torch.save(ckpt, path)
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "export_generator.py"), str(path),
                           str(tmp_path / "out.pt")], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 1, proc.stderr
    assert "posix.system" in proc.stderr and "--trust-checkpoint" in proc.stderr
    assert "Traceback" not in proc.stderr and not marker.exists() and not (tmp_path / "out.pt").exists()


# ----------------------------------------------------------------------------- infer.py
def test_infer_flame_path_hostile_pickle_is_refused(authors_dir, landmark_embedding_path, tmp_path):
    """``infer.py flame_path=<hostile>`` with the mesh panel: one message, exit 1, no code run."""
    from anime_generator import AnimeGenerator

    marker = tmp_path / "PWNED"
    flame = tmp_path / "generic_model.pkl"
    flame.write_bytes(pickle.dumps({"v_template": SystemPayload(marker)}, protocol=2))
    generator = tmp_path / "generator.pt"
    torch.save(AnimeGenerator().state_dict(), generator)
    codes = tmp_path / "codes"
    codes.mkdir()
    for f in sorted((authors_dir / "vox_deca").glob("*.mat"))[:1]:
        (codes / f.name).write_bytes(f.read_bytes())
    out = tmp_path / "anime.mp4"
    proc = subprocess.run(
        [sys.executable, str(REPO / "infer.py"), f"driving={codes}", f"source={authors_dir / 'basis.png'}",
         f"out={out}", f"generator_path={generator}", f"edtn_path={authors_dir / 'EDTN.pt'}",
         f"flame_path={flame}", f"landmark_embedding_path={landmark_embedding_path}",
         "layout=grid", "show_mesh=true", "device=cpu", "progress=false"],
        capture_output=True, text=True, cwd=tmp_path, timeout=300, env={**os.environ, "EDTN_HOME": str(tmp_path)})
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert str(flame) in proc.stderr and "posix.system" in proc.stderr and OPT_IN in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not marker.exists() and not out.exists()


def test_infer_config_documents_the_opt_in():
    text = (REPO / "configs" / "infer.yaml").read_text()
    assert "trust_checkpoint: false" in text and "ONLY for model files you created" in text
