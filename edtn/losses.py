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
(the 17 unit vectors of a), then cast to the working dtype. The four terms run as one autograd
node with a hand-written backward (:class:`FusedFastLoss`): a (B, 17) × (17, 167) product forward
and a (B, 167) × (167, 17) product backward, plus elementwise work.

The real side is exact and cheap too. With shape 0 and only the jaw rotated (R = R_jaw,
E = R − I, e = vec(E)), LBS reduces to v = s ⊙ (T + S ψ + P e) + w ⊙ (E (v_posed − J_jaw)), with
s the skinning-weight row sums and w the jaw weights: linear in 555 monomials of (ψ, e) (1, ψ, e,
e⊗ψ, e_a e_b). So :meth:`GeometryLoss.real_targets` is one (B, 555) × (555, ≈700) float64 product
(:func:`_real_side_polynomial` derives it), no FLAME forward; ``real_targets(x, impl='flame')``
keeps the FLAME forward for checking.
"""
from __future__ import annotations

import copy
import os
from dataclasses import asdict, dataclass
from typing import NamedTuple, Optional, Union

import numpy as np
import torch
from torch import nn

from deca_edit.flame import FLAME, batch_rodrigues, orthographic_projection
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
    "LOSS_TERMS",
    "REAL_TARGET_IMPLS",
    "REAL_FEATURE_DIM",
    "LossWeights",
    "load_basis",
    "landmark_weights68",
    "project_landmarks",
    "weighted_landmark_l1",
    "pair_distances",
    "pair_distance_l1",
    "vertex_mse",
    "weighted_total",
    "real_side_features",
    "fast_loss_terms",
    "FastConsts",
    "FusedFastLoss",
    "GeometryLoss",
    "build_geometry_loss",
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
LOSS_TERMS = ("vertex", "landmark", "eye", "lip", "total")
# How GeometryLoss.real_targets computes the real side: the exact polynomial (default) or FLAME.
REAL_TARGET_IMPLS = ("fast", "flame")

# The real mesh has shape 0 and only the jaw rotated (FLAME joints: root, neck, jaw, eyes).
JAW_JOINT = 2
ROT_ENTRIES = 9  # entries of R_jaw − I, row-major (FLAME's pose feature order)
# Monomials the real side is linear in (see _real_side_polynomial): 1, ψ, e, e⊗ψ, e_a e_b (a <= b)
_FEATURE_AFFINE = 1 + N_EXP + ROT_ENTRIES                                   # z = (1, ψ, e): 60
_FEATURE_E_PSI = slice(_FEATURE_AFFINE, _FEATURE_AFFINE + ROT_ENTRIES * N_EXP)  # 450
_N_E_PAIRS = ROT_ENTRIES * (ROT_ENTRIES + 1) // 2                            # 45
REAL_FEATURE_DIM = _FEATURE_E_PSI.stop + _N_E_PAIRS                          # 555
# Eigenvalues of the residual's Gram below this fraction of the largest are rounding noise.
RESIDUAL_RANK_RTOL = 1e-14


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


def _e_pair_index(device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(a, b) with a <= b over the 9 entries of R − I, row-major upper triangle (45 pairs)."""
    rows, cols = torch.triu_indices(ROT_ENTRIES, ROT_ENTRIES, device=device)
    return rows, cols


def real_side_features(exp: torch.Tensor, jaw_rot: torch.Tensor) -> torch.Tensor:
    """Monomials φ (B, :data:`REAL_FEATURE_DIM` = 555), float64, that the real side is linear in.

    φ = [1, ψ (50), e (9), e_a ψ_m (450, index 50 a + m), e_a e_b (45, a <= b, row-major upper
    triangle)] with ψ = ``exp`` (B, 50) and e = vec(R_jaw − I) row-major from ``jaw_rot``
    (B, 3, 3). See :func:`_real_side_polynomial` for why these suffice.
    """
    batch = exp.shape[0]
    phi = torch.empty(batch, REAL_FEATURE_DIM, dtype=torch.float64, device=exp.device)
    phi[:, 0] = 1.0
    psi = phi[:, 1:1 + N_EXP]
    psi.copy_(exp)
    e = phi[:, 1 + N_EXP:_FEATURE_AFFINE]
    e.copy_(jaw_rot.reshape(batch, ROT_ENTRIES))
    e[:, ::4] -= 1.0  # the diagonal of R − I
    torch.mul(e.unsqueeze(2), psi.unsqueeze(1), out=phi[:, _FEATURE_E_PSI].view(batch, ROT_ENTRIES, N_EXP))
    rows, cols = _e_pair_index(exp.device)
    torch.mul(e[:, rows], e[:, cols], out=phi[:, _FEATURE_E_PSI.stop:])
    return phi


