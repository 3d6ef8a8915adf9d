"""Anime pose assembly and post-processing at inference: angles, mouth gain, relative mode, smoothing.

The anime generator is driven by a 20-dim pose per frame: 17 morphs in [0,1] (EDTN output, order of
AnimeCeleb's ``combined_pose.csv``) followed by 3 head angles in degrees. Everything here is a pure
function on tensors ``(T, ...)`` or ``(B, ...)``; float32 and float64 are kept as given, devices too.

Angle conversion (``angle_mode``) from DECA's global head rotation ``r`` (axis-angle, radians,
FLAME axes x, y, z):

* ``reference`` (original EDTN, default; needed to reproduce published checkpoints): the
  axis-angle components are used as if they were Euler angles, permuted to slots
  ``(17, 18, 19) = (r_x, r_z, r_y)`` and converted to degrees.
* ``euler``: the proper decomposition. ``R = exp([r]x)`` is written as the *intrinsic* product
  ``R = Rx(a) · Rz(b) · Ry(c)`` (scipy's ``'XZY'``) and ``(a, b, c)`` in degrees go to slots
  ``(17, 18, 19)`` -- the same axis per slot as ``reference``. For a small rotation
  ``R ≈ I + [r]x``, so ``(a, b, c) = (r_x, r_z, r_y) + O(|r|²)``: both modes agree to first order.
  At the gimbal lock ``|b| = 90°`` the split between ``a`` and ``c`` is not unique; we set ``c = 0``.

Relative mode (``relative=True``): the first driving frame is taken as the performer's neutral
face, which is mapped onto the source character's neutral pose (all morphs 0, angles 0 -- the
AnimeCeleb ``basis`` images are neutral, frontal):

* morphs: ``m'_t = clip(m_t − m_0, 0, 1)`` (a morph only fires when it moves beyond its level in the
  first frame, e.g. narrow eyes of the performer do not half-close the character's eyes);
* angles, ``reference``: ``θ'_t = θ_t − θ_0`` (component-wise, consistent with treating the
  components as Euler angles); ``euler``: the rotation relative to the first frame,
  ``R'_t = R_0ᵀ · R_t``, then decomposed as above.

Order of operations in :func:`build_pose_sequence`: angle conversion (with relative rotation) →
relative morphs → mouth gain (morphs 12–16, clipped to [0,1]) → temporal smoothing of all 20
columns.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch

__all__ = [
    "NUM_MORPHS",
    "NUM_ANGLES",
    "POSE_DIM",
    "MOUTH_SLICE",
    "REFERENCE_ANGLE_ORDER",
    "POSE_COLUMNS",
    "ANGLE_MODES",
    "SMOOTHING_METHODS",
    "PoseOptions",
    "assemble_pose",
    "axis_angle_to_matrix",
    "matrix_to_euler_xzy",
    "angles_reference",
    "angles_euler",
    "convert_angles",
    "apply_mouth_gain",
    "relative_morphs",
    "ema_filter",
    "one_euro_filter",
    "smooth_sequence",
    "build_pose_sequence",
    "pose_table",
]

NUM_MORPHS = 17
NUM_ANGLES = 3
POSE_DIM = NUM_MORPHS + NUM_ANGLES
MOUTH_SLICE = slice(12, 17)  # the 5 mouth morphs (AnimeCeleb order: 6 eye, 6 eyebrow, 5 mouth)
REFERENCE_ANGLE_ORDER = (0, 2, 1)  # pose slots 17, 18, 19 take the DECA x, z, y components
POSE_COLUMNS = tuple([f"morph_{i:02d}" for i in range(NUM_MORPHS)]
                     + [f"angle_{i}" for i in range(NUM_ANGLES)])
ANGLE_MODES = ("reference", "euler")
SMOOTHING_METHODS = ("none", "ema", "one_euro")

_RAD_TO_DEG = 180.0 / math.pi
_SMALL_ANGLE = 1e-6       # below this |r| (rad) Rodrigues uses its Taylor expansion
_GIMBAL_EPS = 1e-7        # |cos b| below this counts as gimbal lock


@dataclass(frozen=True)
class PoseOptions:
    """Post-processing applied to the EDTN morphs and DECA head rotations.

    Attributes:
        angle_mode: ``reference`` (original) or ``euler``.
        mouth_gain: factor on morphs 12–16 (1.0 = original behaviour), result clipped to [0,1].
        relative: make morphs and angles relative to the first frame (see module docstring).
        smoothing: ``none``, ``ema`` or ``one_euro``.
        ema_alpha: EMA weight of the new sample, in (0,1]; 1 = no smoothing.
        min_cutoff: one-euro minimum cutoff frequency (Hz).
        beta: one-euro speed coefficient (per unit of the column per second; angles are degrees).
        d_cutoff: one-euro cutoff for the derivative (Hz).
        fps: frame rate of the sequence (Hz), used by the one-euro filter.
    """

    angle_mode: str = "reference"
    mouth_gain: float = 1.0
    relative: bool = False
    smoothing: str = "none"
    ema_alpha: float = 0.5
    min_cutoff: float = 1.0
    beta: float = 0.0
    d_cutoff: float = 1.0
    fps: float = 25.0

    def __post_init__(self):
        if self.angle_mode not in ANGLE_MODES:
            raise ValueError(f"angle_mode must be one of {ANGLE_MODES}, got {self.angle_mode!r}")
        if self.smoothing not in SMOOTHING_METHODS:
            raise ValueError(f"smoothing must be one of {SMOOTHING_METHODS}, got {self.smoothing!r}")
        if not math.isfinite(self.mouth_gain) or self.mouth_gain < 0:
            raise ValueError(f"mouth_gain must be a finite number >= 0, got {self.mouth_gain}")
        if not 0 < self.ema_alpha <= 1:
            raise ValueError(f"smoothing ema_alpha must be in (0, 1], got {self.ema_alpha}")
        for key in ("min_cutoff", "d_cutoff", "fps"):
            if not getattr(self, key) > 0:
                raise ValueError(f"smoothing {key} must be > 0, got {getattr(self, key)}")
        if self.beta < 0:
            raise ValueError(f"smoothing beta must be >= 0, got {self.beta}")


def _check(x: torch.Tensor, name: str, last: int) -> None:
    if x.ndim != 2 or x.shape[-1] != last:
        raise ValueError(f"{name} must have shape (B, {last}), got {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or inf")


def assemble_pose(morphs: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Concatenate morphs (B,17) in [0,1] and angles (B,3) in degrees into the pose (B,20)."""
    _check(morphs, "morphs", NUM_MORPHS)
    _check(angles, "angles", NUM_ANGLES)
    if morphs.shape[0] != angles.shape[0]:
        raise ValueError(f"morphs ({morphs.shape[0]}) and angles ({angles.shape[0]}) differ in batch size")
    return torch.cat([morphs, angles.to(morphs.dtype)], dim=1)


