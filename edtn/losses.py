"""Geometry-aware EDTN losses: a literal reference path and an exact fast path.

For a batch of driving codes (EDTN input x = exp 50 ⊕ jaw 3) and predicted morphs a (B, 17):

* real mesh = FLAME(shape 0, exp x[:, :50], pose [0, 0, 0, x[:, 50:53]]);
* fake mesh = FLAME(shape 0, exp a·T, pose 0), T = the 17×50 morph basis
  (``transform_matrix_08_30.npy``, float64 rounded to float32 as the original does);
* ``vertex``   = mean squared vertex difference over B·5023·3;
* ``landmark`` = weighted L1 of the projected 2-D landmarks (10x, −10y), weights 1 on points
  0–35 and 5 on 36–67, normalised by 2·B·Σw + 1e-8 (the original's normalisation);
* ``eye`` / ``lip`` = mean |d_fake − d_real| of 2-D distances between eyelid / outer-lip pairs;
* ``total`` = Σ weight·term (defaults 100, 1, 1, 1).

``impl='reference'`` runs both FLAME forwards per step. ``impl='fast'`` uses that the fake mesh
has zero shape and pose: every rotation is the identity, LBS is the identity and the contour
landmarks use table row 0, so fake vertices and fake projected landmarks are *affine* in a:

    V(a) = V0 + B a       (B = S_exp Tᵀ, 15069×17),      L(a) = L0 + M a   (M 136×17).

Writing B = Q R (thin QR, Q orthonormal), the per-sample vertex sum of squares is exactly

    ‖V0 + B a − v‖² = ‖R a − Qᵀ(v − V0)‖² + ‖(I − Q Qᵀ)(v − V0)‖²,

which equals aᵀBᵀBa − 2aᵀBᵀ(v − V0) + ‖v − V0‖² but is a sum of non-negative terms (no
cancellation in float32). The real side depends only on the data and is summarised per sample
by a :data:`REAL_TARGET_DIM`-vector (layout below) that can be cached once per dataset
(:mod:`edtn.loss_cache`). The fake eyelid / lip pair differences are affine too, so one
(17 -> 167) affine map gives R·a, the fake landmarks and the fake pair differences per step. All
fake-side constants are computed in float64 by probing FLAME at a = 0 and at the basis rows
(the 17 unit vectors of a), then cast to the working dtype.
"""
from __future__ import annotations

import copy
import os
from dataclasses import asdict, dataclass
from typing import Optional, Union

import numpy as np
import torch
from torch import nn

from deca_edit.flame import orthographic_projection
from infra.assets import resolve_asset

__all__ = [
    "N_MORPHS",
    "N_EXP",
    "N_SHAPE",
    "N_LANDMARKS",
    "LANDMARK_WEIGHT_CONTOUR",
    "LANDMARK_WEIGHT_INNER",
    "EYE_PAIRS",
    "LIP_PAIRS",
    "PROJECTION_SCALE",
    "REAL_TARGET_DIM",
    "REAL_SLICE_PROJ",
    "REAL_SLICE_RESIDUAL",
    "REAL_SLICE_LANDMARKS",
    "REAL_SLICE_EYE",
    "REAL_SLICE_LIP",
    "LOSS_IMPLS",
    "LossWeights",
    "load_basis",
    "landmark_weights68",
    "project_landmarks",
    "weighted_landmark_l1",
    "pair_distances",
    "pair_distance_l1",
    "vertex_mse",
    "weighted_total",
    "GeometryLoss",
]

N_MORPHS = 17
N_EXP = 50
N_SHAPE = 100
N_POSE = 6
N_LANDMARKS = 68

LANDMARK_WEIGHT_CONTOUR = 1.0  # points 0..35 (jaw contour, brows, nose)
LANDMARK_WEIGHT_INNER = 5.0  # points 36..67 (eyes, mouth)
LANDMARK_INNER_START = 36
LANDMARK_NORM_EPS = 1e-8  # the original's "+ 1e-8" in the landmark normalisation

