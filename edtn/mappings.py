"""Morph mappings: DECA expression ⊕ jaw (B, 53) -> 17 anime morphs in [0, 1] (B, 17).

Three mappings share one call signature (:class:`MorphMapping`), so inference and evaluation can
swap them with one config key (``mapping: edtn | basis_fit | vertex_fit``):

* ``edtn``: the trained EDTN MLP (:func:`edtn.model.load_edtn`).
* ``basis_fit`` (training-free, Animo-style, in expression space): with ψ = x[:, :50] and the
  17×50 morph basis T (float32, as in training),

      a = argmin_{a ∈ [0,1]^17} ‖Tᵀa − ψ‖².

  It can only express what the 17 basis expressions span.
* ``vertex_fit`` (training-free, the per-frame optimum of EDTN's own vertex term): with
  V_real(x) = FLAME(shape 0, exp ψ, jaw) and V_fake(a) = FLAME(shape 0, exp a·T, pose 0),

      a = argmin_{a ∈ [0,1]^17} ‖V_fake(a) − V_real(x)‖².

  The fake mesh is affine, V_fake(a) = V0 + B a with B = Q R (:mod:`edtn.losses`, fast path), so
  ‖V0 + B a − v‖² = ‖R a − Qᵀ(v − V0)‖² + ‖(I − QQᵀ)(v − V0)‖²: a 17-variable problem on R and
  the real targets ``GeometryLoss.real_targets(x)[:, 0:17]``. No iteration touches a vertex.

Both fits are box-constrained least squares ``min ‖A a − b‖²`` with a matrix A shared by the whole
batch, i.e. the quadratic programme ``min ½ aᵀGa − qᵀa`` (G = AᵀA, q = Aᵀb) over the box. It is
solved *exactly* (up to float64 round-off) by :func:`solve_box_qp`, a batched primal active-set
method: every iteration solves, for every unfinished sample at once, the 17×17 system restricted
to its free variables, then either steps to that point or stops at the first bound it crosses;
at a stationary point the variable with the most negative bound multiplier is released. The
iterate stays feasible and the objective never increases, so the method ends in finitely many
iterations (the KKT conditions hold at the end).
"""
from __future__ import annotations

import logging
import os
from typing import Optional, Protocol, Union

import numpy as np
import torch

from edtn.losses import N_EXP, N_MORPHS, REAL_SLICE_PROJ, REAL_SLICE_RESIDUAL, LossWeights, load_basis

__all__ = [
    "MAPPINGS",
    "MorphMapping",
    "EdtnMapping",
    "BasisFit",
    "VertexFit",
    "solve_box_qp",
    "build_mapping",
]

_logger = logging.getLogger(__name__)

MAPPINGS = ("edtn", "basis_fit", "vertex_fit")
EDTN_INPUT_DIM = N_EXP + 3  # expression 50 ⊕ jaw axis-angle 3
MORPH_LOWER, MORPH_UPPER = 0.0, 1.0
# A bound multiplier counts as negative (the bound is released) below -KKT_RTOL·scale, where scale
# is the largest |G_ij| + |q_i| of the sample: round-off sized violations do not cause releases.
KKT_RTOL = 1e-12
MAX_ITER_PER_VARIABLE = 8   # safety net only; an exact run needs far fewer (see solve_box_qp)
DEFAULT_CHUNK = 65536       # samples per solver call (bounds the (chunk, 17, 17) work arrays)


class MorphMapping(Protocol):
    """``mapping(x) -> a``: x (B, 53) DECA exp ⊕ jaw -> a (B, 17) float32 morphs in [0, 1]."""

    name: str
    device: torch.device

    def __call__(self, x: torch.Tensor) -> torch.Tensor: ...


def _check_input(x: torch.Tensor) -> None:
    if not torch.is_tensor(x) or x.dim() != 2 or x.shape[1] != EDTN_INPUT_DIM:
        shape = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
        raise ValueError(f"mapping input must be a tensor of shape (B, {EDTN_INPUT_DIM}) "
                         f"(DECA exp 50 ⊕ jaw 3), got {shape}")