def fast_loss_terms(a: torch.Tensor, real_targets: torch.Tensor, weight_t: torch.Tensor,
                    offset: torch.Tensor, n_vertex_coords: int,
                    weights: LossWeights) -> dict[str, torch.Tensor]:
    """The fast loss written with plain autograd ops (what :class:`FusedFastLoss` computes).

    Args:
        a: morphs (B, 17). real_targets: (B, 161) rows of :meth:`GeometryLoss.real_targets`.
        weight_t, offset: the fused fake-side map (17, 167) and (167,): columns R·a (17), the
            projected fake landmarks (136) and the (x, y) differences of the eye then lip pairs (14).
        n_vertex_coords: 3·V (the vertex MSE denominator per sample).
    Returns: dict ``vertex``, ``landmark``, ``eye``, ``lip``, ``total`` (0-dim tensors).
    """
    batch = a.shape[0]
    lmk_weights = landmark_weights68(a.dtype, a.device)
    fused = torch.addmm(offset, a, weight_t)  # (B, 167)
    n_head = REAL_SLICE_LANDMARKS.stop
    diff = fused[:, :n_head] - real_targets[:, :n_head]
    vertex_ss = diff[:, REAL_SLICE_PROJ].pow(2).sum() + real_targets[:, REAL_SLICE_RESIDUAL].sum()
    landmark = (diff[:, REAL_SLICE_LANDMARKS].abs() @ lmk_weights.repeat_interleave(2)).sum() / (
        2 * batch * lmk_weights.sum() + LANDMARK_NORM_EPS)
    fake_dist = fused[:, n_head:].reshape(batch, -1, 2).pow(2).sum(dim=-1).sqrt()  # (B, 7)
    dist_err = (fake_dist - real_targets[:, REAL_SLICE_EYE.start:REAL_SLICE_LIP.stop]).abs()
    terms = {
        "vertex": vertex_ss / (batch * n_vertex_coords),
        "landmark": landmark,
        "eye": dist_err[:, :N_EYE_PAIRS].mean(),
        "lip": dist_err[:, N_EYE_PAIRS:].mean(),
    }
    terms["total"] = weighted_total(terms, weights)
    return terms


class FastConsts(NamedTuple):
    """Constants of :class:`FusedFastLoss` in the working dtype / device (built once per
    (dtype, device, weights) by :meth:`GeometryLoss._fast_consts`).

    weight_t (17, 167), offset (167,): the fused fake-side map f = a Wᵀ + c; weight (167, 17) = W;
    lmk_weights153 (153,): 0 on the 17 projection columns, then w_l twice per landmark (x, y);
    lmk_weight_sum: Σw (196); term_cols (167,) long: the term (0 vertex, 1 landmark, 2 eye, 3 lip)
    of each column of f; weight_total (167, 17): W with each row scaled by its term's weight in
    ``total``; n_vertex_coords: 3V; weights: the :class:`LossWeights`.
    """

    weight_t: torch.Tensor
    offset: torch.Tensor
    weight: torch.Tensor
    lmk_weights153: torch.Tensor
    lmk_weight_sum: float
    term_cols: torch.Tensor
    weight_total: torch.Tensor
    n_vertex_coords: int
    weights: LossWeights