# 0-based iBUG-68 index pairs whose 2-D distance is compared (upper point, lower point).
EYE_PAIRS = ((37, 41), (38, 40), (43, 47), (44, 46))
LIP_PAIRS = ((50, 58), (51, 57), (52, 56))  # outer lip

# EDTN's landmark projection: DECA's orthographic camera [s, tx, ty] = [10, 0, 0], then y flipped.
PROJECTION_SCALE = 10.0
PROJECTION_OFFSET = (0.0, 0.0)
_FLIP_Y = (1.0, -1.0)

# Layout of the per-sample real-side target vector used by the fast path (float32 in the cache):
#   [0:17)    Qᵀ(v_real − V0)                projection of the real vertex offset on the basis
#   [17:153)  real projected landmarks (68, 2) flattened row-major: x0, y0, x1, y1, ...
#   [153:157) real eyelid distances of EYE_PAIRS
#   [157:160) real outer-lip distances of LIP_PAIRS
#   [160]     ‖(I − QQᵀ)(v_real − V0)‖²      squared residual outside the basis span (m²)
# The first 153 entries line up with the fused fake-side map (see GeometryLoss.forward_fast).
N_EYE_PAIRS = len(EYE_PAIRS)
N_LIP_PAIRS = len(LIP_PAIRS)
REAL_SLICE_PROJ = slice(0, N_MORPHS)
REAL_SLICE_LANDMARKS = slice(N_MORPHS, N_MORPHS + 2 * N_LANDMARKS)
REAL_SLICE_EYE = slice(REAL_SLICE_LANDMARKS.stop, REAL_SLICE_LANDMARKS.stop + N_EYE_PAIRS)
REAL_SLICE_LIP = slice(REAL_SLICE_EYE.stop, REAL_SLICE_EYE.stop + N_LIP_PAIRS)
REAL_SLICE_RESIDUAL = slice(REAL_SLICE_LIP.stop, REAL_SLICE_LIP.stop + 1)
REAL_TARGET_DIM = REAL_SLICE_RESIDUAL.stop  # 161
# Pairs whose (x, y) differences close the fused fake-side map (17 -> 17 + 136 + 14 = 167).
_FUSED_PAIRS = EYE_PAIRS + LIP_PAIRS

LOSS_IMPLS = ("fast", "reference")


@dataclass(frozen=True)
class LossWeights:
    """Weights of the four loss terms in ``total`` (the original's argparse defaults)."""

    vertex: float = 100.0
    landmark: float = 1.0
    eye: float = 1.0
    lip: float = 1.0


def load_basis(path: Union[str, os.PathLike, None] = None) -> np.ndarray:
    """The (17, 50) float64 morph basis ``transform_matrix_08_30.npy``.

    Args:
        path: explicit file (from a config); ``None`` looks up the ``transform_matrix`` asset.
    Raises:
        AssetError: file not found. ValueError: wrong shape or non-finite values (names the file).
    """
    file = resolve_asset("transform_matrix", path)
    basis = np.load(file)
    if basis.shape != (N_MORPHS, N_EXP):
        raise ValueError(f"{file}: basis has shape {basis.shape}, expected ({N_MORPHS}, {N_EXP})")
    if not np.isfinite(basis).all():
        raise ValueError(f"{file}: basis contains NaN or inf")
    return basis


def landmark_weights68(dtype: torch.dtype = torch.float32,
                       device: Union[str, torch.device, None] = None) -> torch.Tensor:
    """Per-landmark weights (68,): 1 on points 0–35, 5 on 36–67 (Σ = 196)."""
    weights = torch.full((N_LANDMARKS,), LANDMARK_WEIGHT_CONTOUR, dtype=dtype, device=device)
    weights[LANDMARK_INNER_START:] = LANDMARK_WEIGHT_INNER
    return weights


