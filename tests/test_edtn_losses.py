"""EDTN geometry loss: the reference path reproduces the original's values and gradients, the fast
exact path matches the reference, and the real-target cache is built once, reused and rebuilt."""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from deca_edit.codes import (PackedCodes, code156, edtn_input_from_code156, read_code_mat,
                             write_packed_codes)
from deca_edit.flame import FLAME
from edtn.loss_cache import build_real_target_cache
from edtn.losses import (EYE_PAIRS, LIP_PAIRS, REAL_SLICE_EYE, REAL_SLICE_LANDMARKS,
                         REAL_SLICE_LIP, REAL_SLICE_PROJ, REAL_SLICE_RESIDUAL, REAL_TARGET_DIM,
                         FusedFastLoss, GeometryLoss, LossWeights, fast_loss_terms,
                         landmark_weights68, load_basis, pair_distances, project_landmarks)
from infra.assets import AssetError
from edtn.model import load_edtn

# kit key of each of our loss terms
KIT_TERMS = {"vertex": "loss_vertex", "landmark": "loss_landmark", "eye": "loss_eye",
             "lip": "loss_mouth", "total": "loss_G"}
TERMS = tuple(KIT_TERMS)


@pytest.fixture(scope="module")
def kit(flame_deca_kit):
    return dict(np.load(flame_deca_kit / "edtn_loss_vectors.npz"))


@pytest.fixture(scope="module")
def basis(authors_dir):
    return np.load(authors_dir / "transform_matrix_08_30.npy")


@pytest.fixture(scope="module")
def flame(synthetic_flame_path, landmark_embedding_path):
    return FLAME(synthetic_flame_path, landmark_embedding_path, n_shape=100, n_exp=50)


@pytest.fixture(scope="module")
def loss_ref(flame, basis):
    return GeometryLoss(flame, basis, impl="reference")


@pytest.fixture(scope="module")
def loss_ref64(loss_ref):
    return copy.deepcopy(loss_ref).double()


@pytest.fixture(scope="module")
def loss_fast(flame, basis):
    return GeometryLoss(flame, basis, impl="fast")


@pytest.fixture(scope="module")
def loss_fast64(loss_fast):
    return copy.deepcopy(loss_fast).double()


@pytest.fixture(scope="module")
def edtn_input(kit):
    return torch.from_numpy(kit["edtn_input53"])


def _value_and_grad(loss, a, x, real_targets=None):
    a = a.detach().clone().requires_grad_(True)
    terms = loss(a, x, real_targets)
    (grad,) = torch.autograd.grad(terms["total"], a)
    return {k: v.detach() for k, v in terms.items()}, grad


def _predictions(kit, authors_dir, x):
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        a_model = load_edtn(authors_dir / "EDTN.pt")(x)
    ones = torch.ones(16, 17)
    checker = (torch.arange(16 * 17).reshape(16, 17) % 2).float()
    return {"random": torch.rand(16, 17, generator=gen), "edtn_pt": a_model,
            "zeros": torch.zeros(16, 17), "ones": ones, "zero_one": checker}


# ----------------------------------------------------------------------------- pure functions
def test_constants():
    weights = landmark_weights68()
    assert weights.shape == (68,) and float(weights.sum()) == 196.0
    assert weights[:36].eq(1).all() and weights[36:].eq(5).all()
    assert REAL_TARGET_DIM == 17 + 136 + 4 + 3 + 1
    assert LossWeights() == LossWeights(vertex=100.0, landmark=1.0, eye=1.0, lip=1.0)


def test_pair_distances_match_kit(kit):
    real = torch.from_numpy(kit["real_landmarks2d_proj"])
    np.testing.assert_allclose(pair_distances(real, torch.tensor(EYE_PAIRS)).numpy(),
                               kit["real_eye_dis"], rtol=0, atol=1e-6)
    np.testing.assert_allclose(pair_distances(real, torch.tensor(LIP_PAIRS)).numpy(),
                               kit["real_lip_dis"], rtol=0, atol=1e-6)