class FusedFastLoss(torch.autograd.Function):
    """The fast loss terms in one autograd node with a hand-written backward.

    ``FusedFastLoss.apply(a, real_targets, consts)`` -> (vertex, landmark, eye, lip, total), the
    values of :func:`fast_loss_terms` up to float rounding; ``consts`` is a :class:`FastConsts`.

    Gradient. With f = a Wᵀ + c (B, 167) the fused fake side, every term is a function of f, and
    the columns of f split by term: [0:17) vertex, [17:153) landmark, [153:161) eye, [161:167)
    lip. The forward stores G = ∂term/∂f in the columns of its own term (B, 167):

    * vertex: 2 (f_p − t_p) / (B·3V);
    * landmark: w_l sign(f_l − t_l) / (2 B Σw + 1e-8);
    * eye / lip: sign(d_k − t_k) g / (n d_k) for the pair difference g (2,), d_k = ‖g‖,
      n = 4B (eye) or 3B (lip).

    The backward scales each term's columns by (its output gradient + the total's gradient ×
    its weight) and returns ∂/∂a = (G · scale) W: one (B, 167) × (167, 17) product.

    Subgradients, as autograd gives them for :func:`fast_loss_terms` and for the reference path:
    ``sign(0) = 0`` for every |·| (a landmark or distance error that is exactly zero contributes
    nothing), and a pair whose fake distance is exactly zero gives NaN, like autograd's
    ``sqrt`` backward at 0 (0/0), also when that term's weight is 0. No gradient flows to
    ``real_targets`` (data).
    """

    @staticmethod
    def forward(ctx, a, real_targets, consts):  # noqa: D401  (autograd API)
        batch = a.shape[0]
        weights = consts.weights
        fused = torch.addmm(consts.offset, a, consts.weight_t)  # (B, 167)
        n_head = REAL_SLICE_LANDMARKS.stop
        grad_f = torch.empty_like(fused)
        diff = torch.sub(fused[:, :n_head], real_targets[:, :n_head], out=grad_f[:, :n_head])
        proj = diff[:, REAL_SLICE_PROJ]
        vertex_norm = batch * consts.n_vertex_coords
        vertex = (proj.square().sum() + real_targets[:, REAL_SLICE_RESIDUAL].sum()) / vertex_norm
        landmark_norm = 2 * batch * consts.lmk_weight_sum + LANDMARK_NORM_EPS
        landmark = (diff.abs() @ consts.lmk_weights153).sum() / landmark_norm
        pairs = fused[:, n_head:].view(batch, -1, 2)
        dist = pairs.square().sum(dim=-1).sqrt()  # (B, 7)
        err = dist - real_targets[:, REAL_SLICE_EYE.start:REAL_SLICE_LIP.stop]
        abs_err = err.abs()
        eye = abs_err[:, :N_EYE_PAIRS].sum() / (N_EYE_PAIRS * batch)
        lip = abs_err[:, N_EYE_PAIRS:].sum() / (N_LIP_PAIRS * batch)
        total = (weights.vertex * vertex + weights.landmark * landmark + weights.eye * eye
                 + weights.lip * lip)
        if ctx.needs_input_grad[0]:
            # Per-term ∂/∂f (unit term weight), each in its own columns (see the class docstring).
            grad_f[:, REAL_SLICE_LANDMARKS].sign_().mul_(
                consts.lmk_weights153[REAL_SLICE_LANDMARKS] / landmark_norm)
            grad_f[:, REAL_SLICE_PROJ].mul_(2.0 / vertex_norm)
            coef = err.sign_().div_(dist)
            coef[:, :N_EYE_PAIRS] /= N_EYE_PAIRS * batch
            coef[:, N_EYE_PAIRS:] /= N_LIP_PAIRS * batch
            torch.mul(pairs, coef.unsqueeze(-1), out=grad_f[:, n_head:].view(batch, -1, 2))
            ctx.save_for_backward(grad_f)
            ctx.consts = consts
        ctx.set_materialize_grads(False)
        return vertex, landmark, eye, lip, total

    @staticmethod
    def backward(ctx, g_vertex, g_landmark, g_eye, g_lip, g_total):
        (grad_f,) = ctx.saved_tensors
        consts = ctx.consts
        per_term = (g_vertex, g_landmark, g_eye, g_lip)
        if all(g is None for g in per_term):  # the usual case: total.backward()
            if g_total is None:
                return None, None, None
            return torch.mm(grad_f, consts.weight_total).mul_(g_total), None, None
        # Each term's columns scale by its own gradient + the total's gradient × its weight.
        weights = consts.weights
        scale = []
        for g, w in zip(per_term, (weights.vertex, weights.landmark, weights.eye, weights.lip)):
            s = grad_f.new_zeros(()) if g is None else g.to(grad_f.dtype)
            scale.append(s if g_total is None else s + g_total * w)
        scale = torch.stack(scale)[consts.term_cols]
        return grad_f @ (scale.unsqueeze(1) * consts.weight), None, None


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
        self.register_buffer("_pairs", torch.tensor(_FUSED_PAIRS, device=device), persistent=False)
        affine = _fake_side_affine_maps(flame, basis32.to(torch.float64))
        for name, value in affine.items():
            self.register_buffer(f"_{name}", value.to(device), persistent=False)
        self._n_vertex_coords = int(affine["V0"].numel())
        self._const_cache: dict = {}

    # -- buffers of the fast path in the working dtype, cast once per (dtype, device)
    def _apply(self, *args, **kwargs):  # nn.Module hook behind .to()/.double(): drop stale casts
        self._const_cache = {}
        return super()._apply(*args, **kwargs)

    def _fast_consts(self, dtype: torch.dtype, device: torch.device) -> FastConsts:
        key = ("loss", dtype, device, self.weights)
        consts = self._const_cache.get(key)
        if consts is None:
            lmk_weights = self.landmark_weights.to(device, dtype)
            weight = self._W.to(device, dtype)
            n_pairs = len(_FUSED_PAIRS)
            term_cols = torch.cat([torch.full((n,), k, dtype=torch.long) for k, n in enumerate(
                (N_MORPHS, 2 * N_LANDMARKS, 2 * N_EYE_PAIRS, 2 * (n_pairs - N_EYE_PAIRS)))])
            term_weights = torch.tensor(
                (self.weights.vertex, self.weights.landmark, self.weights.eye, self.weights.lip),
                dtype=torch.float64)
            weight_total = term_weights[term_cols].unsqueeze(1) * self._W.to("cpu", torch.float64)
            consts = FastConsts(
                weight_t=weight.T.contiguous(), offset=self._c.to(device, dtype), weight=weight,
                lmk_weights153=torch.cat((lmk_weights.new_zeros(N_MORPHS),
                                          lmk_weights.repeat_interleave(2))),
                lmk_weight_sum=float(lmk_weights.double().sum()),
                term_cols=term_cols.to(device), weight_total=weight_total.to(device, dtype),
                n_vertex_coords=self._n_vertex_coords, weights=self.weights)
            self._const_cache[key] = consts
        return consts

    def _real_consts(self) -> torch.Tensor:
        """The real-side map (:data:`REAL_FEATURE_DIM`, 17 + 136 + r) float64 on FLAME's device
        (see :func:`_real_side_polynomial`), built on first use."""
        device = self.flame.v_template.device
        key = ("real", device)
        consts = self._const_cache.get(key)
        if consts is None:
            consts = _real_side_polynomial(self.flame, self._Q.to(torch.float64),
                                           self._V0.to(torch.float64))
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
    def real_targets(self, edtn_input53: torch.Tensor, impl: str = "fast") -> torch.Tensor:
        """Per-sample real-side summary (B, :data:`REAL_TARGET_DIM`) in FLAME's dtype.

        Args:
            edtn_input53: driving codes (B, 53) = exp ⊕ jaw axis-angle.
            impl: ``'fast'`` (default): the exact polynomial of :func:`_real_side_polynomial`,
                evaluated in float64 (no vertex is formed); ``'flame'``: one FLAME forward on
                the real codes, then the basis projection and residual in float64. Both give
                the same numbers to float rounding (tests: 1e-6 relative on every field).
        """
        self._check_input(edtn_input53, "edtn_input53", 53)
        if impl not in REAL_TARGET_IMPLS:
            raise ValueError(f"real_targets impl must be one of {REAL_TARGET_IMPLS}, got {impl!r}")
        batch = edtn_input53.shape[0]
        dtype = self.flame.v_template.dtype
        if impl == "flame":
            out = self.real_mesh(edtn_input53)
            basis_q = self._Q.to(torch.float64)  # no-op unless someone called .float() on us
            offset = out.vertices.reshape(batch, -1).to(torch.float64) - self._V0.to(torch.float64)
            proj = offset @ basis_q  # (B, 17)
            residual = (offset - proj @ basis_q.T).pow(2).sum(dim=1)
            head = torch.cat((proj, project_landmarks(out.landmarks2d).reshape(batch, -1)), dim=1)
        else:
            x = edtn_input53.to(self.flame.v_template.device, dtype)
            # The jaw rotation in FLAME's dtype, with DECA's convention: the FLAME path's R.
            jaw_rot = batch_rodrigues(x[:, N_EXP:])
            values = real_side_features(x[:, :N_EXP], jaw_rot) @ self._real_consts()
            head = values[:, :REAL_SLICE_LANDMARKS.stop]  # projection, then landmarks
            tail = values[:, REAL_SLICE_LANDMARKS.stop:]
            residual = torch.linalg.vecdot(tail, tail)
        # float64 until here; one cast into the (B, 161) result
        landmarks = head[:, REAL_SLICE_LANDMARKS].reshape(batch, N_LANDMARKS, 2)
        result = torch.empty(batch, REAL_TARGET_DIM, dtype=dtype, device=head.device)
        result[:, :REAL_SLICE_LANDMARKS.stop] = head
        result[:, REAL_SLICE_EYE.start:REAL_SLICE_LIP.stop] = pair_distances(landmarks, self._pairs)
        result[:, REAL_SLICE_RESIDUAL.start] = residual
        return result

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
        """The exact affine path from real targets (B, 161) (see the layout constants), as one
        :class:`FusedFastLoss` node; computes in a's dtype and touches no vertex."""
        self._check_input(real_targets, "real_targets", REAL_TARGET_DIM)
        if real_targets.shape[0] != a.shape[0]:
            raise ValueError(f"batch sizes differ: a {tuple(a.shape)}, "
                             f"real_targets {tuple(real_targets.shape)}")
        real_targets = real_targets.to(a.device, a.dtype)
        values = FusedFastLoss.apply(a, real_targets, self._fast_consts(a.dtype, a.device))
        return dict(zip(LOSS_TERMS, values))

    def forward_fast_autograd(self, a: torch.Tensor, real_targets: torch.Tensor) -> dict[str, torch.Tensor]:
        """:meth:`forward_fast` with plain autograd ops (:func:`fast_loss_terms`), for checking."""
        consts = self._fast_consts(a.dtype, a.device)
        return fast_loss_terms(a, real_targets.to(a.device, a.dtype), consts.weight_t,
                               consts.offset, self._n_vertex_coords, self.weights)


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


