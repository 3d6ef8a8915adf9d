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

Order of operations (:class:`PoseFilter`): angle conversion (with relative rotation) → relative
morphs → mouth gain (morphs 12–16, clipped to [0,1]) → temporal smoothing of all 20 columns.

Every step is causal, so one implementation serves both uses: :class:`PoseFilter` keeps the state
(the relative-mode first frame, the smoothing filter's memory) and takes consecutive frames in
chunks of any length -- one frame at a time for a live webcam (``reset()`` per session), the whole
sequence at once for a video (:func:`build_pose_sequence`). Both give identical numbers.
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
    "PoseFilter",
    "build_pose_sequence",
    "raw_pose_sequence",
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


class _EmaStep:
    """One step of the causal EMA: y_0 = x_0, y_t = α·x_t + (1−α)·y_{t−1}."""

    def __init__(self, alpha: float):
        self.alpha = alpha
        self.prev: Optional[torch.Tensor] = None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        y = x.clone() if self.prev is None else self.alpha * x + (1 - self.alpha) * self.prev
        self.prev = y
        return y


class _OneEuroStep:
    """One step of the one-euro filter (see :func:`one_euro_filter`); y_0 = x_0."""

    def __init__(self, fps: float, min_cutoff: float, beta: float, d_cutoff: float):
        self.dt = 1.0 / fps
        self.min_cutoff, self.beta = min_cutoff, beta
        self.a_d = _lowpass_alpha(d_cutoff, self.dt)
        self.prev: Optional[torch.Tensor] = None
        self.deriv: Optional[torch.Tensor] = None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.prev is None:
            self.prev, self.deriv = x.clone(), torch.zeros_like(x)
            return self.prev
        raw_deriv = (x - self.prev) / self.dt
        self.deriv = self.a_d * raw_deriv + (1 - self.a_d) * self.deriv
        cutoff = self.min_cutoff + self.beta * self.deriv.abs()
        a = _lowpass_alpha(cutoff, self.dt)
        self.prev = a * x + (1 - a) * self.prev
        return self.prev


def _run_steps(x: torch.Tensor, step) -> torch.Tensor:
    """Apply a stateful per-row ``step`` along the time axis of a (T, D) sequence."""
    if x.ndim != 2:
        raise ValueError(f"sequence must have shape (T, D), got {tuple(x.shape)}")
    out = x.clone()
    for t in range(len(x)):
        out[t] = step(x[t])
    return out


def _smoother(options: PoseOptions):
    """A fresh per-row smoothing step for ``options.smoothing`` (``None`` for ``none``)."""
    if options.smoothing == "ema":
        return _EmaStep(options.ema_alpha)
    if options.smoothing == "one_euro":
        return _OneEuroStep(options.fps, options.min_cutoff, options.beta, options.d_cutoff)
    return None


def ema_filter(x: torch.Tensor, alpha: float) -> torch.Tensor:
    """Causal exponential moving average over time: y_0 = x_0, y_t = α·x_t + (1−α)·y_{t−1}.

    Args:
        x: (T, D) sequence. alpha: weight of the new sample in (0,1].
    """
    return _run_steps(x, _EmaStep(alpha))


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
    return _run_steps(x, _OneEuroStep(fps, min_cutoff, beta, d_cutoff))


def smooth_sequence(x: torch.Tensor, options: PoseOptions) -> torch.Tensor:
    """Apply ``options.smoothing`` (none / ema / one_euro) to a (T, D) sequence."""
    step = _smoother(options)
    return x.clone() if step is None else _run_steps(x, step)


class PoseFilter:
    """Causal, stateful pose post-processing for one driving session (see the module docstring).

    ``step(morphs, global_pose)`` takes the next B consecutive frames -- EDTN morphs (B,17) and
    DECA global rotations (B,3, rad) -- and returns their anime poses (B,20). The first frame seen
    after construction or :meth:`reset` is the relative-mode reference; the smoothing filter
    carries over between calls. Feeding a sequence in any chunking gives the same poses as
    :func:`build_pose_sequence` on the whole of it.
    """

    def __init__(self, options: PoseOptions = PoseOptions()):
        self.options = options
        self.reset()

    def reset(self) -> None:
        """Forget the session: the next frame becomes the reference, the smoother starts afresh."""
        self._morph0: Optional[torch.Tensor] = None      # (1,17) first morphs (relative mode)
        self._angle0: Optional[torch.Tensor] = None      # (1,3) first angles (relative, reference)
        self._rot0: Optional[torch.Tensor] = None        # (3,3) first rotation (relative, euler)
        self._smooth = _smoother(self.options)
        self.frames_seen = 0

    def _angles(self, global_pose: torch.Tensor) -> torch.Tensor:
        opts = self.options
        if opts.angle_mode == "reference":
            angles = angles_reference(global_pose)
            if opts.relative:
                if self._angle0 is None:
                    self._angle0 = angles[:1].clone()
                angles = angles - self._angle0
            return angles
        if opts.relative and self._rot0 is None:
            self._rot0 = axis_angle_to_matrix(global_pose[:1])[0]
        return angles_euler(global_pose, self._rot0 if opts.relative else None)

    def step(self, morphs: torch.Tensor, global_pose: torch.Tensor) -> torch.Tensor:
        """Poses (B,20) of the next B frames (B may be 0)."""
        _check(morphs, "morphs", NUM_MORPHS)
        _check(global_pose, "global_pose", 3)
        if len(morphs) != len(global_pose):
            raise ValueError(f"morphs ({len(morphs)}) and global_pose ({len(global_pose)}) differ in length")
        if len(morphs) == 0:
            return morphs.new_zeros((0, POSE_DIM))
        angles = self._angles(global_pose)
        if self.options.relative:
            if self._morph0 is None:
                self._morph0 = morphs[:1].clone()
            morphs = (morphs - self._morph0).clamp(0.0, 1.0)
        if self.options.mouth_gain != 1.0:
            morphs = apply_mouth_gain(morphs, self.options.mouth_gain)
        pose = assemble_pose(morphs, angles)
        self.frames_seen += len(pose)
        return pose.clone() if self._smooth is None else _run_steps(pose, self._smooth)


def build_pose_sequence(morphs: torch.Tensor, global_pose: torch.Tensor,
                        options: PoseOptions = PoseOptions()) -> torch.Tensor:
    """EDTN morphs (T,17) + DECA global rotations (T,3, rad) → anime poses (T,20).

    A fresh :class:`PoseFilter` run over the whole sequence: angle conversion (``angle_mode``,
    relative rotation when ``relative``), relative morphs, mouth gain + clip, then temporal
    smoothing of all 20 columns. With the default options this is exactly the original:
    ``cat(morphs, r[:, [0,2,1]]·180/π)``.
    """
    return PoseFilter(options).step(morphs, global_pose)


def raw_pose_sequence(morphs: torch.Tensor, global_pose: torch.Tensor, angle_mode: str = "reference"
                      ) -> torch.Tensor:
    """The mapping's raw output as a pose (T,20): morphs unchanged, absolute angles in ``angle_mode``
    (no relative mode, gain or smoothing). What pose plots draw as the thin line."""
    return assemble_pose(morphs, convert_angles(global_pose, angle_mode, relative=False))


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
