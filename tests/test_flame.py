"""FLAME layer (deca_edit/flame.py) against the conformance kit.

The parity run and the chumpy-fixture load happen once, in a subprocess where ``import chumpy``
fails and every warning is an error while our loader runs (the official FLAME pickle references
chumpy and the deprecated ``scipy.sparse.csc`` path). The other tests run in-process.
"""
from __future__ import annotations

import pickle
import subprocess
import sys
import textwrap
import types

import numpy as np
import pytest
import scipy.sparse
import torch

from deca_edit.flame import (FLAME, FlameOutput, batch_rodrigues, contour_lut_rows, lbs,
                             load_flame_model, orthographic_projection, yaw_from_rotation)
from infra.assets import AssetError, resolve_asset

GROUPS = ("random", "vox")
OUTPUTS = ("vertices", "landmarks2d", "landmarks3d")
GEOMETRY_ATOL = 1e-6  # SPEC §8 / flame_deca README §6

_BLOCKED_SCRIPT = textwrap.dedent("""
    import pickle, sys, warnings
    sys.modules["chumpy"] = None          # makes `import chumpy` raise ImportError
    try:
        import chumpy  # noqa: F401
    except ImportError:
        pass
    else:
        raise SystemExit("chumpy could not be blocked")
    import numpy as np
    import scipy.sparse  # noqa: F401
    import torch
    warnings.simplefilter("error")        # any warning from here on (loader included) is fatal
    from deca_edit.flame import FLAME, load_flame_model

    model_path, embedding_path, vectors_path, fixture_path, out_path = sys.argv[1:6]
    flame = FLAME(model_path, embedding_path, n_shape=100, n_exp=50)
    vectors = np.load(vectors_path)
    result = {"fixture": load_flame_model(fixture_path)}
    with torch.no_grad():
        for group in ("random", "vox"):
            inputs = [torch.from_numpy(vectors[f"{group}_{k}"]) for k in ("shape", "exp", "pose")]
            out = flame(*inputs)
            for name in out._fields:
                result[f"{group}_{name}"] = getattr(out, name).numpy()
            result[f"{group}_lut"] = flame.contour_rows(inputs[2]).numpy()
    result["chumpy_loaded"] = sys.modules.get("chumpy") is not None
    with open(out_path, "wb") as handle:
        pickle.dump(result, handle)
""")


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def blocked_run(tmp_path_factory, synthetic_flame_path, landmark_embedding_path, flame_deca_kit):
    """Outputs of the FLAME layer and the fixture loader computed with chumpy unimportable."""
    out = tmp_path_factory.mktemp("flame_blocked") / "result.pkl"
    cmd = [sys.executable, "-c", _BLOCKED_SCRIPT, str(synthetic_flame_path),
           str(landmark_embedding_path), str(flame_deca_kit / "flame_vectors.npz"),
           str(flame_deca_kit / "chumpy_pickle_fixture.pkl"), str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"blocked-chumpy run failed:\n{proc.stdout}\n{proc.stderr}"
    with open(out, "rb") as handle:
        return pickle.load(handle)


@pytest.fixture(scope="module")
def vectors(flame_deca_kit):
    return dict(np.load(flame_deca_kit / "flame_vectors.npz"))


@pytest.fixture(scope="module")
def flame(synthetic_flame_path, landmark_embedding_path):
    return FLAME(synthetic_flame_path, landmark_embedding_path)


@pytest.fixture(scope="module")
def flame64(synthetic_flame_path, landmark_embedding_path):
    return FLAME(synthetic_flame_path, landmark_embedding_path, dtype=torch.float64)


def _inputs(vectors, group, dtype=torch.float32, rows=slice(None)):
    return [torch.from_numpy(vectors[f"{group}_{k}"][rows]).to(dtype)
            for k in ("shape", "exp", "pose")]


# ------------------------------------------------------------------------- parity, chumpy blocked
@pytest.mark.parametrize("group", GROUPS)
def test_parity_with_deca_flame(blocked_run, vectors, group):
    assert blocked_run["chumpy_loaded"] is False
    for name in OUTPUTS:
        got, want = blocked_run[f"{group}_{name}"], vectors[f"{group}_{name}"]
        assert got.shape == want.shape, name
        err = np.abs(got - want).max()
        assert err <= GEOMETRY_ATOL, f"{group} {name}: max abs error {err:.3g}"
    np.testing.assert_array_equal(blocked_run[f"{group}_lut"],
                                  vectors[f"{group}_dyn_lmk_lut_index"])


def test_chumpy_fixture_loads_exactly(blocked_run, flame_deca_kit):
    got = blocked_run["fixture"]
    want = np.load(flame_deca_kit / "chumpy_pickle_fixture_expected.npz")
    assert sorted(got) == sorted(str(k) for k in want["keys"])
    for key in ("shapedirs", "v_template", "posedirs", "weights", "J", "kintree_table", "f"):
        assert type(got[key]) is np.ndarray, key
        assert got[key].dtype == want[key].dtype, key
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)
    jreg = got["J_regressor"]
    assert isinstance(jreg, scipy.sparse.csc_matrix)
    for part in ("data", "indices", "indptr"):
        assert getattr(jreg, part).dtype == want[f"J_regressor_{part}"].dtype, part
        np.testing.assert_array_equal(getattr(jreg, part), want[f"J_regressor_{part}"])
    assert jreg.shape == tuple(want["J_regressor_shape"])
    np.testing.assert_array_equal(jreg.toarray(), want["J_regressor_dense"])
    for key in ("bs_style", "bs_type"):
        assert got[key] == str(want[key])