# ----------------------------------------------------------------------------- reference path
@pytest.mark.parametrize("group", ["edtn", "random"])
def test_reference_matches_kit(loss_ref, kit, edtn_input, group):
    a = torch.from_numpy(kit[f"a_{group}"])
    terms, grad = _value_and_grad(loss_ref, a, edtn_input)
    for name, key in KIT_TERMS.items():
        np.testing.assert_allclose(terms[name].item(), kit[f"{group}_{key}"], rtol=1e-5, err_msg=name)
    np.testing.assert_allclose(grad.numpy(), kit[f"{group}_grad_loss_G_wrt_a"], rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("group", ["edtn", "random"])
def test_reference_geometry_matches_kit(loss_ref, kit, edtn_input, group):
    with torch.no_grad():
        real = loss_ref.real_mesh(edtn_input)
        fake = loss_ref.fake_mesh(torch.from_numpy(kit[f"a_{group}"]))
    np.testing.assert_allclose(real.vertices.numpy(), kit["real_vertices"], rtol=0, atol=1e-6)
    np.testing.assert_allclose(fake.vertices.numpy(), kit[f"{group}_fake_vertices"], rtol=0, atol=1e-6)
    np.testing.assert_allclose(project_landmarks(real.landmarks2d).numpy(),
                               kit["real_landmarks2d_proj"], rtol=0, atol=1e-5)
    fake_lmk = project_landmarks(fake.landmarks2d)
    np.testing.assert_allclose(fake_lmk.numpy(), kit[f"{group}_fake_landmarks2d_proj"], rtol=0, atol=1e-5)
    np.testing.assert_allclose(pair_distances(fake_lmk, torch.tensor(EYE_PAIRS)).numpy(),
                               kit[f"{group}_fake_eye_dis"], rtol=0, atol=1e-5)
    np.testing.assert_allclose(pair_distances(fake_lmk, torch.tensor(LIP_PAIRS)).numpy(),
                               kit[f"{group}_fake_lip_dis"], rtol=0, atol=1e-5)


def test_loss_weights_scale_total(flame, basis, kit, edtn_input):
    weights = LossWeights(vertex=3.0, landmark=0.5, eye=2.0, lip=0.0)
    loss = GeometryLoss(flame, basis, weights=weights, impl="fast")
    terms = loss(torch.from_numpy(kit["a_edtn"]), edtn_input)
    expected = 3.0 * terms["vertex"] + 0.5 * terms["landmark"] + 2.0 * terms["eye"]
    torch.testing.assert_close(terms["total"], expected)


# ----------------------------------------------------------------------------- fast path
def test_real_targets_layout(loss_fast, kit, edtn_input):
    targets = loss_fast.real_targets(edtn_input)
    assert targets.shape == (16, REAL_TARGET_DIM) and targets.dtype == torch.float32
    np.testing.assert_allclose(targets[:, REAL_SLICE_LANDMARKS].reshape(16, 68, 2).numpy(),
                               kit["real_landmarks2d_proj"], rtol=0, atol=1e-5)
    np.testing.assert_allclose(targets[:, REAL_SLICE_EYE].numpy(), kit["real_eye_dis"], rtol=0, atol=1e-5)
    np.testing.assert_allclose(targets[:, REAL_SLICE_LIP].numpy(), kit["real_lip_dis"], rtol=0, atol=1e-5)
    # ‖Qᵀd‖² + residual = ‖d‖², d = v_real − V0 (V0 = the zero-expression mesh)
    with torch.no_grad():
        zero = loss_fast.fake_mesh(torch.zeros(1, 17)).vertices.double().reshape(1, -1)
    offset = torch.from_numpy(kit["real_vertices"]).double().reshape(16, -1) - zero
    split = (targets[:, REAL_SLICE_PROJ].double().pow(2).sum(1)
             + targets[:, REAL_SLICE_RESIDUAL].double()[:, 0])
    np.testing.assert_allclose(split.numpy(), offset.pow(2).sum(1).numpy(), rtol=1e-5)
    assert (targets[:, REAL_SLICE_RESIDUAL] >= 0).all()


@pytest.mark.parametrize("kind", ["random", "edtn_pt", "zeros", "ones", "zero_one"])
@pytest.mark.parametrize("batch", [16, 1])
def test_fast_matches_reference(loss_ref, loss_ref64, loss_fast, kit, authors_dir, edtn_input,
                                kind, batch):
    a = _predictions(kit, authors_dir, edtn_input)[kind][:batch]
    x = edtn_input[:batch]
    ref, grad_ref = _value_and_grad(loss_ref, a, x)
    fast, grad_fast = _value_and_grad(loss_fast, a, x)  # real targets computed on the fly
    cached, grad_cached = _value_and_grad(loss_fast, a, x, loss_fast.real_targets(x))
    for name in TERMS:
        torch.testing.assert_close(fast[name], ref[name], rtol=1e-5, atol=0, msg=name)
        torch.testing.assert_close(cached[name], fast[name], rtol=0, atol=0)
    torch.testing.assert_close(grad_cached, grad_fast, rtol=0, atol=0)
    # The float32 reference gradient itself carries rounding of ~1e-4 of its largest entry at
    # batch 1 (landmark and vertex gradients are summed per vertex before the 15069 -> 17
    # reduction); the fast path is closer to the float64 reference than that.
    scale = float(grad_ref.abs().max())
    torch.testing.assert_close(grad_fast, grad_ref, rtol=1e-4, atol=1e-4 * scale)
    _, grad64 = _value_and_grad(loss_ref64, a.double(), x.double())
    torch.testing.assert_close(grad_fast.double(), grad64, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("group", ["edtn", "random"])
def test_fast_float64_matches_reference_float64_and_kit(loss_ref, loss_fast, kit, edtn_input, group):
    ref64, fast64 = copy.deepcopy(loss_ref).double(), copy.deepcopy(loss_fast).double()
    a = torch.from_numpy(kit[f"a_{group}"]).double()
    x = edtn_input.double()
    ref, grad_ref = _value_and_grad(ref64, a, x)
    fast, grad_fast = _value_and_grad(fast64, a, x)
    assert fast["total"].dtype == torch.float64 and grad_fast.dtype == torch.float64
    for name, key in KIT_TERMS.items():
        torch.testing.assert_close(fast[name], ref[name], rtol=1e-10, atol=0, msg=name)
        np.testing.assert_allclose(fast[name].item(), kit[f"{group}_{key}"], rtol=1e-5, err_msg=name)
    torch.testing.assert_close(grad_fast, grad_ref, rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(grad_fast.numpy(), kit[f"{group}_grad_loss_G_wrt_a"], rtol=1e-4, atol=1e-7)


# ----------------------------------------------------------------------------- fast real side
REAL_FIELDS = {"projection": REAL_SLICE_PROJ, "landmarks": REAL_SLICE_LANDMARKS,
               "eye": REAL_SLICE_EYE, "lip": REAL_SLICE_LIP, "residual": REAL_SLICE_RESIDUAL}


@pytest.fixture(scope="module")
def vox_inputs308(authors_dir) -> torch.Tensor:
    """EDTN inputs (308, 53) of the authors' 308 example frames."""
    files = sorted((authors_dir / "vox_deca").glob("*.mat"))
    assert len(files) == 308
    return torch.from_numpy(edtn_input_from_code156(np.stack([code156(read_code_mat(f)) for f in files])))


def _random_codes_large_jaw() -> torch.Tensor:
    """(160, 53): expressions N(0, 1.5²); jaw axis-angles of every size up to 3 rad (> 170°),
    along the axes, and exactly zero."""
    gen = torch.Generator().manual_seed(11)
    x = torch.randn(160, 53, generator=gen) * 1.5
    axis = torch.nn.functional.normalize(torch.randn(160, 3, generator=gen), dim=1)
    x[:, 50:] = axis * torch.linspace(0.0, 3.0, 160).unsqueeze(1)
    x[:3, 50:] = 0.8 * torch.eye(3)   # pure pitch / yaw / roll of the jaw
    x[3, 50:] = 0.0
    return x


def _field_errors(fast: torch.Tensor, flame: torch.Tensor) -> dict[str, float]:
    """Relative error per field: ‖fast − flame‖ / ‖flame‖ over the whole batch (Frobenius)."""
    fast, flame = fast.double(), flame.double()
    return {name: float(torch.linalg.norm(fast[:, sl] - flame[:, sl]) / torch.linalg.norm(flame[:, sl]))
            for name, sl in REAL_FIELDS.items()}


@pytest.mark.parametrize("codes", ["vox308", "random_large_jaw"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fast_real_targets_equal_the_flame_path(loss_fast, loss_fast64, vox_inputs308, codes, dtype):
    """The polynomial real side agrees with the full FLAME forward on every field."""
    loss = loss_fast if dtype == torch.float32 else loss_fast64
    x = (vox_inputs308 if codes == "vox308" else _random_codes_large_jaw()).to(dtype)
    fast = loss.real_targets(x)
    flame = loss.real_targets(x, impl="flame")
    assert fast.dtype == flame.dtype == dtype and fast.shape == flame.shape == (len(x), REAL_TARGET_DIM)
    errors = _field_errors(fast, flame)
    # float32: both carry float32 rounding (the FLAME path's dominates); float64: exact to rounding
    limit = 1e-6 if dtype == torch.float32 else 1e-11
    assert max(errors.values()) < limit, errors
    if dtype == torch.float64:   # also sample by sample, entry by entry, relative to the field
        for name, sl in REAL_FIELDS.items():
            scale = flame[:, sl].abs().amax(dim=1, keepdim=True)
            assert float(((fast[:, sl] - flame[:, sl]).abs() / scale).max()) < 1e-11, name
    assert (fast[:, REAL_SLICE_RESIDUAL] >= 0).all()


def test_real_targets_impl_is_checked(loss_fast, edtn_input):
    with pytest.raises(ValueError, match="impl"):
        loss_fast.real_targets(edtn_input, impl="approx")


# ----------------------------------------------------------------------------- fused loss
def _fused_and_autograd(loss, a, targets, combine):
    """Values and ∂combine(terms)/∂a of the fused node and of the plain-autograd formula."""
    out = []
    for forward in (loss.forward_fast, loss.forward_fast_autograd):
        leaf = a.detach().clone().requires_grad_(True)
        terms = forward(leaf, targets)
        (grad,) = torch.autograd.grad(combine(terms), leaf)
        out.append(({k: v.detach() for k, v in terms.items()}, grad))
    return out


COMBINATIONS = {
    "total": lambda t: t["total"],
    "vertex": lambda t: t["vertex"],
    "landmark": lambda t: 3.0 * t["landmark"],
    "eye": lambda t: t["eye"],
    "lip": lambda t: t["lip"],
    "eye+2total": lambda t: t["eye"] + 2.0 * t["total"],
}


@pytest.mark.parametrize("combination", list(COMBINATIONS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fused_loss_equals_autograd(loss_fast, loss_fast64, vox_inputs308, combination, dtype):
    loss = loss_fast if dtype == torch.float32 else loss_fast64
    x = vox_inputs308[:64].to(dtype)
    targets = loss.real_targets(x)
    a = torch.rand(64, 17, generator=torch.Generator().manual_seed(2), dtype=dtype)
    (fused, grad_fused), (ref, grad_ref) = _fused_and_autograd(loss, a, targets,
                                                               COMBINATIONS[combination])
    rtol = 1e-6 if dtype == torch.float64 else 1e-5
    for name in TERMS:
        torch.testing.assert_close(fused[name], ref[name], rtol=rtol, atol=0, msg=name)
    scale = float(grad_ref.abs().max())
    assert scale > 0
    torch.testing.assert_close(grad_fused, grad_ref, rtol=rtol, atol=rtol * 1e-3 * scale)
    if dtype == torch.float64:
        assert float((grad_fused - grad_ref).abs().max()) <= 1e-6 * scale


def test_fused_loss_at_the_l1_kinks(loss_fast64, vox_inputs308):
    """Landmark and distance errors that are exactly zero: sign(0) = 0, as autograd has it."""
    loss = loss_fast64
    x = vox_inputs308[:32].double()
    targets = loss.real_targets(x).clone()
    a = torch.rand(32, 17, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    consts = loss._fast_consts(a.dtype, a.device)
    fused = torch.addmm(consts.offset, a, consts.weight_t)          # the fake side, same op
    n_head = REAL_SLICE_LANDMARKS.stop
    fake_dist = fused[:, n_head:].reshape(32, -1, 2).pow(2).sum(dim=-1).sqrt()
    # half the samples: every landmark exactly on the real one; some pairs: the exact distance
    targets[::2, REAL_SLICE_LANDMARKS] = fused[::2, REAL_SLICE_LANDMARKS]
    dist = slice(REAL_SLICE_EYE.start, REAL_SLICE_LIP.stop)
    targets[1::2, dist] = fake_dist[1::2]
    targets[::4, REAL_SLICE_PROJ] = fused[::4, REAL_SLICE_PROJ]     # vertex term: smooth anyway
    assert (fused[::2, REAL_SLICE_LANDMARKS] - targets[::2, REAL_SLICE_LANDMARKS]).eq(0).all()
    for combination in ("total", "landmark", "eye", "eye+2total"):
        (values, grad_fused), (ref, grad_ref) = _fused_and_autograd(
            loss, a, targets, COMBINATIONS[combination])
        scale = float(grad_ref.abs().max())
        assert float((grad_fused - grad_ref).abs().max()) <= 1e-6 * scale, combination
    # the kinks contribute nothing: gradient of the landmark term on the samples at the kink is 0
    (_, grad_lmk), _ = _fused_and_autograd(loss, a, targets, COMBINATIONS["landmark"])
    assert grad_lmk[::2].eq(0).all() and grad_lmk[1::2].ne(0).any()
    (_, grad_eye), _ = _fused_and_autograd(loss, a, targets, COMBINATIONS["eye"])
    assert grad_eye[1::2].eq(0).all() and grad_eye[::2].ne(0).any()


def test_fused_loss_at_a_zero_fake_distance_gives_nan_like_autograd(loss_fast64, vox_inputs308):
    """A fake eyelid distance of exactly 0 (a = 0, pair offsets 0): NaN in that sample's
    gradient, as autograd's sqrt backward gives; the other samples are untouched."""
    loss = loss_fast64
    x = vox_inputs308[:8].double()
    targets = loss.real_targets(x)
    a = torch.rand(8, 17, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    a[3] = 0.0
    consts = loss._fast_consts(a.dtype, a.device)
    offset = consts.offset.clone()
    offset[REAL_SLICE_LANDMARKS.stop:REAL_SLICE_LANDMARKS.stop + 2] = 0.0   # first eye pair
    zeroed = consts._replace(offset=offset)
    grads = []
    for fused_path in (True, False):
        leaf = a.clone().requires_grad_(True)
        if fused_path:
            total = FusedFastLoss.apply(leaf, targets, zeroed)[-1]
        else:
            total = fast_loss_terms(leaf, targets, zeroed.weight_t, zeroed.offset,
                                    zeroed.n_vertex_coords, zeroed.weights)["total"]
        grads.append(torch.autograd.grad(total, leaf)[0])
    fused, ref = grads
    assert torch.isnan(ref[3]).all() and torch.equal(torch.isnan(fused), torch.isnan(ref))
    keep = torch.arange(8) != 3
    torch.testing.assert_close(fused[keep], ref[keep], rtol=1e-10, atol=1e-14)


def test_fused_loss_without_grad_and_through_the_module(loss_fast, edtn_input):
    a = torch.rand(16, 17, requires_grad=True)
    targets = loss_fast.real_targets(edtn_input)
    with torch.no_grad():
        terms = loss_fast(a, edtn_input, targets)
    assert not terms["total"].requires_grad and set(terms) == set(TERMS)
    terms = loss_fast(a, edtn_input, targets)
    assert terms["total"].grad_fn is not None and "FusedFastLoss" in type(terms["total"].grad_fn).__name__


def test_bad_inputs_raise(loss_fast, flame, basis, edtn_input):
    a = torch.rand(16, 17)
    with pytest.raises(ValueError, match="a must"):
        loss_fast(a[:, :16], edtn_input)
    with pytest.raises(ValueError, match="edtn_input53"):
        loss_fast(a, edtn_input[:, :50])
    with pytest.raises(ValueError, match="batch sizes"):
        loss_fast(a[:8], edtn_input)
    with pytest.raises(ValueError, match="real_targets"):
        loss_fast(a, None, torch.zeros(16, 100))
    with pytest.raises(ValueError, match="loss.impl"):
        GeometryLoss(flame, basis, impl="approx")
    with pytest.raises(ValueError, match="basis"):
        GeometryLoss(flame, basis[:, :40])


def test_load_basis(authors_dir, tmp_path):
    basis = load_basis(authors_dir / "transform_matrix_08_30.npy")
    assert basis.shape == (17, 50) and basis.dtype == np.float64
    np.save(tmp_path / "bad.npy", basis[:, :49])
    with pytest.raises(ValueError, match="bad.npy"):
        load_basis(tmp_path / "bad.npy")
    with pytest.raises(AssetError, match="transform_matrix_08_30.npy"):
        load_basis()


def test_weights_from_mapping(flame, basis):
    loss = GeometryLoss(flame, basis, weights={"vertex": 2.0, "landmark": 1.0, "eye": 0.5, "lip": 1.0})
    assert loss.weights == LossWeights(vertex=2.0, eye=0.5)


def test_no_flame_data_in_state_dict(loss_fast):
    assert len(loss_fast.state_dict()) == 0


# ----------------------------------------------------------------------------- cache
class _CountingLoss:
    """Wraps GeometryLoss.real_targets with a call counter (the cache only calls that)."""

    def __init__(self, loss):
        self.loss, self.calls = loss, 0
        self.flame, self.basis = loss.flame, loss.basis

    def real_targets(self, x):
        self.calls += 1
        return self.loss.real_targets(x)


def test_cache_built_once_reused_and_rebuilt(tmp_path, loss_fast, flame, basis, kit):
    codes = kit["driving_pose156"]  # (16, 156) code156 rows
    counting = _CountingLoss(loss_fast)
    first = build_real_target_cache(codes, counting, tmp_path, name="train", batch_size=5,
                                    progress=False)
    assert counting.calls == 4  # ceil(16 / 5)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert len(files) == 1 and files[0].startswith("train.real_targets.")  # no temp file left
    assert isinstance(first, np.memmap) and first.shape == (16, REAL_TARGET_DIM)
    direct = loss_fast.real_targets(torch.from_numpy(kit["edtn_input53"])).numpy()
    # batches of 5 vs 16: float32 FLAME rounding may differ in the last bit
    np.testing.assert_allclose(np.asarray(first), direct, rtol=0, atol=1e-6)
    mtime = (tmp_path / files[0]).stat().st_mtime_ns

    again = build_real_target_cache(codes, counting, tmp_path, name="train", progress=False)
    assert counting.calls == 4 and (tmp_path / files[0]).stat().st_mtime_ns == mtime
    np.testing.assert_array_equal(np.asarray(again), np.asarray(first))

    # (N, 53) inputs with the same values hash the same
    same = build_real_target_cache(kit["edtn_input53"], counting, tmp_path, name="train", progress=False)
    assert counting.calls == 4 and Path(same.filename) == Path(first.filename)

    # changed data -> rebuilt, the stale file is removed
    changed = codes.copy()
    changed[3, 120] += 0.1
    build_real_target_cache(changed, counting, tmp_path, name="train", batch_size=16, progress=False)
    assert counting.calls == 5
    files2 = sorted(p.name for p in tmp_path.iterdir())
    assert len(files2) == 1 and files2 != files

    # changed basis -> rebuilt with the new basis' targets
    other_basis = basis.copy()
    other_basis[0, 0] += 0.05
    other = GeometryLoss(flame, other_basis)
    rebuilt = build_real_target_cache(changed, _CountingLoss(other), tmp_path, name="train",
                                      progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) != files2
    expected = other.real_targets(torch.from_numpy(edtn_input_from_code156(changed))).numpy()
    np.testing.assert_allclose(np.asarray(rebuilt), expected, rtol=0, atol=1e-6)


def test_cache_next_to_packed_codes(tmp_path, loss_fast, kit):
    code = kit["driving_pose156"]
    prefix = write_packed_codes(tmp_path / "train", [(
        "video0", [f"{i:07d}" for i in range(16)],
        {"shape": code[:, :100], "exp": code[:, 100:150], "pose": code[:, 150:156],
         "cam": np.zeros((16, 3), np.float32)})])
    packed = PackedCodes(prefix)
    targets = build_real_target_cache(packed, loss_fast, progress=False)
    assert list(tmp_path.glob("train.real_targets.*.npy")) == [Path(targets.filename)]
    np.testing.assert_allclose(np.asarray(targets), loss_fast.real_targets(
        torch.from_numpy(kit["edtn_input53"])).numpy(), rtol=0, atol=1e-6)
