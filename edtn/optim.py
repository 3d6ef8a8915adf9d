"""Optimiser and training-step helpers for EDTN, shared by ``train.py`` and the benchmark.

With the fast loss (:mod:`edtn.losses`) the geometry costs a few 17-wide matrix products per step,
so the step is dominated by the MLP (≈3.3 MFLOP per sample forward + backward) and by Adam over
its 560k parameters. What helps, measured in ``scripts/bench_edtn_loss.py``:

* Adam's ``fused`` kernel (one pass over all parameters, CPU and CUDA) instead of the per-tensor
  loop; ``foreach`` is the fallback where fused is unavailable;
* ``zero_grad(set_to_none=True)``: backward then writes gradients instead of adding into zeros;
* not synchronising per step: :func:`make_train_step` returns the loss terms as tensors; call
  ``.item()`` only when logging.
"""
from __future__ import annotations

from typing import Callable, Iterable, Optional

import torch
from torch import nn

__all__ = ["OPTIMIZER_IMPLS", "make_optimizer", "make_train_step"]

OPTIMIZER_IMPLS = ("auto", "fused", "foreach", "for_loop")
PAPER_LR = 1e-4
PAPER_BETAS = (0.5, 0.999)


def _fused_supported(params: list[torch.Tensor]) -> bool:
    devices = {p.device.type for p in params}
    dtypes = {p.dtype for p in params}
    return devices <= {"cpu", "cuda"} and all(d.is_floating_point for d in dtypes)


def make_optimizer(params: Iterable[torch.Tensor], lr: float = PAPER_LR,
                   betas: tuple[float, float] = PAPER_BETAS, impl: str = "auto",
                   **kwargs) -> torch.optim.Adam:
    """Adam with the fastest available implementation.

    Args:
        params: parameters (or parameter groups) to optimise.
        lr, betas: Adam hyper-parameters (paper: 1e-4, (0.5, 0.999)).
        impl: ``auto`` (fused where supported, else foreach), ``fused``, ``foreach`` or
            ``for_loop`` (the classic per-tensor loop). All give the same update up to rounding.
        kwargs: passed to ``torch.optim.Adam`` (``eps``, ``weight_decay``, ...).
    """
    if impl not in OPTIMIZER_IMPLS:
        raise ValueError(f"optim.impl must be one of {OPTIMIZER_IMPLS}, got {impl!r}")
    params = list(params)
    flat = [p for group in params for p in (group["params"] if isinstance(group, dict) else [group])]
    if impl == "auto":
        impl = "fused" if _fused_supported(flat) else "foreach"
    flags = {"fused": {"fused": True}, "foreach": {"foreach": True},
             "for_loop": {"foreach": False}}[impl]
    return torch.optim.Adam(params, lr=lr, betas=tuple(betas), **flags, **kwargs)


def make_train_step(model: nn.Module, loss_fn: nn.Module,
                    optimizer: torch.optim.Optimizer) -> Callable[..., dict[str, torch.Tensor]]:
    """One EDTN training step as a closure: forward, loss, backward, optimiser step.

    ``step(x53, real_targets=None) -> dict`` of detached loss terms (``vertex``, ``landmark``,
    ``eye``, ``lip``, ``total``). ``loss_fn`` is a :class:`~edtn.losses.GeometryLoss`;
    ``real_targets`` are its cached rows for the batch (fast path), or ``None``.
    """
    def step(x53: torch.Tensor, real_targets: Optional[torch.Tensor] = None) -> dict[str, torch.Tensor]:
        morphs = model(x53)
        terms = loss_fn(morphs, x53, real_targets)
        optimizer.zero_grad(set_to_none=True)
        terms["total"].backward()
        optimizer.step()
        return {name: value.detach() for name, value in terms.items()}

    return step