# ----------------------------------------------------------------------------- pure functions
def project_landmarks(points: torch.Tensor, scale: float = PROJECTION_SCALE,
                      offset: tuple[float, float] = PROJECTION_OFFSET) -> torch.Tensor:
    """EDTN's landmark projection: (B, N, 3) metres -> (B, N, 2) = (s(x+tx), −s(y+ty)).

    DECA's orthographic camera [s, tx, ty] followed by the y flip of ``decode``; z is dropped.
    """
    if points.ndim != 3 or points.shape[-1] != 3:
        raise ValueError(f"points: expected shape (B, N, 3), got {tuple(points.shape)}")
    cam = points.new_tensor((scale, *offset)).expand(points.shape[0], 3)
    projected = orthographic_projection(points, cam)[..., :2]
    return projected * projected.new_tensor(_FLIP_Y)


def weighted_landmark_l1(pred: torch.Tensor, target: torch.Tensor,
                         weights: torch.Tensor) -> torch.Tensor:
    """Σ_b Σ_l w_l (|Δx| + |Δy|) / (2·B·Σw + 1e-8) for landmarks (B, L, 2), weights (L,)."""
    batch = pred.shape[0]
    per_point = (pred - target).abs().sum(dim=-1)  # (B, L)
    return (per_point * weights).sum() / (2 * batch * weights.sum() + LANDMARK_NORM_EPS)