def axis_angle_to_matrix(r: torch.Tensor) -> torch.Tensor:
    """Rodrigues: axis-angle (B,3) in radians → rotation matrices (B,3,3), same dtype/device."""
    _check(r, "axis-angle", 3)
    theta2 = (r * r).sum(-1)
    theta = theta2.sqrt()
    small = theta < _SMALL_ANGLE
    safe = torch.where(small, torch.ones_like(theta), theta)
    # sin(t)/t and (1-cos t)/t² with their Taylor series near 0
    a = torch.where(small, 1 - theta2 / 6, torch.sin(safe) / safe)
    b = torch.where(small, 0.5 - theta2 / 24, (1 - torch.cos(safe)) / (safe * safe))
    x, y, z = r.unbind(-1)
    zero = torch.zeros_like(x)
    k = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], -1).view(-1, 3, 3)
    eye = torch.eye(3, dtype=r.dtype, device=r.device).expand_as(k)
    return eye + a[:, None, None] * k + b[:, None, None] * (k @ k)


def matrix_to_euler_xzy(rot: torch.Tensor) -> torch.Tensor:
    """Rotation matrices (B,3,3) → intrinsic angles (a, b, c) (B,3), radians, R = Rx(a)·Rz(b)·Ry(c).

    ``b`` is in [-π/2, π/2]; at the gimbal lock ``c`` is set to 0.
    """
    if rot.ndim != 3 or rot.shape[1:] != (3, 3):
        raise ValueError(f"rotation matrices must have shape (B, 3, 3), got {tuple(rot.shape)}")
    # R = [[cb cc, -sb, cb sc], [ca sb cc + sa sc, ca cb, ca sb sc - sa cc],
    #      [sa sb cc - ca sc, sa cb, sa sb sc + ca cc]]
    sb = (-rot[:, 0, 1]).clamp(-1.0, 1.0)
    b = torch.asin(sb)
    cb = torch.sqrt(rot[:, 0, 0] ** 2 + rot[:, 0, 2] ** 2)
    lock = cb < _GIMBAL_EPS
    a_free = torch.atan2(rot[:, 2, 1], rot[:, 1, 1])
    c_free = torch.atan2(rot[:, 0, 2], rot[:, 0, 0])
    # with c = 0 and |sb| = 1: R[1,0] = ca·sb, R[2,0] = sa·sb
    sign = torch.where(sb >= 0, torch.ones_like(sb), -torch.ones_like(sb))
    a_lock = torch.atan2(rot[:, 2, 0] * sign, rot[:, 1, 0] * sign)
    a = torch.where(lock, a_lock, a_free)
    c = torch.where(lock, torch.zeros_like(c_free), c_free)
    return torch.stack([a, b, c], -1)


