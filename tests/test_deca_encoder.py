"""DECA coarse encoder: keys vs the manifest, outputs vs the kit's vectors, strict checkpoint loading."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from deca_edit.crop import aligned_resize
from deca_edit.encoder import (DecaCheckpointError, DecaEncoder, decompose, load_deca_checkpoint)
from infra.assets import AssetError
from helpers.weight_fill import fill_module

VOX_FRAMES = ("0000000", "0000100", "0000200", "0000300")


@pytest.fixture(scope="module")
def manifest(flame_deca_kit):
    return json.loads((flame_deca_kit / "deca_encoder_manifest.json").read_text())


@pytest.fixture(scope="module")
def vectors(flame_deca_kit):
    return dict(np.load(flame_deca_kit / "deca_encoder_vectors.npz"))


@pytest.fixture(scope="module")
def filled_encoder():
    return fill_module(DecaEncoder(), "splitmix").eval()


@pytest.fixture(scope="module")
def outputs(filled_encoder, vectors):
    with torch.no_grad():
        params, feats = filled_encoder.forward_with_features(torch.from_numpy(vectors["images"]))
    return params.numpy(), feats.numpy()


def test_state_dict_keys_shapes_and_order_match_manifest(manifest):
    state = DecaEncoder().state_dict()
    assert list(state) == manifest["state_dict_order"]
    assert len(state) == manifest["num_entries"] == 322
    for entry in manifest["entries"]:
        tensor = state[entry["key"]]
        assert tuple(tensor.shape) == tuple(entry["shape"]), entry["key"]
        assert str(tensor.dtype).replace("torch.", "") == entry["dtype"], entry["key"]
    n_float = sum(t.numel() for t in state.values() if t.is_floating_point())
    assert n_float == manifest["num_float_values_incl_bn_buffers"]


def test_filled_weights_match_every_fill_check(manifest, filled_encoder):
    state = filled_encoder.state_dict()
    for entry in manifest["entries"]:
        values = state[entry["key"]].numpy().astype(np.float64).ravel()
        check = entry["fill_check"]
        np.testing.assert_array_equal(values[:3], check["first3"], err_msg=entry["key"])
        assert values.sum() == pytest.approx(check["sum_float64"], rel=1e-9, abs=1e-12), entry["key"]


def test_features_and_params_match_reference(outputs, vectors, filled_encoder):
    params, feats = outputs
    np.testing.assert_allclose(feats, vectors["features2048"], rtol=0, atol=1e-5)
    np.testing.assert_allclose(params, vectors["params236"], rtol=0, atol=1e-5)
    # forward() and features() agree with the fused call (batch size changes float rounding only)
    one = torch.from_numpy(vectors["images"][:1])
    with torch.no_grad():
        np.testing.assert_allclose(filled_encoder(one).numpy(), params[:1], rtol=0, atol=1e-6)
        np.testing.assert_allclose(filled_encoder.features(one).numpy(), feats[:1], rtol=0, atol=1e-6)


def test_decompose_matches_reference_codes(outputs, vectors):
    params, _ = outputs
    codes = decompose(params)
    assert set(codes) == {"shape", "tex", "exp", "pose", "cam", "light"}
    for key, value in codes.items():
        np.testing.assert_allclose(value, vectors[f"code_{key}"], rtol=0, atol=1e-5, err_msg=key)
    assert codes["light"].shape == (4, 9, 3)
    # row-major light and exact offsets on the reference's own params
    ref = decompose(vectors["params236"])
    for key, offset in {"shape": 0, "tex": 100, "exp": 150, "pose": 200, "cam": 206}.items():
        np.testing.assert_array_equal(ref[key], vectors[f"code_{key}"])
        np.testing.assert_array_equal(ref[key][:, 0], vectors["params236"][:, offset])
    assert ref["light"][2, 4, 1] == vectors["params236"][2, 209 + 3 * 4 + 1]
    torch_codes = decompose(torch.from_numpy(vectors["params236"]))
    np.testing.assert_array_equal(torch_codes["light"].numpy(), vectors["code_light"])
    with pytest.raises(ValueError, match="236"):
        decompose(np.zeros((2, 235), np.float32))


def test_non_224_input_is_rejected_clearly():
    encoder = DecaEncoder()
    with pytest.raises(ValueError, match=r"224.*\(1, 3, 256, 256\)"):
        encoder(torch.zeros(1, 3, 256, 256))
    with pytest.raises(ValueError, match="224"):
        encoder.features(torch.zeros(3, 224, 224))


def test_crops_rebuilt_from_vox_pngs(authors_dir, vectors):
    from deca_edit.extract import read_image

    assert [str(n) for n in vectors["image_names"]] == [f"{f}.png" for f in VOX_FRAMES]
    crops = np.stack([aligned_resize(read_image(authors_dir / "vox_images" / f"{f}.png")) for f in VOX_FRAMES])
    assert crops.dtype == np.float32
    np.testing.assert_allclose(crops, vectors["images"], rtol=0, atol=1e-6)


# ----------------------------------------------------------------------------- checkpoint files
@pytest.fixture(scope="module")
def official_tar(tmp_path_factory, filled_encoder):
    """A deca_model.tar in the official layout; E_detail saved without num_batches_tracked (old torch)."""
    detail = {k: v for k, v in DecaEncoder(128).state_dict().items() if not k.endswith("num_batches_tracked")}
    path = tmp_path_factory.mktemp("deca") / "deca_model.tar"
    torch.save({"E_flame": filled_encoder.state_dict(), "E_detail": detail,
                "D_detail": {"layers.0.weight": torch.zeros(4, 4)}, "global_step": 7}, path)
    return path


def test_official_checkpoint_loads_strictly(official_tar, filled_encoder):
    flame, detail = load_deca_checkpoint(official_tar, device="cpu", with_detail=True)
    assert isinstance(flame, DecaEncoder) and not flame.training
    assert flame.outsize == 236 and detail.outsize == 128
    for key, value in filled_encoder.state_dict().items():
        assert torch.equal(flame.state_dict()[key], value), key
    alone = load_deca_checkpoint(str(official_tar))
    assert isinstance(alone, DecaEncoder)


def test_checkpoint_found_through_asset_home(official_tar, monkeypatch):
    monkeypatch.setenv("EDTN_HOME", str(official_tar.parent))
    assert isinstance(load_deca_checkpoint(), DecaEncoder)


def test_mismatched_checkpoint_names_every_bad_key(tmp_path, filled_encoder):
    state = dict(filled_encoder.state_dict())
    del state["encoder.layer3.2.bn2.running_var"]
    state["encoder.fc.weight"] = torch.zeros(1000, 2048)
    state["layers.2.bias"] = torch.zeros(235)
    path = tmp_path / "deca_model.tar"
    torch.save({"E_flame": state}, path)
    with pytest.raises(DecaCheckpointError) as info:
        load_deca_checkpoint(path)
    message = str(info.value)
    assert "encoder.layer3.2.bn2.running_var" in message and "missing" in message
    assert "encoder.fc.weight" in message and "unexpected" in message
    assert "layers.2.bias (235,) (model (236,))" in message
    assert str(path) in message and "E_flame" in message


def test_checkpoint_without_entry_is_reported(tmp_path):
    path = tmp_path / "other.tar"
    torch.save({"model": {}}, path)
    with pytest.raises(DecaCheckpointError, match="E_flame"):
        load_deca_checkpoint(path)


def test_missing_checkpoint_raises_asset_error(tmp_path):
    with pytest.raises(AssetError, match="deca_model.tar"):
        load_deca_checkpoint()
    with pytest.raises(AssetError, match="deca_model.tar"):
        load_deca_checkpoint(tmp_path / "nowhere" / "deca_model.tar")