@torch.no_grad()
def _real_side_polynomial(flame: nn.Module, basis_q: torch.Tensor, v0: torch.Tensor) -> torch.Tensor:
    """The real side as a linear map of the monomials of :func:`real_side_features`.

    Derivation (shape 0, global / neck / eye rotations zero, jaw axis-angle r; z = (1, ψ, e),
    E = R_jaw − I, e = vec(E) row-major). In FLAME's LBS:

    * v_posed = T + S ψ + P e (P: the jaw rows 9..17 of posedirs; the other joints' pose features
      R − I are exactly 0, since DECA's Rodrigues maps a zero vector to exactly I), i.e.
      v_posed_v = Y_v z with Y_v (3, 60) per vertex;
    * the joints come from v_shaped = T + S ψ, so J_jaw = G z with G = J_regressor[jaw] Y (no e);
    * forward kinematics: root and neck are [I | J_j], the jaw's world transform is [R | J_jaw]
      (the neck translation cancels), the eyes are [I | J_eye]; the skinning transforms
      (world · [I, −J_j]) are therefore [I | 0] for every joint but the jaw, and
      [R | (I − R) J_jaw] for the jaw;
    * blending with weights w_vj (row sum s_v, jaw weight w_v):
      v = s_v v_posed + w_v E (v_posed − J_jaw) = s_v Y_v z + w_v E U_v z, U_v = Y_v − G.

    The first part is linear in z, the second is bilinear in (e, z): coordinate i of vertex v is
    Σ_{j,m} (E_ij z_m) w_v U_v[j, m]. So v = D φ with D (3V, 555) on the monomials φ (products
    E_ij · 1 merge into the e columns, e_a e_b with e_b e_a). Everything the cache needs is then
    exact and small:

    * Qᵀ(v − V0) = Qᵀ D_d φ (17 × 555), with D_d = D minus V0 in the constant column;
    * the contour landmarks use LUT row 0 (yaw of the global rotation = 0) and every landmark is
      a barycentric combination of vertices, so the projected landmarks are (136 × 555) φ;
    * ‖(I − QQᵀ)(v − V0)‖² = φᵀ H φ with H = D_dᵀD_d − (QᵀD_d)ᵀ(QᵀD_d) (555 × 555, float64;
      only the 3K jaw rows enter the bilinear blocks); with H = V Λ Vᵀ it is ‖Λ^½ Vᵀ φ‖², a sum
      of squares per sample (eigenvalues below 1e-14 λ_max, rounding noise of H, are dropped).
      Building H costs ≈ 1 GFLOP instead of the ≈ 9 GFLOP of a QR of (I − QQᵀ) D_d; its rounding
      (≈ 1e-16 ‖H‖ ‖φ‖²) is far below the 1e-6 we check.

    Args:
        flame: the FLAME layer (any dtype: its buffers are read as float64).
        basis_q: Q (3V, 17) float64, orthonormal basis of the fake vertex offsets.
        v0: V0 (3V,) float64, the fake mesh at a = 0.
    Returns:
        (555, 17 + 136 + r) float64 on FLAME's device: columns [projection | projected
        landmarks (x, y per landmark) | V Λ^½ (r <= 555 kept directions)].
    Raises:
        ValueError: a kinematic tree where some joint hangs below the jaw (not FLAME).
    """
    parents = list(flame.parents)
    if JAW_JOINT in parents:
        raise ValueError(f"the fast real-target path assumes no joint below the jaw; parents {parents}")
    f64 = torch.float64
    n_vertices = flame.v_template.shape[0]
    device = flame.v_template.device
    template = flame.v_template.to(f64)                                           # (V, 3)
    exp_dirs = flame.shapedirs[:, :, flame.n_shape:flame.n_shape + N_EXP].to(f64)  # (V, 3, 50)
    rows = slice(ROT_ENTRIES * (JAW_JOINT - 1), ROT_ENTRIES * JAW_JOINT)
    pose_dirs = flame.posedirs[rows].to(f64).reshape(ROT_ENTRIES, n_vertices, 3).permute(1, 2, 0)
    y = torch.cat((template.unsqueeze(-1), exp_dirs, pose_dirs), dim=2)            # (V, 3, 60)
    j_jaw = flame.j_regressor[JAW_JOINT].to(f64)                                   # (V,)
    g = torch.einsum("v,vim->im", j_jaw, y)                                        # (3, 60)
    g[:, 1 + N_EXP:] = 0  # the joints come from v_shaped: no pose correctives
    weights = flame.lbs_weights.to(f64)
    row_sum, jaw_weight = weights.sum(dim=1), weights[:, JAW_JOINT]
    jawed = torch.nonzero(jaw_weight).squeeze(1)  # only these vertices carry the bilinear part
    u = (y[jawed] - g) * jaw_weight[jawed, None, None]                             # (K, 3, 60)

    # D on the monomials φ; full bilinear index (i, j, m) of E_ij z_m -> its φ column.
    n_z = _FEATURE_AFFINE
    pair_rows, pair_cols = _e_pair_index()
    pair_of = torch.empty(ROT_ENTRIES, ROT_ENTRIES, dtype=torch.long)
    pair_of[pair_rows, pair_cols] = torch.arange(_N_E_PAIRS)
    pair_of[pair_cols, pair_rows] = torch.arange(_N_E_PAIRS)
    column = torch.empty(ROT_ENTRIES, n_z, dtype=torch.long)                       # (a, m)
    column[:, 0] = 1 + N_EXP + torch.arange(ROT_ENTRIES)                           # E_a · 1 = e_a
    column[:, 1:1 + N_EXP] = (_FEATURE_E_PSI.start + N_EXP * torch.arange(ROT_ENTRIES)[:, None]
                              + torch.arange(N_EXP))
    column[:, 1 + N_EXP:] = _FEATURE_E_PSI.stop + pair_of                          # e_a e_k
    dmap = torch.zeros(n_vertices, 3, REAL_FEATURE_DIM, dtype=f64, device=device)
    dmap[:, :, :n_z] = row_sum[:, None, None] * y
    for i in range(3):  # coordinate i gets E_ij z_m w_v U_v[j, m] for j = 0..2
        cols = column.view(3, 3, n_z)[i].reshape(-1).to(device)                    # (j, m)
        dmap[jawed, i] = dmap[jawed, i].index_add(1, cols, u.reshape(len(jawed), -1))

    # Landmarks: FLAME's own barycentric map (weights cast to float64), applied to each column,
    # LUT row 0, then projected.
    columns_as_meshes = dmap.permute(2, 0, 1)                                       # (555, V, 3)
    lut_rows = torch.zeros(REAL_FEATURE_DIM, dtype=torch.long, device=device)
    lmk = flame.landmarks2d_from_vertices(columns_as_meshes, lut_rows)              # (555, 68, 3)
    projected = project_landmarks(lmk)
    shift = project_landmarks(torch.zeros_like(lmk[:1]))  # the camera offset: constant column only
    projected = projected - shift
    projected[0] += shift[0]
    lmk_map = projected.reshape(REAL_FEATURE_DIM, -1)                               # (555, 136)

    d_offset = dmap.reshape(3 * n_vertices, REAL_FEATURE_DIM)
    d_offset[:, 0] -= v0
    proj_map = basis_q.T @ d_offset                                                 # (17, 555)
    # Gram of (I − QQᵀ) D_d = D_dᵀ D_d − Pᵀ P; the e⊗ψ and e⊗e columns live on the jaw rows only.
    jaw_rows = (3 * jawed[:, None] + torch.arange(3, device=device)).reshape(-1)
    dense, sparse = d_offset[:, :_FEATURE_AFFINE], d_offset[jaw_rows, _FEATURE_AFFINE:]
    gram = torch.empty(REAL_FEATURE_DIM, REAL_FEATURE_DIM, dtype=f64, device=device)
    gram[:_FEATURE_AFFINE, :_FEATURE_AFFINE] = dense.T @ dense
    gram[:_FEATURE_AFFINE, _FEATURE_AFFINE:] = dense[jaw_rows].T @ sparse
    gram[_FEATURE_AFFINE:, :_FEATURE_AFFINE] = gram[:_FEATURE_AFFINE, _FEATURE_AFFINE:].T
    gram[_FEATURE_AFFINE:, _FEATURE_AFFINE:] = sparse.T @ sparse
    gram -= proj_map.T @ proj_map
    # ‖(I − QQᵀ) D_d φ‖² = φᵀ Gram φ = ‖Λ^½ Vᵀ φ‖²; directions at rounding level carry nothing.
    eigvals, eigvecs = torch.linalg.eigh(gram)
    keep = eigvals > RESIDUAL_RANK_RTOL * eigvals[-1]
    residual_map = eigvecs[:, keep] * eigvals[keep].sqrt()                          # (555, r)
    return torch.cat((proj_map.T, lmk_map, residual_map), dim=1).contiguous()


def build_geometry_loss(flame_model: Optional[str], landmark_embedding: Optional[str],
                        basis: Optional[str], weights: LossWeights, impl: str,
                        device: torch.device, trust_checkpoint: bool = False) -> GeometryLoss:
    """FLAME (100 shape / 50 exp) + morph basis, found through ``resolve_asset`` (``None`` = the
    asset cache), -> :class:`GeometryLoss` on ``device`` (``trust_checkpoint``: the opt-in to a
    full unpickle of the FLAME files, only for files you created)."""
    flame = FLAME(resolve_asset("flame_model", flame_model),
                  resolve_asset("landmark_embedding", landmark_embedding), n_shape=100, n_exp=50,
                  trust_checkpoint=trust_checkpoint)
    return GeometryLoss(flame.to(device), load_basis(basis), weights, impl=impl).to(device)