def angles_reference(global_pose: torch.Tensor) -> torch.Tensor:
    """Original conversion: DECA global axis-angle (B,3) rad → ``r[:, [0,2,1]]·180/π`` (B,3) deg."""
    _check(global_pose, "global_pose", 3)
    # same operation order as the original (``x * 180 / np.pi``) so float32 results match bit for bit
    return global_pose[:, list(REFERENCE_ANGLE_ORDER)] * 180.0 / math.pi


def angles_euler(global_pose: torch.Tensor, reference_rotation: Optional[torch.Tensor] = None
                 ) -> torch.Tensor:
    """Proper conversion: axis-angle (B,3) rad → intrinsic X-Z-Y Euler angles (B,3) in degrees.

    Args:
        global_pose: DECA global head rotation, axis-angle, radians.
        reference_rotation: optional (3,3) rotation R_0; when given, the angles of ``R_0ᵀ·R_t``
            (rotation relative to R_0) are returned.
    Returns:
        (B,3) degrees in slot order (x, z, y) = pose slots 17, 18, 19.
    """
    rot = axis_angle_to_matrix(global_pose)
    if reference_rotation is not None:
        rot = reference_rotation.to(rot).transpose(-1, -2) @ rot
    return matrix_to_euler_xzy(rot) * _RAD_TO_DEG


def convert_angles(global_pose: torch.Tensor, mode: str = "reference", relative: bool = False
                   ) -> torch.Tensor:
    """DECA global rotations (T,3) rad → anime angles (T,3) deg, optionally relative to frame 0."""
    if mode == "reference":
        angles = angles_reference(global_pose)
        return angles - angles[:1] if relative and len(angles) else angles
    if mode == "euler":
        ref = axis_angle_to_matrix(global_pose[:1])[0] if relative and len(global_pose) else None
        return angles_euler(global_pose, ref)
    raise ValueError(f"angle_mode must be one of {ANGLE_MODES}, got {mode!r}")


def apply_mouth_gain(morphs: torch.Tensor, gain: float = 1.0) -> torch.Tensor:
    """Scale morphs 12–16 (mouth) by ``gain`` and clip them to [0,1]; returns a new (B,17) tensor.

    ``gain = 1`` reproduces the original (its ``*1.5`` line was a no-op on the batch axis).
    """
    _check(morphs, "morphs", NUM_MORPHS)
    out = morphs.clone()
    out[:, MOUTH_SLICE] = (out[:, MOUTH_SLICE] * gain).clamp(0.0, 1.0)
    return out


def relative_morphs(morphs: torch.Tensor) -> torch.Tensor:
    """``clip(m_t − m_0, 0, 1)`` for a sequence (T,17): the first frame maps to the neutral pose."""
    _check(morphs, "morphs", NUM_MORPHS)
    if len(morphs) == 0:
        return morphs.clone()
    return (morphs - morphs[:1]).clamp(0.0, 1.0)


def ema_filter(x: torch.Tensor, alpha: float) -> torch.Tensor:
    """Causal exponential moving average over time: y_0 = x_0, y_t = α·x_t + (1−α)·y_{t−1}.

    Args:
        x: (T, D) sequence. alpha: weight of the new sample in (0,1].
    """
    if x.ndim != 2:
        raise ValueError(f"sequence must have shape (T, D), got {tuple(x.shape)}")
    out = x.clone()
    for t in range(1, len(x)):
        out[t] = alpha * x[t] + (1 - alpha) * out[t - 1]
    return out


