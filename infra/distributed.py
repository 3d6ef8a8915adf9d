"""Minimal DistributedDataParallel plumbing shared by ``train.py`` and ``train_ag.py``.

Launched by ``torchrun`` (``WORLD_SIZE`` etc. in the environment) the process group is started,
otherwise everything is a no-op and the training scripts run as a single process.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["DistInfo", "init_distributed", "cleanup_distributed", "is_launched_by_torchrun"]


@dataclass(frozen=True)
class DistInfo:
    """Rank bookkeeping for the current process."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def is_launched_by_torchrun() -> bool:
    """True when the environment carries torchrun's rank variables."""
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))


def init_distributed(device: torch.device, backend: str = "auto") -> tuple[DistInfo, torch.device]:
    """Start the process group when launched by torchrun; return rank info and this rank's device.

    Args:
        device: the device chosen from the config. On CUDA each rank takes ``cuda:LOCAL_RANK``.
        backend: ``auto`` (nccl on CUDA, gloo on CPU), ``nccl`` or ``gloo``.
    """
    if not is_launched_by_torchrun() or int(os.environ["WORLD_SIZE"]) <= 1:
        return DistInfo(), device
    info = DistInfo(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"]))
    if device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)
    if backend == "auto":
        backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return info, device


def cleanup_distributed() -> None:
    """Destroy the process group if one was started."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