# ----------------------------------------------------------------------------- module behaviour
def test_output_is_named_tuple_and_unpacks(flame, vectors):
    out = flame(*_inputs(vectors, "vox", rows=slice(0, 2)))
    assert isinstance(out, FlameOutput)
    vertices, lmk2d, lmk3d = out
    assert vertices.shape == (2, 5023, 3)
    assert lmk2d.shape == lmk3d.shape == (2, 68, 3)


def test_batch_one_matches_kit(flame, vectors):
    out = flame(*_inputs(vectors, "random", rows=slice(3, 4)))
    for name in OUTPUTS:
        np.testing.assert_allclose(getattr(out, name).numpy(), vectors[f"random_{name}"][3:4],
                                   rtol=0, atol=GEOMETRY_ATOL, err_msg=name)


def test_float64_agrees_with_float32(flame, flame64, vectors, synthetic_flame_path,
                                     landmark_embedding_path):
    inputs32 = _inputs(vectors, "random")
    out32 = flame(*inputs32)
    moved64 = FLAME(synthetic_flame_path, landmark_embedding_path).to(torch.float64)
    for module in (flame64, moved64):
        assert module.shapedirs.dtype == torch.float64 and module.faces.dtype == torch.long
        out64 = module(*[x.double() for x in inputs32])
        for name in OUTPUTS:
            err = (getattr(out64, name) - getattr(out32, name).double()).abs().max().item()
            assert getattr(out64, name).dtype == torch.float64
            assert err <= GEOMETRY_ATOL, f"{name}: float64 vs float32 differ by {err:.3g}"


def test_no_licensed_data_in_state_dict(flame):
    assert len(flame.state_dict()) == 0
    assert len(list(flame.parameters())) == 0
    assert flame.shapedirs.shape == (5023, 3, 150)
    assert flame.v_template.shape == (5023, 3)
    assert flame.faces.shape == (9976, 3) and flame.faces.dtype == torch.long
    assert (flame.n_shape, flame.n_exp) == (100, 50)