def _lowpass_alpha(cutoff: torch.Tensor | float, dt: float):
    tau = 1.0 / (2 * math.pi * cutoff)
    return 1.0 / (1.0 + tau / dt)


def one_euro_filter(x: torch.Tensor, fps: float, min_cutoff: float = 1.0, beta: float = 0.0,
                    d_cutoff: float = 1.0) -> torch.Tensor:
    """Causal one-euro filter (Casiez et al., CHI 2012), independently on every column.

    A first-order low-pass whose cutoff grows with the (low-passed) speed of the signal:
    ``cutoff = min_cutoff + beta·|dx/dt|``; slow motion is smoothed strongly (little jitter), fast
    motion passes with little lag. ``beta = 0`` gives a fixed low-pass at ``min_cutoff``.

    Args:
        x: (T, D) sequence sampled at ``fps`` Hz.
        fps: sampling rate (Hz). min_cutoff, d_cutoff: Hz. beta: per unit of x per second.
    Returns:
        (T, D) filtered sequence (y_0 = x_0).
    """
    if x.ndim != 2:
        raise ValueError(f"sequence must have shape (T, D), got {tuple(x.shape)}")
    out = x.clone()
    if len(x) == 0:
        return out
    dt = 1.0 / fps
    a_d = _lowpass_alpha(d_cutoff, dt)
    deriv = torch.zeros_like(x[0])
    for t in range(1, len(x)):
        raw_deriv = (x[t] - out[t - 1]) / dt
        deriv = a_d * raw_deriv + (1 - a_d) * deriv
        cutoff = min_cutoff + beta * deriv.abs()
        a = _lowpass_alpha(cutoff, dt)
        out[t] = a * x[t] + (1 - a) * out[t - 1]
    return out


def smooth_sequence(x: torch.Tensor, options: PoseOptions) -> torch.Tensor:
    """Apply ``options.smoothing`` (none / ema / one_euro) to a (T, D) sequence."""
    if options.smoothing == "none":
        return x.clone()
    if options.smoothing == "ema":
        return ema_filter(x, options.ema_alpha)
    return one_euro_filter(x, options.fps, options.min_cutoff, options.beta, options.d_cutoff)


def build_pose_sequence(morphs: torch.Tensor, global_pose: torch.Tensor,
                        options: PoseOptions = PoseOptions()) -> torch.Tensor:
    """EDTN morphs (T,17) + DECA global rotations (T,3, rad) → anime poses (T,20).

    Steps: angle conversion (``angle_mode``, relative rotation when ``relative``), relative morphs,
    mouth gain + clip, then temporal smoothing of all 20 columns. With the default options this is
    exactly the original: ``cat(morphs, r[:, [0,2,1]]·180/π)``.
    """
    _check(morphs, "morphs", NUM_MORPHS)
    _check(global_pose, "global_pose", 3)
    angles = convert_angles(global_pose, options.angle_mode, options.relative)
    if options.relative:
        morphs = relative_morphs(morphs)
    morphs = apply_mouth_gain(morphs, options.mouth_gain) if options.mouth_gain != 1.0 else morphs
    pose = assemble_pose(morphs, angles)
    return smooth_sequence(pose, options)


def pose_table(poses: torch.Tensor | np.ndarray, frames: Optional[Sequence[int]] = None):
    """Poses (T,20) → pandas DataFrame with a ``frame`` column and ``morph_00…angle_2`` columns."""
    import pandas as pd

    arr = poses.detach().cpu().numpy() if isinstance(poses, torch.Tensor) else np.asarray(poses)
    if arr.ndim != 2 or arr.shape[1] != POSE_DIM:
        raise ValueError(f"poses must have shape (T, {POSE_DIM}), got {arr.shape}")
    frames = list(range(len(arr))) if frames is None else list(frames)
    if len(frames) != len(arr):
        raise ValueError(f"{len(frames)} frame indices for {len(arr)} poses")
    table = pd.DataFrame(arr, columns=list(POSE_COLUMNS))
    table.insert(0, "frame", np.asarray(frames, dtype=np.int64))
    return table