# ----------------------------------------------------------------------------- the solver
def _sweep(swept: torch.Tensor, pivots: torch.Tensor, sign: torch.Tensor) -> None:
    """Sweep (sign +1), reverse-sweep (sign −1) or leave (sign 0) each ``swept[i]`` on index
    ``pivots[i]``, in place; swept (b, n, n), pivots (b,) long, sign (b,) float.

    Sweep on k of a symmetric A (Goodnight's operator): with d = A_kk, A_ij -= A_ik A_kj / d
    (i, j ≠ k), A_ik, A_kj ← ±A_ik / d, ±A_kj / d, A_kk ← −1/d. Sweeping a set F of G gives
    −G_FF⁻¹ in the F block and G_FF⁻¹ G_FB in the F×B block; a reverse sweep undoes a sweep. One
    (re)sweep changes the free set by one variable at O(n²) cost per sample.
    """
    b, n, _ = swept.shape
    # The swept matrix stays symmetric, so row k is also column k.
    row_index = pivots.view(b, 1, 1).expand(b, 1, n)
    row = swept.gather(1, row_index).squeeze(1)  # (b, n) = A[:, k, :]
    pivot = row.gather(1, pivots.view(b, 1)).squeeze(1)
    active = sign != 0
    weight = torch.where(active, 1.0 / pivot, torch.zeros_like(pivot))
    swept.addcmul_(row.unsqueeze(2), (row * weight.unsqueeze(1)).unsqueeze(1), value=-1.0)
    new_row = row * torch.where(active, sign / pivot, torch.ones_like(pivot)).unsqueeze(1)
    new_row.scatter_(1, pivots.view(b, 1), torch.where(active, -1.0 / pivot, pivot).view(b, 1))
    swept.scatter_(1, row_index, new_row.unsqueeze(1))
    swept.scatter_(2, pivots.view(b, 1, 1).expand(b, n, 1), new_row.unsqueeze(2))


@torch.no_grad()
def solve_box_qp(gram: torch.Tensor, linear: torch.Tensor, lower: float = MORPH_LOWER,
                 upper: float = MORPH_UPPER, max_iter: Optional[int] = None) -> torch.Tensor:
    """Exact batched solution of ``min_a ½ aᵀ G a − qᵀ a`` subject to ``lower <= a <= upper``.

    Args:
        gram: G (n, n), symmetric positive definite, shared by every sample (float64 advised).
        linear: q (B, n), one row per sample (same dtype / device as G).
        lower, upper: the box (scalars).
        max_iter: iteration cap (default ``MAX_ITER_PER_VARIABLE · n``); samples still open then
            keep their (feasible, not yet optimal) iterate and a warning is logged.
    Returns:
        a (B, n) in G's dtype, inside the box, satisfying the KKT conditions.

    Method (primal active set, warm-started): start from the unconstrained minimiser clipped to
    the box, with the clipped variables fixed at their bound. Each iteration computes, for every
    open sample, the minimiser over its free variables (the fixed ones held), then moves towards
    it until the first bound is met (that variable becomes fixed) or, if no bound is met, checks
    the multipliers of the fixed variables (g_i at a lower bound, −g_i at an upper bound,
    g = G a − q) and frees the most negative one; a sample with none negative is optimal. The
    free-set minimisers come from a per-sample swept copy of G (see :func:`_sweep`), updated by
    one O(n²) (reverse) sweep whenever a variable is fixed or freed.
    """
    if gram.dim() != 2 or gram.shape[0] != gram.shape[1]:
        raise ValueError(f"gram must be (n, n), got {tuple(gram.shape)}")
    if linear.dim() != 2 or linear.shape[1] != gram.shape[0]:
        raise ValueError(f"linear must be (B, {gram.shape[0]}), got {tuple(linear.shape)}")
    if not lower < upper:
        raise ValueError(f"empty box [{lower}, {upper}]")
    n, batch = gram.shape[0], linear.shape[0]
    max_iter = MAX_ITER_PER_VARIABLE * n if max_iter is None else int(max_iter)
    dtype, device = gram.dtype, gram.device
    q = linear.to(dtype)
    inverse = torch.linalg.inv(gram)
    unconstrained = q @ inverse  # G symmetric
    out = unconstrained.clamp(lower, upper)
    # Working set of the open samples (compacted as samples finish).
    rows, a = torch.arange(batch, device=device), out.clone()
    lo, hi = unconstrained <= lower, unconstrained >= upper
    scale = gram.abs().amax() + q.abs().amax(dim=1)  # multiplier tolerance per sample
    # Every variable swept (S = −G⁻¹), then the initially fixed ones reverse-swept.
    swept = (-inverse).expand(batch, n, n).contiguous()
    minus_one = torch.full((batch,), -1.0, dtype=dtype, device=device)
    for k in range(n):
        fixed_k = lo[:, k] | hi[:, k]
        if fixed_k.any():
            _sweep(swept, torch.full((batch,), k, device=device),
                   torch.where(fixed_k, minus_one, torch.zeros_like(minus_one)))
    inf = torch.tensor(float("inf"), dtype=dtype, device=device)
    bound = torch.tensor((lower, upper), dtype=dtype, device=device)
    iterations = 0
    while rows.numel() and iterations < max_iter:
        iterations += 1
        qo = q[rows]
        free = ~(lo | hi)
        mixed = torch.where(free, qo, a)  # −(S z)_F = G_FF⁻¹ (q_F − G_FB a_B)
        target = torch.where(free, -(swept @ mixed.unsqueeze(2)).squeeze(2), a)
        step = target - a
        # Largest step in [0, 1] that keeps the free variables inside the box.
        ratio_lo = torch.where(free & (step < 0), (lower - a) / torch.where(step < 0, step, -inf), inf)
        ratio_hi = torch.where(free & (step > 0), (upper - a) / torch.where(step > 0, step, inf), inf)
        ratio = torch.minimum(ratio_lo, ratio_hi).clamp(min=0.0)
        alpha, blocking = ratio.min(dim=1)
        blocked = alpha < 1.0
        a = torch.where(free, a + alpha.clamp(max=1.0).unsqueeze(1) * step, a)
        # Blocked samples: the blocking variable is fixed at the bound it reached.
        block_lo = (ratio_lo.gather(1, blocking[:, None]) <= ratio_hi.gather(1, blocking[:, None])).squeeze(1)
        onehot = torch.nn.functional.one_hot(blocking, n).bool() & blocked.unsqueeze(1)
        lo = lo | (onehot & block_lo.unsqueeze(1))
        hi = hi | (onehot & ~block_lo.unsqueeze(1))
        a = torch.where(onehot, bound[(~block_lo).long()].unsqueeze(1), a)
        # Unblocked samples sit at the minimiser of their free set: check the multipliers.
        grad = a @ gram - qo
        multiplier = torch.where(lo, grad, torch.where(hi, -grad, inf))
        worst, release = multiplier.min(dim=1)
        violated = (~blocked) & (worst < -KKT_RTOL * scale[rows])
        freed = torch.nn.functional.one_hot(release, n).bool() & violated.unsqueeze(1)
        lo, hi = lo & ~freed, hi & ~freed
        sign = torch.where(blocked, -1.0, torch.where(violated, 1.0, 0.0)).to(dtype)
        _sweep(swept, torch.where(blocked, blocking, release), sign)
        keep = blocked | violated
        out[rows[~keep]] = a[~keep]
        if not keep.all():
            rows, a, lo, hi, swept = rows[keep], a[keep], lo[keep], hi[keep], swept[keep]
    if rows.numel():
        out[rows] = a
        _logger.warning("solve_box_qp: %d of %d samples did not reach the KKT conditions in %d "
                        "iterations; their (feasible) iterate is returned", rows.numel(), batch, max_iter)
    return out.clamp(lower, upper)


