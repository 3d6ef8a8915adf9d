"""Training-free morph mappings (edtn.mappings): exact box-constrained optima and the factory.

The optima are checked against scipy's ``lsq_linear`` (bounded-variable least squares) on the 308
example codes of ../shared/reference/authors/vox_deca with the synthetic FLAME model.
"""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from scipy.optimize import lsq_linear

from deca_edit.codes import code156, edtn_input_from_code156, read_code_mat
from edtn.losses import N_EXP
from edtn.mappings import MAPPINGS, BasisFit, build_mapping, solve_box_qp
from edtn.model import EDTN, load_edtn
from infra.assets import AssetError

OBJECTIVE_RTOL = 1e-6


@pytest.fixture(scope="module")
def example_inputs(authors_dir) -> torch.Tensor:
    files = sorted((authors_dir / "vox_deca").glob("*.mat"))
    assert len(files) == 308
    rows = [edtn_input_from_code156(code156(read_code_mat(f))) for f in files]
    return torch.from_numpy(np.stack(rows).astype(np.float32))


@pytest.fixture(scope="module")
def basis_path(authors_dir):
    return authors_dir / "transform_matrix_08_30.npy"


@pytest.fixture(scope="module")
def vertex_fit(synthetic_flame_path, landmark_embedding_path, basis_path):
    return build_mapping("vertex_fit", flame_path=synthetic_flame_path,
                         landmark_embedding_path=landmark_embedding_path, basis_path=basis_path)


def _bvls(matrix: np.ndarray, target: np.ndarray) -> np.ndarray:
    return lsq_linear(matrix, target, bounds=(0.0, 1.0), method="bvls", tol=1e-14).x


def _assert_in_box(a: torch.Tensor) -> None:
    assert a.dtype == torch.float32 and a.shape[1] == 17
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0


def test_basis_fit_matches_lsq_linear(example_inputs, basis_path):
    mapping = build_mapping("basis_fit", basis_path=basis_path)
    a = mapping(example_inputs)
    _assert_in_box(a)
    basis = np.load(basis_path).astype(np.float32).astype(np.float64)  # T as training rounds it
    psi = example_inputs[:, :N_EXP].double().numpy()
    at_bound = 0
    for i in range(len(psi)):
        ref = _bvls(basis.T, psi[i])
        f_ref = np.sum((basis.T @ ref - psi[i]) ** 2)
        f_ours = np.sum((basis.T @ a[i].double().numpy() - psi[i]) ** 2)
        assert f_ours <= f_ref * (1 + OBJECTIVE_RTOL), (i, f_ours, f_ref)
        at_bound += int(((ref <= 0) | (ref >= 1)).any())
    assert at_bound > 100  # the box is active on these codes: the test exercises the constraints
    np.testing.assert_allclose(mapping.objective(example_inputs, a).numpy(),
                               np.sum((a.double().numpy() @ basis - psi) ** 2, axis=1), rtol=1e-12)


def test_vertex_fit_matches_lsq_linear_on_the_full_vertex_system(example_inputs, vertex_fit):
    """The 15069×17 fake-mesh matrix probed from FLAME itself (float64) gives, through scipy's
    lsq_linear, the same optimum as the mapping's 17-variable solve on R and Qᵀ(v − V0); objectives
    are evaluated on all 15069 vertex coordinates."""
    a = vertex_fit(example_inputs)
    _assert_in_box(a)
    loss = vertex_fit.loss
    with torch.no_grad():
        real = loss.real_mesh(example_inputs).vertices.reshape(len(example_inputs), -1).double().numpy()
        probe = copy.deepcopy(loss).double()
        unit = torch.cat((torch.zeros(1, 17, dtype=torch.float64), torch.eye(17, dtype=torch.float64)))
        fake = probe.fake_mesh(unit).vertices.reshape(18, -1).numpy()
    v0, matrix = fake[0], (fake[1:] - fake[0]).T  # (15069,), (15069, 17)
    # lsq_linear on (R', Q'ᵀ(v − V0)) of our own QR of the probed matrix: the same minimiser as on
    # the 15069 rows (they differ by a constant), 200x faster.
    q_mat, r_mat = np.linalg.qr(matrix)
    reduced = (real - v0) @ q_mat
    objective = vertex_fit.objective(example_inputs, a).numpy()
    for i in range(len(real)):
        ref = _bvls(r_mat, reduced[i])
        f_ref = np.sum((v0 + matrix @ ref - real[i]) ** 2)
        f_ours = np.sum((v0 + matrix @ a[i].double().numpy() - real[i]) ** 2)
        assert f_ours <= f_ref * (1 + OBJECTIVE_RTOL), (i, f_ours, f_ref)
        assert objective[i] == pytest.approx(f_ours, rel=1e-5)  # the exact decomposition