def test_landmark_maps_and_lbs_joints(flame, vectors):
    shape, exp, pose = _inputs(vectors, "random")
    rows = flame.contour_rows(pose)
    np.testing.assert_array_equal(rows.numpy(), vectors["random_dyn_lmk_lut_index"])
    betas = torch.cat([shape, exp], 1)
    verts, joints = lbs(betas, flame.full_pose(pose), flame.v_template, flame.shapedirs,
                        flame.posedirs, flame.j_regressor, flame.parents, flame.lbs_weights)
    np.testing.assert_allclose(joints.numpy(), vectors["random_joints_posed"], atol=GEOMETRY_ATOL)
    np.testing.assert_allclose(flame.full_pose(pose).numpy(), vectors["random_full_pose15"], atol=0)
    np.testing.assert_allclose(flame.landmarks2d_from_vertices(verts, rows).numpy(),
                               vectors["random_landmarks2d"], atol=GEOMETRY_ATOL)
    np.testing.assert_allclose(flame.landmarks3d_from_vertices(verts).numpy(),
                               vectors["random_landmarks3d"], atol=GEOMETRY_ATOL)


def test_projection_matches_edtn_landmarks(flame, flame_deca_kit):
    """EDTN keeps (x, -y) of landmarks2d projected with cam [10, 0, 0]."""
    edtn = np.load(flame_deca_kit / "edtn_loss_vectors.npz")
    code = torch.from_numpy(edtn["real_code156"])
    out = flame(code[:, :100], code[:, 100:150], code[:, 150:156])
    np.testing.assert_allclose(out.vertices.numpy(), edtn["real_vertices"], atol=GEOMETRY_ATOL)
    cam = torch.tensor([[10.0, 0.0, 0.0]]).expand(code.shape[0], -1)
    proj = orthographic_projection(out.landmarks2d, cam)
    np.testing.assert_allclose((proj[..., :2] * torch.tensor([1.0, -1.0])).numpy(),
                               edtn["real_landmarks2d_proj"], atol=1e-5)


def test_orthographic_projection_formula():
    points = torch.tensor([[[1.0, 2.0, 3.0]], [[-1.0, 0.5, -2.0]]], dtype=torch.float64)
    cam = torch.tensor([[2.0, 0.1, -0.2], [0.5, 1.0, 0.0]], dtype=torch.float64)
    expected = torch.tensor([[[2.2, 3.6, 6.0]], [[0.0, 0.25, -1.0]]], dtype=torch.float64)
    torch.testing.assert_close(orthographic_projection(points, cam), expected)


def test_gradients_wrt_exp_and_pose(flame64, vectors):
    shape, exp, pose = _inputs(vectors, "vox", dtype=torch.float64, rows=slice(0, 1))
    weights = [torch.randn(o.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(i))
               for i, o in enumerate(flame64(shape, exp, pose))]

    def scalar(e, p):
        return sum((o * w).sum() for o, w in zip(flame64(shape, e, p), weights))

    exp.requires_grad_(True)
    pose.requires_grad_(True)
    assert torch.autograd.gradcheck(scalar, (exp, pose), eps=1e-6, atol=1e-5, fast_mode=True)


# ----------------------------------------------------------------------------- errors
@pytest.mark.parametrize("bad, match", [
    (lambda s, e, p: (torch.zeros(2, 99), e, p), r"shape: expected shape \(B, 100\)"),
    (lambda s, e, p: (s[0], e, p), r"shape: expected shape \(B, 100\), got \(100,\)"),
    (lambda s, e, p: (s, e[:1], p), r"exp: expected shape \(2, 50\)"),
    (lambda s, e, p: (s, e, p[:, :3]), r"pose: expected shape \(2, 6\)"),
    (lambda s, e, p: (s.double(), e, p), r"shape: dtype torch.float64"),
    (lambda s, e, p: (s, e * float("nan"), p), r"exp: contains NaN"),
])
def test_bad_inputs_raise_value_error(flame, vectors, bad, match):
    args = bad(*_inputs(vectors, "vox", rows=slice(0, 2)))
    with pytest.raises(ValueError, match=match):
        flame(*args)


def test_landmark_maps_validate_inputs(flame):
    vertices = flame.v_template.expand(2, -1, -1)
    with pytest.raises(ValueError, match=r"lut_rows: expected a long tensor of shape \(2,\)"):
        flame.landmarks2d_from_vertices(vertices, torch.zeros(2))
    with pytest.raises(ValueError, match=r"vertices: expected shape \(B, 5023, 3\)"):
        flame.landmarks3d_from_vertices(vertices[0])