def pair_distances(landmarks: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
    """Euclidean distances (B, P) between landmark pairs; landmarks (B, L, D), pairs (P, 2) long."""
    diff = landmarks[:, pairs[:, 0]] - landmarks[:, pairs[:, 1]]
    return diff.pow(2).sum(dim=-1).sqrt()


def pair_distance_l1(pred: torch.Tensor, target: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
    """mean over (B, P) of |d_pred − d_target| for landmark pairs (the eye / lip terms)."""
    return (pair_distances(pred, pairs) - pair_distances(target, pairs)).abs().mean()


def vertex_mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared difference over every element of (B, V, 3) vertex tensors."""
    return (pred - target).pow(2).mean()


def weighted_total(terms: dict[str, torch.Tensor], weights: LossWeights) -> torch.Tensor:
    """w_vertex·vertex + w_landmark·landmark + w_eye·eye + w_lip·lip."""
    return (weights.vertex * terms["vertex"] + weights.landmark * terms["landmark"]
            + weights.eye * terms["eye"] + weights.lip * terms["lip"])


# ----------------------------------------------------------------------------- the module
class GeometryLoss(nn.Module):
    """EDTN training loss on FLAME geometry (see the module docstring for the terms).

    Args:
        flame: a ``deca_edit.flame.FLAME`` (n_shape 100, n_exp 50); becomes a submodule, so
            ``.to(device)`` / ``.double()`` move it too. Its buffers are non-persistent, so this
            module's ``state_dict`` is empty (nothing licensed lands in checkpoints).
        basis: the (17, 50) morph -> FLAME-expression matrix (numpy or torch, any float dtype);
            rounded to float32 like the original.
        weights: the term weights of ``total``.
        impl: ``'fast'`` (exact affine path, default) or ``'reference'`` (two FLAME forwards).

    ``forward(a, edtn_input53, real_targets=None)`` returns a dict with ``vertex``,
    ``landmark``, ``eye``, ``lip`` and ``total`` (0-dim tensors).
    """

    def __init__(self, flame: nn.Module, basis: Union[np.ndarray, torch.Tensor],
                 weights: LossWeights = LossWeights(), impl: str = "fast") -> None:
        super().__init__()
        if impl not in LOSS_IMPLS:
            raise ValueError(f"loss.impl must be one of {LOSS_IMPLS}, got {impl!r}")
        basis = torch.as_tensor(np.asarray(basis) if not torch.is_tensor(basis) else basis)
        if tuple(basis.shape) != (N_MORPHS, N_EXP):
            raise ValueError(f"basis must have shape ({N_MORPHS}, {N_EXP}), got {tuple(basis.shape)}")
        if not torch.isfinite(basis).all():
            raise ValueError("basis contains NaN or inf")
        if not isinstance(weights, LossWeights):  # a dict / DictConfig from the config
            weights = LossWeights(**dict(weights))
        self.flame = flame
        self.weights = weights
        self.impl = impl
        ref = next(iter(flame.buffers()), None)
        device = ref.device if ref is not None else torch.device("cpu")
        dtype = flame.v_template.dtype
        # The original casts the float64 basis to float32; keep those exact values.
        basis32 = basis.detach().to(torch.float32).cpu()
        self.register_buffer("basis", basis32.to(device, dtype), persistent=False)
        self.register_buffer("landmark_weights", landmark_weights68(dtype, device), persistent=False)
        self.register_buffer("eye_pairs", torch.tensor(EYE_PAIRS, device=device), persistent=False)
        self.register_buffer("lip_pairs", torch.tensor(LIP_PAIRS, device=device), persistent=False)
        affine = _fake_side_affine_maps(flame, basis32.to(torch.float64))
        for name, value in affine.items():
            self.register_buffer(f"_{name}", value.to(device), persistent=False)
        self._n_vertex_coords = int(affine["V0"].numel())
        self._const_cache: dict = {}

    # -- buffers of the fast path in the working dtype, cast once per (dtype, device)
    def _apply(self, *args, **kwargs):  # nn.Module hook behind .to()/.double(): drop stale casts
        self._const_cache = {}
        return super()._apply(*args, **kwargs)

    def _fast_consts(self, dtype: torch.dtype, device: torch.device):
        key = (dtype, device)
        consts = self._const_cache.get(key)
        if consts is None:
            lmk_weights = self.landmark_weights.to(device, dtype)
            consts = (self._W.to(device, dtype).T.contiguous(), self._c.to(device, dtype),
                      lmk_weights.repeat_interleave(2), lmk_weights.sum())
            self._const_cache[key] = consts
        return consts

    def extra_repr(self) -> str:
        return f"impl={self.impl!r}, weights={asdict(self.weights)}"

    # -- the real side
    def real_mesh(self, edtn_input53: torch.Tensor):
        """FLAME(shape 0, exp x[:, :50], pose [0, 0, 0, jaw x[:, 50:]]) for x (B, 53) -> FlameOutput."""
        batch = edtn_input53.shape[0]
        x = edtn_input53.to(self.flame.v_template.dtype)
        shape = x.new_zeros(batch, N_SHAPE)
        pose = torch.cat((x.new_zeros(batch, 3), x[:, N_EXP:]), dim=1)
        return self.flame(shape, x[:, :N_EXP], pose)

    def fake_mesh(self, a: torch.Tensor):
        """FLAME(shape 0, exp a·T, pose 0) for morphs a (B, 17) -> FlameOutput."""
        batch = a.shape[0]
        exp = a.to(self.basis.dtype) @ self.basis
        return self.flame(exp.new_zeros(batch, N_SHAPE), exp, exp.new_zeros(batch, N_POSE))

    @torch.no_grad()
    def real_targets(self, edtn_input53: torch.Tensor) -> torch.Tensor:
        """Per-sample real-side summary (B, :data:`REAL_TARGET_DIM`) in FLAME's dtype.

        Runs FLAME once on the real codes; the basis projection and residual are computed in
        float64 (then cast), so the fast path matches the reference path to float tolerance.
        """
        self._check_input(edtn_input53, "edtn_input53", 53)
        out = self.real_mesh(edtn_input53)
        batch = edtn_input53.shape[0]
        basis_q = self._Q.to(torch.float64)  # no-op unless someone called .float() on us
        offset = out.vertices.reshape(batch, -1).to(torch.float64) - self._V0.to(torch.float64)
        proj = offset @ basis_q  # (B, 17)
        residual = (offset - proj @ basis_q.T).pow(2).sum(dim=1, keepdim=True)
        landmarks = project_landmarks(out.landmarks2d)
        dtype = out.vertices.dtype
        return torch.cat((proj.to(dtype), landmarks.reshape(batch, -1),
                          pair_distances(landmarks, self.eye_pairs),
                          pair_distances(landmarks, self.lip_pairs), residual.to(dtype)), dim=1)

    # -- the loss
    @staticmethod
    def _check_input(tensor: torch.Tensor, name: str, width: int) -> None:
        if not torch.is_tensor(tensor) or tensor.dim() != 2 or tensor.shape[1] != width:
            shape = tuple(tensor.shape) if torch.is_tensor(tensor) else type(tensor).__name__
            raise ValueError(f"{name} must be a tensor of shape (B, {width}), got {shape}")

    def forward(self, a: torch.Tensor, edtn_input53: Optional[torch.Tensor] = None,
                real_targets: Optional[torch.Tensor] = None) -> dict[str, torch.Tensor]:
        """Loss terms for predicted morphs a (B, 17) against driving codes (B, 53).

        Args:
            a: EDTN output in [0, 1], (B, 17).
            edtn_input53: DECA exp ⊕ jaw, (B, 53). Needed by ``reference``, and by ``fast``
                when ``real_targets`` is not given.
            real_targets: optional precomputed :meth:`real_targets` rows (B, 161) (fast only;
                ignored by ``reference``).
        Returns: dict ``vertex``, ``landmark``, ``eye``, ``lip``, ``total`` (0-dim tensors).
        """
        self._check_input(a, "a", N_MORPHS)
        if edtn_input53 is not None:
            self._check_input(edtn_input53, "edtn_input53", 53)
            if edtn_input53.shape[0] != a.shape[0]:
                raise ValueError(f"batch sizes differ: a {tuple(a.shape)}, "
                                 f"edtn_input53 {tuple(edtn_input53.shape)}")
        if self.impl == "reference":
            if edtn_input53 is None:
                raise ValueError("loss.impl=reference needs edtn_input53")
            return self.forward_reference(a, edtn_input53)
        if real_targets is None:
            if edtn_input53 is None:
                raise ValueError("GeometryLoss needs edtn_input53 or real_targets")
            real_targets = self.real_targets(edtn_input53)
        return self.forward_fast(a, real_targets)

    def forward_reference(self, a: torch.Tensor, edtn_input53: torch.Tensor) -> dict[str, torch.Tensor]:
        """The literal path: FLAME forward on the real and fake codes, then the four terms."""
        with torch.no_grad():
            real = self.real_mesh(edtn_input53)
        fake = self.fake_mesh(a)
        real_lmk = project_landmarks(real.landmarks2d)
        fake_lmk = project_landmarks(fake.landmarks2d)
        terms = {
            "vertex": vertex_mse(fake.vertices, real.vertices),
            "landmark": weighted_landmark_l1(fake_lmk, real_lmk,
                                             self.landmark_weights.to(fake_lmk.dtype)),
            "eye": pair_distance_l1(fake_lmk, real_lmk, self.eye_pairs),
            "lip": pair_distance_l1(fake_lmk, real_lmk, self.lip_pairs),
        }
        terms["total"] = weighted_total(terms, self.weights)
        return terms

    def forward_fast(self, a: torch.Tensor, real_targets: torch.Tensor) -> dict[str, torch.Tensor]:
        """The exact affine path from real targets (B, 161) (see the layout constants); computes
        in a's dtype and touches no vertex."""
        self._check_input(real_targets, "real_targets", REAL_TARGET_DIM)
        if real_targets.shape[0] != a.shape[0]:
            raise ValueError(f"batch sizes differ: a {tuple(a.shape)}, "
                             f"real_targets {tuple(real_targets.shape)}")
        batch = a.shape[0]
        weight_t, offset, lmk_weights2, lmk_weight_sum = self._fast_consts(a.dtype, a.device)
        real_targets = real_targets.to(a.device, a.dtype)
        # One affine map gives R·a (17), the fake landmarks (136) and the fake pair differences (14).
        fused = torch.addmm(offset, a, weight_t)  # (B, 167)
        n_head = REAL_SLICE_LANDMARKS.stop
        diff = fused[:, :n_head] - real_targets[:, :n_head]
        vertex_ss = diff[:, REAL_SLICE_PROJ].pow(2).sum() + real_targets[:, REAL_SLICE_RESIDUAL].sum()
        landmark = (diff[:, REAL_SLICE_LANDMARKS].abs() @ lmk_weights2).sum() / (
            2 * batch * lmk_weight_sum + LANDMARK_NORM_EPS)
        fake_dist = fused[:, n_head:].reshape(batch, -1, 2).pow(2).sum(dim=-1).sqrt()  # (B, 7)
        dist_err = (fake_dist - real_targets[:, REAL_SLICE_EYE.start:REAL_SLICE_LIP.stop]).abs()
        terms = {
            "vertex": vertex_ss / (batch * self._n_vertex_coords),
            "landmark": landmark,
            "eye": dist_err[:, :N_EYE_PAIRS].mean(),
            "lip": dist_err[:, N_EYE_PAIRS:].mean(),
        }
        terms["total"] = weighted_total(terms, self.weights)
        return terms


# ----------------------------------------------------------------------------- precomputation
@torch.no_grad()
def _fake_side_affine_maps(flame: nn.Module, basis64: torch.Tensor) -> dict[str, torch.Tensor]:
    """Affine maps of the fake mesh in a, computed in float64 on a copy of ``flame``.

    FLAME is probed at a = 0 and at the 17 unit vectors (shape 0, pose 0); the fake mesh is
    exactly affine in a there, so differences give the linear parts.
    Returns float64 tensors: V0 (15069,), Q (15069, 17) (B = QR), and the fused map
    W (167, 17), c (167,): rows [0:17) = R (c = 0), [17:153) = projected landmarks (row-major
    (68, 2)), [153:167) = (x, y) differences of EYE_PAIRS then LIP_PAIRS.
    """
    flame64 = copy.deepcopy(flame).to(torch.float64)
    device = flame64.v_template.device
    exp = torch.cat((basis64.new_zeros(1, N_EXP), basis64), dim=0).to(device)  # (18, 50)
    n_probe = exp.shape[0]
    out = flame64(exp.new_zeros(n_probe, N_SHAPE), exp, exp.new_zeros(n_probe, N_POSE))
    verts = out.vertices.reshape(n_probe, -1)
    lmk = project_landmarks(out.landmarks2d).reshape(n_probe, -1)
    v0, lin_v = verts[0], (verts[1:] - verts[0]).T  # (15069,), (15069, 17)
    l0, lin_l = lmk[0], (lmk[1:] - lmk[0]).T  # (136,), (136, 17)
    q, r = torch.linalg.qr(lin_v, mode="reduced")
    pairs = torch.tensor(_FUSED_PAIRS, device=device)
    coords = torch.stack((2 * pairs, 2 * pairs + 1), dim=1)  # (P, xy, 2) rows of the flat landmarks
    first, second = coords[..., 0].reshape(-1), coords[..., 1].reshape(-1)  # (2P,) x0,y0,x1,y1..
    weight = torch.cat((r, lin_l, lin_l[first] - lin_l[second]), dim=0)
    offset = torch.cat((torch.zeros_like(r[:, 0]), l0, l0[first] - l0[second]))
    return {"V0": v0.clone(), "Q": q.contiguous(), "W": weight.contiguous(), "c": offset}