def test_vertex_fit_is_the_optimum_of_the_edtn_vertex_term(example_inputs, vertex_fit):
    """No point of the box has a lower vertex loss than vertex_fit (checked against EDTN and
    random morphs with the literal FLAME path)."""
    a = vertex_fit(example_inputs[:32])
    loss = vertex_fit.loss
    x = example_inputs[:32]
    rng = torch.Generator().manual_seed(0)
    others = [torch.rand(32, 17, generator=rng), a.clamp(0.05, 0.95)]
    best = loss.forward_reference(a, x)["vertex"]
    for other in others:
        assert float(best) < float(loss.forward_reference(other, x)["vertex"])


def test_solver_random_problems_and_kkt():
    rng = np.random.default_rng(3)
    for n in (1, 5, 17):
        matrix = rng.normal(size=(3 * n, n))
        targets = rng.normal(scale=2.0, size=(200, 3 * n))
        gram = torch.from_numpy(matrix.T @ matrix)
        a = solve_box_qp(gram, torch.from_numpy(targets @ matrix)).numpy()
        assert a.min() >= 0 and a.max() <= 1
        for i in range(len(targets)):
            ref = _bvls(matrix, targets[i])
            f = lambda v: np.sum((matrix @ v - targets[i]) ** 2)  # noqa: E731
            assert f(a[i]) <= f(ref) * (1 + 1e-9) + 1e-12
        grad = a @ gram.numpy() - targets @ matrix
        interior = (a > 1e-12) & (a < 1 - 1e-12)
        assert np.abs(grad[interior]).max(initial=0) < 1e-8
        assert (grad[a <= 0] >= -1e-8).all() and (grad[a >= 1] <= 1e-8).all()


def test_solver_interior_optimum_is_the_unconstrained_one():
    gram = torch.tensor([[2.0, 0.5], [0.5, 1.0]], dtype=torch.float64)
    inside = torch.tensor([[0.3, 0.6]], dtype=torch.float64)
    a = solve_box_qp(gram, inside @ gram)
    torch.testing.assert_close(a, inside, rtol=0, atol=1e-14)


def test_solver_rejects_bad_shapes():
    with pytest.raises(ValueError, match="gram"):
        solve_box_qp(torch.ones(2, 3, dtype=torch.float64), torch.ones(1, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="linear"):
        solve_box_qp(torch.eye(3, dtype=torch.float64), torch.ones(1, 2, dtype=torch.float64))


def test_edtn_mapping_is_the_network(tmp_path, example_inputs):
    torch.manual_seed(0)
    path = tmp_path / "EDTN.pt"
    torch.save(EDTN().state_dict(), path)
    mapping = build_mapping("edtn", edtn_path=path)
    torch.testing.assert_close(mapping(example_inputs), load_edtn(path)(example_inputs))


def test_factory_errors(basis_path):
    assert MAPPINGS == ("edtn", "basis_fit", "vertex_fit")
    with pytest.raises(ValueError, match="mapping must be one of"):
        build_mapping("nearest")
    with pytest.raises(AssetError, match="generic_model.pkl"):
        build_mapping("vertex_fit", basis_path=basis_path)
    with pytest.raises(AssetError, match="transform_matrix_08_30.npy"):
        build_mapping("basis_fit")
    with pytest.raises(ValueError, match=r"\(B, 53\)"):
        BasisFit(np.load(basis_path))(torch.zeros(3, 50))
