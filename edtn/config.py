"""Typed schema of the EDTN training config (``configs/train.yaml`` + ``configs/edtn/*``).

The dataclasses below are registered in Hydra's ConfigStore as ``edtn_train_schema``; the primary
config lists it first in its defaults, so every YAML value and command-line override is checked
against these types at compose time (``optim.lr=abc`` fails with a message naming ``optim.lr``).
:func:`validate_config` repeats the check for configs built without Hydra (``run(cfg)`` from a
notebook). Defaults here are only the schema's; the numbers we train with live in the YAML files.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from infra.typed_config import merge_into_schema, to_plain_dict

__all__ = [
    "LossImpl",
    "ModelConfig",
    "DataConfig",
    "LossConfig",
    "OptimConfig",
    "LogConfig",
    "CheckpointConfig",
    "TrainConfig",
    "SCHEMA_NAME",
    "register_configs",
    "validate_config",
    "to_plain_dict",
]

SCHEMA_NAME = "edtn_train_schema"


class LossImpl(str, Enum):
    """How the geometry loss is computed (see SPEC §4): both give the same numbers."""

    fast = "fast"            # cached real targets + affine fake mesh (default, no FLAME forward)
    reference = "reference"  # literal FLAME forward on both sides (for checking)


@dataclass
class ModelConfig:
    """EDTN MLP (53 -> 17). ``init`` optionally starts from a state dict (e.g. ``EDTN.pt``)."""

    init: Optional[str] = None
    trust_init: bool = False   # full unpickle of ``init`` (only for files you created)


@dataclass
class DataConfig:
    """Where the DECA codes are and how frames are drawn.

    ``train`` / ``test`` are packed-code prefixes (``<prefix>.npy`` + ``<prefix>.json``, see
    ``scripts/pack_deca_codes.py``) or folders of ``.mat`` files (``<root>/deca/train`` with one
    sub-folder per video, or a flat folder = one video). ``test`` may be left empty when one source
    holds both splits and ``train_list`` / ``test_list`` (text files, one video name a line) select
    the videos; without ``test_list`` the test split is then the videos not in ``train_list``.
    """

    train: str = MISSING
    test: Optional[str] = None
    train_list: Optional[str] = None
    test_list: Optional[str] = None
    frames_per_video: Optional[int] = None   # None: every frame once per epoch; k: k random frames
    batch_size: int = MISSING                # global batch (split evenly across DDP ranks)
    eval_batch_size: int = MISSING
    num_workers: int = 0
    cache_dir: Optional[str] = None          # real-target cache; None: next to the packed codes


@dataclass
class LossConfig:
    """Geometry loss weights, implementation and its assets (``None`` = asset cache)."""

    impl: LossImpl = LossImpl.fast
    vertex: float = MISSING
    landmark: float = MISSING
    eye: float = MISSING
    lip: float = MISSING
    flame_model: Optional[str] = None
    landmark_embedding: Optional[str] = None
    basis: Optional[str] = None


@dataclass
class OptimConfig:
    """Adam settings (``impl``: auto | fused | foreach | for_loop, see ``edtn.optim``)."""

    lr: float = MISSING
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 0.0
    impl: str = "auto"


@dataclass
class LogConfig:
    """Progress bar and TensorBoard."""

    every: int = 50              # steps between TensorBoard scalars
    figure_every: int = 1000     # steps between figures (0: never)
    tensorboard: bool = True
    progress: bool = True


@dataclass
class CheckpointConfig:
    """Checkpoint cadence (``last.pt`` and ``best.pt`` are written every epoch)."""

    every: int = 10              # epochs between ``epoch_XXXX.pt`` snapshots (0: never)


@dataclass
class TrainConfig:
    """Root of ``configs/train.yaml``."""

    device: str = "auto"          # auto | cpu | cuda | cuda:N
    seed: int = 0
    epochs: int = MISSING
    max_steps: Optional[int] = None   # stop after this many optimiser steps (smoke tests)
    resume: Optional[str] = None      # null | auto | path to a checkpoint
    run_dir: Optional[str] = None     # null: Hydra's run dir (or ./outputs without Hydra)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    log: LogConfig = field(default_factory=LogConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)


def register_configs() -> None:
    """Register :class:`TrainConfig` in Hydra's ConfigStore under :data:`SCHEMA_NAME`."""
    ConfigStore.instance().store(name=SCHEMA_NAME, node=TrainConfig)


register_configs()


def validate_config(cfg: Any) -> DictConfig:
    """Merge ``cfg`` into the typed schema; raise ``ValueError`` naming the offending key.

    Args:
        cfg: a DictConfig (from Hydra) or a plain dict.
    Returns:
        a typed, struct-mode DictConfig (``hydra`` node dropped).
    """
    typed = merge_into_schema(TrainConfig, cfg, "EDTN config")
    if len(typed.optim.betas) != 2:
        raise ValueError(f"optim.betas must hold 2 numbers, got {list(typed.optim.betas)}")
    for key in ("epochs", "data.batch_size", "data.eval_batch_size"):
        if OmegaConf.select(typed, key) <= 0:
            raise ValueError(f"{key} must be > 0, got {OmegaConf.select(typed, key)}")
    if typed.data.frames_per_video is not None and typed.data.frames_per_video <= 0:
        raise ValueError(f"data.frames_per_video must be null or > 0, got {typed.data.frames_per_video}")
    return typed