def _solve_chunked(gram: torch.Tensor, linear: torch.Tensor, chunk: int) -> torch.Tensor:
    if linear.shape[0] <= chunk:
        return solve_box_qp(gram, linear)
    return torch.cat([solve_box_qp(gram, linear[i:i + chunk]) for i in range(0, linear.shape[0], chunk)])


# ----------------------------------------------------------------------------- the mappings
class EdtnMapping:
    """The trained EDTN MLP as a :class:`MorphMapping`.

    Args:
        path: ``EDTN.pt`` or one of our training checkpoints (``None``: the ``edtn_weights`` asset).
        device: where the network runs.
        trust_checkpoint: the opt-in to a full unpickle of the file (only for files you created).
    """

    name = "edtn"

    def __init__(self, path: Union[str, os.PathLike, None] = None,
                 device: Union[str, torch.device] = "cpu", trust_checkpoint: bool = False) -> None:
        from edtn.model import load_edtn

        self.device = torch.device(device)
        self.model = load_edtn(path, self.device, trust_checkpoint=trust_checkpoint)

    @torch.inference_mode()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        _check_input(x)
        return self.model(x.to(self.device, torch.float32)).float()


class BasisFit:
    """``a = argmin_{a ∈ [0,1]^17} ‖Tᵀa − ψ‖²`` (see the module docstring).

    Args:
        basis: the (17, 50) morph basis; rounded to float32 like the training code, then solved in
            float64.
        device: where the solver runs.
        chunk: samples per solver call.
    """

    name = "basis_fit"

    def __init__(self, basis: Union[np.ndarray, torch.Tensor], device: Union[str, torch.device] = "cpu",
                 chunk: int = DEFAULT_CHUNK) -> None:
        basis = torch.as_tensor(np.asarray(basis) if not torch.is_tensor(basis) else basis)
        if tuple(basis.shape) != (N_MORPHS, N_EXP):
            raise ValueError(f"basis must have shape ({N_MORPHS}, {N_EXP}), got {tuple(basis.shape)}")
        self.device = torch.device(device)
        self.chunk = int(chunk)
        # T as training uses it (float32 values), then float64 for the solve.
        self.basis = basis.to(torch.float32).to(self.device, torch.float64)  # (17, 50)
        self.gram = self.basis @ self.basis.T  # (17, 17) = T Tᵀ

    def objective(self, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """‖Tᵀa − ψ‖² per sample (B,), float64."""
        psi = x[:, :N_EXP].to(self.device, torch.float64)
        return (a.to(self.device, torch.float64) @ self.basis - psi).pow(2).sum(dim=1)

    @torch.inference_mode()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        _check_input(x)
        psi = x[:, :N_EXP].to(self.device, torch.float64)
        return _solve_chunked(self.gram, psi @ self.basis.T, self.chunk).float()


class VertexFit:
    """``a = argmin_{a ∈ [0,1]^17} ‖V_fake(a) − V_real(x)‖²`` on the fast path's affine form.

    Args:
        loss: an :class:`edtn.losses.GeometryLoss` (its FLAME and basis define V_real and
            V_fake); it supplies R (the first 17 rows of its fused fake-side map, float64) and
            the real targets Qᵀ(v_real − V0) and the out-of-span residual.
        chunk: samples per solver call.
    """

    name = "vertex_fit"

    def __init__(self, loss, chunk: int = DEFAULT_CHUNK) -> None:
        self.loss = loss
        self.device = loss.basis.device
        self.chunk = int(chunk)
        # B = Q R; the fused map's first 17 rows are R (float64, see edtn.losses).
        self.r = loss._W[REAL_SLICE_PROJ].to(self.device, torch.float64)  # (17, 17)
        self.gram = self.r.T @ self.r

    def objective(self, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """‖V0 + B a − v_real‖² per sample (B,), float64 (m²), via the exact decomposition."""
        targets = self.loss.real_targets(x.to(self.device)).to(torch.float64)
        fit = a.to(self.device, torch.float64) @ self.r.T - targets[:, REAL_SLICE_PROJ]
        return fit.pow(2).sum(dim=1) + targets[:, REAL_SLICE_RESIDUAL].squeeze(1)

    @torch.inference_mode()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        _check_input(x)
        targets = self.loss.real_targets(x.to(self.device))[:, REAL_SLICE_PROJ].to(torch.float64)
        return _solve_chunked(self.gram, targets @ self.r, self.chunk).float()


def build_mapping(name: str, *, edtn_path: Union[str, os.PathLike, None] = None,
                  flame_path: Union[str, os.PathLike, None] = None,
                  landmark_embedding_path: Union[str, os.PathLike, None] = None,
                  basis_path: Union[str, os.PathLike, None] = None,
                  device: Union[str, torch.device] = "cpu", trust_checkpoint: bool = False) -> MorphMapping:
    """Build the mapping ``name`` (one of :data:`MAPPINGS`); every file goes through
    :func:`infra.assets.resolve_asset` (``None`` = the asset cache) and loads with an allow-list
    unless ``trust_checkpoint`` (a full unpickle, only for files you created).

    * ``edtn`` needs ``edtn_path`` (asset ``edtn_weights``);
    * ``basis_fit`` needs ``basis_path`` (asset ``transform_matrix``);
    * ``vertex_fit`` needs FLAME (``flame_path``, ``landmark_embedding_path``) and the basis.
    Raises:
        ValueError: unknown name. AssetError: a needed file is missing (the message says where
        to get it).
    """
    if name not in MAPPINGS:
        raise ValueError(f"mapping must be one of {MAPPINGS}, got {name!r}")
    device = torch.device(device)
    if name == "edtn":
        return EdtnMapping(edtn_path, device, trust_checkpoint)
    if name == "basis_fit":
        return BasisFit(load_basis(basis_path), device)
    from edtn.losses import build_geometry_loss  # FLAME + basis through the asset resolver

    loss = build_geometry_loss(flame_path, landmark_embedding_path, basis_path, LossWeights(),
                               "fast", device, trust_checkpoint)
    return VertexFit(loss)