def test_flame_takes_explicit_paths(tmp_path, landmark_embedding_path):
    """The layer opens exactly the files it is given (smplx-style); callers resolve assets."""
    with pytest.raises(FileNotFoundError, match="generic_model.pkl"):
        FLAME(tmp_path / "nowhere" / "generic_model.pkl", landmark_embedding_path)
    with pytest.raises(AssetError, match="generic_model.pkl"):  # the caller's lookup: empty cache
        resolve_asset("flame_model")


def _write_chumpy_pickle(path, monkeypatch, state):
    """Pickle a dict holding an object of class chumpy.ch.Ch without having chumpy."""
    package, module = types.ModuleType("chumpy"), types.ModuleType("chumpy.ch")
    ch = type("Ch", (), {"__module__": "chumpy.ch"})
    module.Ch = ch
    package.ch = module
    monkeypatch.setitem(sys.modules, "chumpy", package)
    monkeypatch.setitem(sys.modules, "chumpy.ch", module)
    obj = ch()
    obj.__dict__.update(state)
    with open(path, "wb") as handle:
        pickle.dump({"shapedirs": obj, "f": np.zeros((1, 3), np.uint32)}, handle, protocol=2)
    monkeypatch.delitem(sys.modules, "chumpy")
    monkeypatch.delitem(sys.modules, "chumpy.ch")


def test_chumpy_without_x_raises(tmp_path, monkeypatch):
    path = tmp_path / "no_x.pkl"
    _write_chumpy_pickle(path, monkeypatch, {"_itr": None, "_dirty_vars": set()})
    with pytest.raises(ValueError, match=r"'shapedirs'.*without the array key 'x'"):
        load_flame_model(path)
    good = tmp_path / "with_x.pkl"
    _write_chumpy_pickle(good, monkeypatch, {"_itr": None, "x": np.arange(6, dtype=np.float32)})
    loaded = load_flame_model(good)["shapedirs"]
    assert type(loaded) is np.ndarray and loaded.dtype == np.float64
    np.testing.assert_array_equal(loaded, np.arange(6))


# ----------------------------------------------------------------------------- pure functions
def test_batch_rodrigues():
    rvec = torch.randn(64, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    rot = batch_rodrigues(rvec)
    skew = torch.zeros(64, 3, 3, dtype=torch.float64)
    skew[:, 0, 1], skew[:, 0, 2], skew[:, 1, 2] = -rvec[:, 2], rvec[:, 1], -rvec[:, 0]
    skew = skew - skew.transpose(1, 2)
    torch.testing.assert_close(rot, torch.linalg.matrix_exp(skew), atol=1e-7, rtol=0)
    # DECA's angle convention: zero -> exactly I; the 1e-8 shift is per component.
    assert torch.equal(batch_rodrigues(torch.zeros(2, 3)), torch.eye(3).expand(2, 3, 3))
    with pytest.raises(ValueError, match=r"rvec: expected shape \(N, 3\)"):
        batch_rodrigues(torch.zeros(3))


def test_contour_lut_rows(vectors, flame):
    for group in GROUPS:
        yaw = torch.from_numpy(vectors[f"{group}_yaw_deg"])
        np.testing.assert_array_equal(contour_lut_rows(yaw).numpy(),
                                      vectors[f"{group}_dyn_lmk_lut_index"])
        rot = batch_rodrigues(torch.from_numpy(vectors[f"{group}_pose"][:, :3]))
        np.testing.assert_allclose(yaw_from_rotation(rot).numpy(), yaw.numpy(), atol=1e-4)
    # README §3 rule at the edges: clamp at 39, round half to even, 39 - y, below -39 -> 78.
    yaw = torch.tensor([0.4, -0.4, 0.5, 1.5, 38.5, 39.6, 90.0, -1.0, -38.6, -39.0, -39.6, -90.0])
    assert contour_lut_rows(yaw).tolist() == [0, 0, 0, 2, 38, 39, 39, 40, 78, 78, 78, 78]
