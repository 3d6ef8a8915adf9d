"""reenact.pose: anime pose assembly, angle modes, mouth gain, relative mode and smoothing."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from reenact import pose as P

DTYPES = [torch.float32, torch.float64]


def _rng(seed=0):
    return np.random.default_rng(seed)


# ----------------------------------------------------------------------------- assembly / columns
def test_columns_and_assembly():
    assert P.POSE_COLUMNS[:2] == ("morph_00", "morph_01")
    assert P.POSE_COLUMNS[16] == "morph_16"
    assert P.POSE_COLUMNS[17:] == ("angle_0", "angle_1", "angle_2")
    morphs = torch.rand(4, 17)
    angles = torch.randn(4, 3) * 10
    pose = P.assemble_pose(morphs, angles)
    assert pose.shape == (4, 20)
    assert torch.equal(pose[:, :17], morphs) and torch.equal(pose[:, 17:], angles)
    assert P.assemble_pose(morphs[:1], angles[:1]).shape == (1, 20)


@pytest.mark.parametrize("bad", [torch.rand(4, 16), torch.rand(17), torch.full((2, 17), float("nan"))])
def test_assembly_rejects_bad_morphs(bad):
    with pytest.raises(ValueError, match="morphs"):
        P.assemble_pose(bad, torch.zeros(bad.shape[0] if bad.ndim == 2 else 1, 3))


def test_pose_table():
    poses = torch.arange(40, dtype=torch.float32).view(2, 20)
    table = P.pose_table(poses, [5, 6])
    assert list(table.columns) == ["frame", *P.POSE_COLUMNS]
    assert table["frame"].tolist() == [5, 6]
    np.testing.assert_array_equal(table[list(P.POSE_COLUMNS)].to_numpy(), poses.numpy())


# ----------------------------------------------------------------------------- angles
@pytest.mark.parametrize("dtype", DTYPES)
def test_reference_angles_are_permuted_degrees(dtype):
    r = torch.tensor([[0.1, -0.2, 0.3], [0.0, 0.5, -0.05]], dtype=dtype)
    out = P.angles_reference(r)
    expected = torch.stack([r[:, 0], r[:, 2], r[:, 1]], 1) * 180 / math.pi
    assert out.dtype == dtype
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_rodrigues_matches_scipy(dtype):
    r = _rng(1).normal(size=(16, 3)) * 0.8
    r[0] = 0.0
    r[1] = [1e-9, 0, 0]
    ours = P.axis_angle_to_matrix(torch.tensor(r, dtype=dtype)).double().numpy()
    np.testing.assert_allclose(ours, Rotation.from_rotvec(r).as_matrix(),
                               atol=1e-6 if dtype == torch.float32 else 1e-12)


@pytest.mark.parametrize("axis,slot", [(0, 0), (2, 1), (1, 2)])
@pytest.mark.parametrize("angle", [0.3, -1.2, 2.5])
def test_euler_single_axis_rotation_is_exact(axis, slot, angle):
    """A rotation about one FLAME axis lands in that axis' slot with its exact angle in degrees."""
    r = torch.zeros(1, 3, dtype=torch.float64)
    r[0, axis] = angle
    out = P.angles_euler(r)[0]
    expected = torch.zeros(3, dtype=torch.float64)
    if axis == 2 and abs(angle) > math.pi / 2:  # b is limited to [-90°, 90°]: equivalent triple
        rot_ours = Rotation.from_euler("XZY", out.numpy(), degrees=True).as_matrix()
        np.testing.assert_allclose(rot_ours, Rotation.from_rotvec(r.numpy()).as_matrix()[0], atol=1e-12)
        return
    expected[slot] = math.degrees(angle)
    torch.testing.assert_close(out, expected, atol=1e-10, rtol=0)
    # on a single axis the reference conversion agrees exactly
    torch.testing.assert_close(P.angles_reference(r)[0], expected, atol=1e-10, rtol=0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_euler_recovers_known_intrinsic_xzy_angles(dtype):
    """R = Rx(a)·Rz(b)·Ry(c) built by scipy ('XZY', intrinsic) → axis-angle → our (a, b, c)."""
    abc = np.array([[10.0, -20.0, 30.0], [-45.0, 60.0, 5.0], [0.0, 0.0, 0.0], [170.0, -80.0, -120.0]])
    rotvec = Rotation.from_euler("XZY", abc, degrees=True).as_rotvec()
    out = P.angles_euler(torch.tensor(rotvec, dtype=dtype)).double().numpy()
    np.testing.assert_allclose(out, abc, atol=1e-3 if dtype == torch.float32 else 1e-9)
    # and agrees with scipy's own decomposition on random rotations
    rand = Rotation.random(32, random_state=3)
    out = P.angles_euler(torch.tensor(rand.as_rotvec(), dtype=torch.float64)).numpy()
    np.testing.assert_allclose(Rotation.from_euler("XZY", out, degrees=True).as_matrix(),
                               rand.as_matrix(), atol=1e-10)


def test_euler_gimbal_lock_is_finite_and_consistent():
    rot = Rotation.from_euler("XZY", [30.0, 90.0, 0.0], degrees=True)
    out = P.angles_euler(torch.tensor(rot.as_rotvec()[None], dtype=torch.float64))[0].numpy()
    assert np.isfinite(out).all()
    np.testing.assert_allclose(Rotation.from_euler("XZY", out, degrees=True).as_matrix(),
                               rot.as_matrix(), atol=1e-6)


def test_euler_agrees_with_reference_to_first_order():
    """|euler − reference| = O(|r|²): halving the rotation quarters the difference."""
    direction = torch.tensor([[0.3, -0.5, 0.8]], dtype=torch.float64)
    diffs = []
    for scale in (0.1, 0.05, 0.025):
        r = direction * scale
        diffs.append((P.angles_euler(r) - P.angles_reference(r)).abs().max().item())
    assert diffs[0] > 0
    for big, small in zip(diffs, diffs[1:]):
        assert 3.5 < big / small < 4.5
    # a small head rotation (about 1.5 degrees): the two modes differ by a hundredth of a degree
    r = torch.tensor([[0.01, 0.02, -0.015]], dtype=torch.float64)
    assert (P.angles_euler(r) - P.angles_reference(r)).abs().max() < 0.05


def test_convert_angles_relative():
    r = torch.tensor(Rotation.random(5, random_state=0).as_rotvec() * 0.3)
    ref = P.convert_angles(r, "reference", relative=True)
    torch.testing.assert_close(ref, P.angles_reference(r) - P.angles_reference(r)[:1])
    eul = P.convert_angles(r, "euler", relative=True)
    torch.testing.assert_close(eul[0], torch.zeros(3, dtype=r.dtype), atol=1e-10, rtol=0)
    rel = Rotation.from_rotvec(r[:1].numpy()).inv() * Rotation.from_rotvec(r.numpy())
    np.testing.assert_allclose(eul.numpy(), rel.as_euler("XZY", degrees=True), atol=1e-9)
    with pytest.raises(ValueError, match="angle_mode"):
        P.convert_angles(r, "quaternion")


# ----------------------------------------------------------------------------- gain / relative morphs
def test_mouth_gain_only_touches_mouth_and_clips():
    morphs = torch.linspace(0, 1, 17).repeat(3, 1)
    out = P.apply_mouth_gain(morphs, 1.5)
    torch.testing.assert_close(out[:, :12], morphs[:, :12], rtol=0, atol=0)
    torch.testing.assert_close(out[:, 12:], (morphs[:, 12:] * 1.5).clamp(0, 1), rtol=0, atol=0)
    assert out[:, 12:].max() == 1.0 and (morphs[:, 12:] * 1.5).max() > 1.0
    torch.testing.assert_close(P.apply_mouth_gain(morphs, 1.0), morphs, rtol=0, atol=0)
    assert torch.equal(P.apply_mouth_gain(morphs, 0.0)[:, 12:], torch.zeros(3, 5))


def test_relative_morphs():
    morphs = torch.tensor([[0.2] * 17, [0.5] * 17, [0.1] * 17])
    out = P.relative_morphs(morphs)
    torch.testing.assert_close(out, torch.tensor([[0.0] * 17, [0.3] * 17, [0.0] * 17]))


def test_build_pose_sequence_default_is_original():
    morphs = torch.rand(6, 17)
    r = torch.randn(6, 3) * 0.2
    pose = P.build_pose_sequence(morphs, r)
    expected = torch.cat([morphs, r[:, [0, 2, 1]] * 180 / math.pi], 1)
    torch.testing.assert_close(pose, expected, rtol=0, atol=0)


def test_build_pose_sequence_options_compose():
    morphs = torch.rand(6, 17, dtype=torch.float64)
    r = torch.randn(6, 3, dtype=torch.float64) * 0.2
    opts = P.PoseOptions(relative=True, mouth_gain=2.0, smoothing="ema", ema_alpha=0.5)
    pose = P.build_pose_sequence(morphs, r, opts)
    m = P.apply_mouth_gain(P.relative_morphs(morphs), 2.0)
    a = P.angles_reference(r) - P.angles_reference(r)[:1]
    torch.testing.assert_close(pose, P.ema_filter(torch.cat([m, a], 1), 0.5))
    assert torch.equal(pose[0], torch.zeros(20, dtype=torch.float64))


@pytest.mark.parametrize("kwargs,key", [({"angle_mode": "xyz"}, "angle_mode"),
                                        ({"smoothing": "kalman"}, "smoothing"),
                                        ({"mouth_gain": float("nan")}, "mouth_gain"),
                                        ({"ema_alpha": 0.0}, "ema_alpha"),
                                        ({"min_cutoff": 0.0}, "min_cutoff")])
def test_pose_options_validation(kwargs, key):
    with pytest.raises(ValueError, match=key):
        P.PoseOptions(**kwargs)


# ----------------------------------------------------------------------------- smoothing
def test_ema_filter_recursion():
    x = torch.tensor([[0.0], [1.0], [1.0], [0.0]])
    out = P.ema_filter(x, 0.5)
    torch.testing.assert_close(out[:, 0], torch.tensor([0.0, 0.5, 0.75, 0.375]))
    torch.testing.assert_close(P.ema_filter(x, 1.0), x)


def test_one_euro_constant_and_lowpass():
    const = torch.full((20, 3), 0.7, dtype=torch.float64)
    torch.testing.assert_close(P.one_euro_filter(const, 25.0), const)
    # beta = 0: a fixed first-order low-pass with alpha = 1 / (1 + tau / dt)
    x = torch.zeros(5, 1, dtype=torch.float64)
    x[1:] = 1.0
    fps, fc = 30.0, 2.0
    alpha = 1.0 / (1.0 + (1.0 / (2 * math.pi * fc)) * fps)
    expected = [0.0]
    for _ in range(4):
        expected.append(alpha * 1.0 + (1 - alpha) * expected[-1])
    out = P.one_euro_filter(x, fps, min_cutoff=fc, beta=0.0)
    torch.testing.assert_close(out[:, 0], torch.tensor(expected, dtype=torch.float64))


def test_one_euro_reduces_jitter_and_beta_reduces_lag():
    t = torch.arange(200, dtype=torch.float64) / 25.0
    gen = torch.Generator().manual_seed(0)
    clean = torch.sin(0.1 * t)[:, None]
    noisy = clean + 0.1 * torch.randn(200, 1, generator=gen, dtype=torch.float64)
    smooth = P.one_euro_filter(noisy, 25.0, min_cutoff=1.0, beta=0.0)
    assert (smooth - clean).abs().mean() < 0.6 * (noisy - clean).abs().mean()
    # a fast ramp: a larger beta follows it more closely
    ramp = (torch.arange(50, dtype=torch.float64) * 2.0)[:, None]
    lag0 = (ramp - P.one_euro_filter(ramp, 25.0, 1.0, beta=0.0)).abs()[-1]
    lag1 = (ramp - P.one_euro_filter(ramp, 25.0, 1.0, beta=1.0)).abs()[-1]
    assert lag1 < 0.2 * lag0


def test_smoothing_is_causal():
    x = torch.rand(30, 20, dtype=torch.float64)
    y = x.clone()
    y[20:] += 5.0
    for opts in (P.PoseOptions(smoothing="ema"), P.PoseOptions(smoothing="one_euro", beta=0.5)):
        a, b = P.smooth_sequence(x, opts), P.smooth_sequence(y, opts)
        torch.testing.assert_close(a[:20], b[:20], rtol=0, atol=0)
        assert not torch.allclose(a[20:], b[20:])


# ----------------------------------------------------------------------------- stateful filter
def _reference_sequence(morphs, r, opts):
    """The batch formulas written out (relative to frame 0, gain, then the smoother)."""
    angles = P.convert_angles(r, opts.angle_mode, opts.relative)
    m = P.relative_morphs(morphs) if opts.relative else morphs
    m = P.apply_mouth_gain(m, opts.mouth_gain)
    return P.smooth_sequence(torch.cat([m, angles.to(m.dtype)], 1), opts)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("opts", [P.PoseOptions(),
                                  P.PoseOptions(relative=True, mouth_gain=1.5, smoothing="ema", ema_alpha=0.3),
                                  P.PoseOptions(angle_mode="euler", relative=True, smoothing="one_euro", beta=0.4),
                                  P.PoseOptions(angle_mode="euler", smoothing="one_euro", fps=30.0)])
def test_pose_filter_any_chunking_is_exactly_the_batch_result(dtype, opts):
    """Live mode (one frame per call) and the batch pipeline (one call) give identical numbers."""
    gen = torch.Generator().manual_seed(3)
    morphs = torch.rand(23, 17, generator=gen, dtype=dtype)
    r = torch.randn(23, 3, generator=gen, dtype=dtype) * 0.3
    batch = P.build_pose_sequence(morphs, r, opts)
    torch.testing.assert_close(batch, _reference_sequence(morphs, r, opts), rtol=0, atol=0)
    for chunk in (1, 4, 23):
        filt = P.PoseFilter(opts)
        parts = [filt.step(morphs[i:i + chunk], r[i:i + chunk]) for i in range(0, 23, chunk)]
        assert torch.equal(torch.cat(parts), batch), chunk
        assert filt.frames_seen == 23


def test_pose_filter_reset_starts_a_new_session():
    opts = P.PoseOptions(relative=True, smoothing="ema", ema_alpha=0.5)
    gen = torch.Generator().manual_seed(1)
    morphs, r = torch.rand(6, 17, generator=gen), torch.randn(6, 3, generator=gen) * 0.2
    filt = P.PoseFilter(opts)
    filt.step(morphs[:3], r[:3])
    second = filt.step(morphs[3:], r[3:])
    assert not torch.equal(second[0], torch.zeros(20))       # still relative to frame 0
    filt.reset()
    fresh = filt.step(morphs[3:], r[3:])
    assert torch.equal(fresh[0], torch.zeros(20))            # frame 3 is the new neutral reference
    assert torch.equal(fresh, P.build_pose_sequence(morphs[3:], r[3:], opts))
    assert filt.step(morphs[:0], r[:0]).shape == (0, 20)
    with pytest.raises(ValueError, match="differ in length"):
        filt.step(morphs[:2], r[:3])


def test_raw_pose_sequence_is_the_unprocessed_mapping():
    morphs = torch.rand(5, 17)
    r = torch.randn(5, 3) * 0.2
    raw = P.raw_pose_sequence(morphs, r)
    assert torch.equal(raw, P.build_pose_sequence(morphs, r))     # default options change nothing
    rel = P.build_pose_sequence(morphs, r, P.PoseOptions(relative=True))
    torch.testing.assert_close(raw[:, 17:] - raw[:1, 17:], rel[:, 17:])
