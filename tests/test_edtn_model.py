"""EDTN MLP: the authors' weights reproduce the kit, shapes, strict loading, export round trip,
and the optimiser helpers."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from infra.assets import AssetError
from edtn.model import EDTN, checkpoint_filter_fn, edtn_input_from_code156, export_edtn, load_edtn
from edtn.optim import make_optimizer, make_train_step


@pytest.fixture(scope="module")
def loss_vectors(flame_deca_kit):
    return dict(np.load(flame_deca_kit / "edtn_loss_vectors.npz"))


@pytest.fixture(scope="module")
def authors_edtn(authors_dir):
    return load_edtn(authors_dir / "EDTN.pt")


def test_authors_weights_match_kit(authors_edtn, loss_vectors):
    x = torch.from_numpy(loss_vectors["edtn_input53"])
    with torch.no_grad():
        out = authors_edtn(x)
    assert out.shape == (16, 17)
    np.testing.assert_allclose(out.numpy(), loss_vectors["a_edtn"], rtol=0, atol=1e-6)


def test_input_from_code156_matches_kit(loss_vectors):
    code = loss_vectors["driving_pose156"]
    np.testing.assert_array_equal(edtn_input_from_code156(code), loss_vectors["edtn_input53"])


def test_batch_one_keeps_batch_axis(authors_edtn, loss_vectors):
    x = torch.from_numpy(loss_vectors["edtn_input53"][:1])
    with torch.no_grad():
        out = authors_edtn(x)
    assert out.shape == (1, 17)
    np.testing.assert_allclose(out.numpy(), loss_vectors["a_edtn"][:1], rtol=0, atol=1e-6)


@pytest.mark.parametrize("shape", [(53,), (4, 52), (2, 53, 1), (4, 156)])
def test_wrong_input_shape_raises(shape):
    with pytest.raises(ValueError, match=r"\(B, 53\)"):
        EDTN()(torch.zeros(shape))


def test_state_dict_keys_match_authors(authors_dir):
    authors = torch.load(authors_dir / "EDTN.pt", map_location="cpu", weights_only=True)
    assert list(EDTN().state_dict()) == list(authors)


def test_export_reload_round_trip(tmp_path, authors_edtn, loss_vectors):
    out = export_edtn(authors_edtn, tmp_path / "sub" / "EDTN_export.pt")
    assert sorted(p.name for p in out.parent.iterdir()) == ["EDTN_export.pt"]  # no temp file left
    plain = torch.load(out, map_location="cpu", weights_only=True)
    assert list(plain) == list(authors_edtn.state_dict())
    for key, value in authors_edtn.state_dict().items():
        assert torch.equal(plain[key], value)
    reloaded = load_edtn(out)
    x = torch.from_numpy(loss_vectors["edtn_input53"])
    with torch.no_grad():
        assert torch.equal(reloaded(x), authors_edtn(x))


def test_training_checkpoint_with_wrapper_prefixes_loads_and_exports(tmp_path, authors_edtn):
    state = authors_edtn.state_dict()
    wrapped = {f"module._orig_mod.{k}": v.clone() for k, v in state.items()}
    ckpt_path = tmp_path / "last.pt"
    torch.save({"model": wrapped, "optim": {}, "step": 7}, ckpt_path)
    model = load_edtn(ckpt_path)
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key])
    exported = export_edtn(ckpt_path, tmp_path / "EDTN.pt")
    plain = torch.load(exported, map_location="cpu", weights_only=True)
    assert list(plain) == list(state)
    assert all(torch.equal(plain[k], state[k]) for k in state)
    assert list(checkpoint_filter_fn(state)) == list(state)  # native dict passes unchanged


def test_compiled_or_ddp_style_module_exports(tmp_path, authors_edtn):
    class Wrapper(torch.nn.Module):  # what torch.compile leaves: the model under _orig_mod
        def __init__(self, inner):
            super().__init__()
            self._orig_mod = inner

    exported = export_edtn(Wrapper(authors_edtn), tmp_path / "EDTN.pt")
    assert list(torch.load(exported, map_location="cpu", weights_only=True)) == list(
        authors_edtn.state_dict())


def test_wrong_key_names_the_key_and_file(tmp_path, authors_dir):
    state = torch.load(authors_dir / "EDTN.pt", map_location="cpu", weights_only=True)
    state["main.9.weight"] = state.pop("main.6.weight")
    bad = tmp_path / "bad_EDTN.pt"
    torch.save(state, bad)
    with pytest.raises(ValueError) as info:
        load_edtn(bad)
    message = str(info.value)
    assert "main.9.weight" in message and "main.6.weight" in message and str(bad) in message


def test_wrong_shape_is_reported(tmp_path, authors_dir):
    state = torch.load(authors_dir / "EDTN.pt", map_location="cpu", weights_only=True)
    state["main.0.weight"] = state["main.0.weight"][:, :50]
    bad = tmp_path / "bad_shape.pt"
    torch.save(state, bad)
    with pytest.raises(ValueError, match="main.0.weight"):
        load_edtn(bad)


def test_missing_default_weights_raise_asset_error():
    with pytest.raises(AssetError, match="EDTN.pt"):
        load_edtn()


@pytest.mark.parametrize("impl", ["fused", "foreach", "for_loop"])
def test_optimizer_impls_agree(impl):
    torch.manual_seed(0)
    reference, model = EDTN(), EDTN()
    model.load_state_dict(reference.state_dict())
    x = torch.randn(8, 53)
    opt_ref = torch.optim.Adam(reference.parameters(), lr=1e-3, betas=(0.5, 0.999))
    opt = make_optimizer(model.parameters(), lr=1e-3, betas=(0.5, 0.999), impl=impl)
    for _ in range(3):
        for net, o in ((reference, opt_ref), (model, opt)):
            o.zero_grad(set_to_none=True)
            net(x).square().mean().backward()
            o.step()
    for p, q in zip(reference.parameters(), model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="optim.impl"):
        make_optimizer(model.parameters(), impl="sgd")


def test_train_step_reduces_loss():
    torch.manual_seed(0)
    model = EDTN()
    target = torch.rand(32, 17)

    def loss_fn(a, x53, real_targets=None):
        total = (a - target).square().mean()
        return {"total": total}

    step = make_train_step(model, loss_fn, make_optimizer(model.parameters(), lr=1e-3))
    x = torch.randn(32, 53)
    first = step(x)["total"].item()
    for _ in range(20):
        last = step(x)["total"]
    assert not last.requires_grad
    assert last.item() < first
