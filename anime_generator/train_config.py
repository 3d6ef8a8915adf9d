"""Typed schema of the anime-generator training config (``configs/train_ag.yaml`` +
``configs/anime_generator/*``).

The dataclasses are registered in Hydra's ConfigStore as ``generator_train_schema``; the primary
config lists it first in its defaults, so every YAML value and command-line override is checked
at compose time (``optim.lr=abc`` fails naming ``optim.lr``). :func:`validate_config` repeats the
check for configs built without Hydra and adds range checks. The numbers we train with live in
the YAML files; defaults here only make the schema complete.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from infra.typed_config import merge_into_schema, to_plain_dict

from .config import GeneratorConfig

__all__ = [
    "Stage", "Precision", "DatasetName", "CompositeMode", "LossInputRange",
    "DataConfig", "JitterConfig", "LossConfig", "OptimConfig", "TrainLoopConfig", "LogConfig",
    "CheckpointConfig", "TrainAGConfig", "SCHEMA_NAME", "register_configs", "validate_config",
    "to_plain_dict",
]

SCHEMA_NAME = "generator_train_schema"


class Stage(str, Enum):
    """Training stage: ``warp`` trains mapping + warping nets only, ``gen`` the whole generator."""

    warp = "warp"
    gen = "gen"


class Precision(str, Enum):
    """Autocast dtype on CUDA (ignored with a warning on CPU)."""

    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"


class DatasetName(str, Enum):
    animeceleb = "animeceleb"            # anime pairs only (what the generator trains on)
    animeceleb_deca = "animeceleb_deca"  # anime pairs + VoxCeleb frames with DECA codes


class CompositeMode(str, Enum):
    round = "round"        # alpha compositing rounded to nearest (ours)
    original = "original"  # skimage rgba2rgb float32 + truncation (the reference)


class LossInputRange(str, Enum):
    original = "original"  # (x+1)/2 then ImageNet mean/std (reference; assumes [-1,1])
    unit = "unit"          # images in [0,1]; ImageNet mean/std only


@dataclass
class JitterConfig:
    """Colour jitter shared by the frames of a clip (0 disables a component)."""

    enabled: bool = True
    brightness: float = 0.1
    contrast: float = 0.1
    saturation: float = 0.1
    hue: float = 0.1


@dataclass
class DataConfig:
    """Dataset layout, pixels and augmentation (generator README §8)."""

    name: DatasetName = DatasetName.animeceleb
    root: str = MISSING                   # AnimeCeleb root (combined_pose.csv, rotation/)
    train_list: str = MISSING             # identity list files (Animo/data/*_list.txt)
    valid_list: Optional[str] = None
    vox_root: Optional[str] = None        # VoxCeleb root with images/ and deca/ (animeceleb_deca)
    csv_name: str = "combined_pose.csv"
    image_folder: str = "rotation"
    cache_path: Optional[str] = None      # null: <root>/cached.json
    image_size: int = MISSING             # frames are resized to this (usually ${model.image_size})
    background: List[int] = field(default_factory=lambda: [255, 255, 255])
    composite: CompositeMode = CompositeMode.round
    resize_filter: str = "bilinear"
    time_flip: bool = True
    horizontal_flip: bool = False
    color_jitter: JitterConfig = field(default_factory=JitterConfig)
    num_repeats: int = 1
    batch_size: int = MISSING             # pairs per optimiser step (global; split across ranks)
    valid_batch_size: int = 8
    num_workers: int = 0


@dataclass
class LossConfig:
    """Perceptual losses (README §5) and their weights (SPEC §6)."""

    warp_weight: float = MISSING          # x perceptual(warp_image, gt)
    final_weight: float = MISSING         # x (perceptual + style_weight*style)(fake_image, gt)
    style_weight: float = MISSING         # style-to-perceptual ratio of the final-image loss
    num_scales: int = 4
    layers: List[str] = field(default_factory=lambda: ["relu_1_1", "relu_2_1", "relu_3_1",
                                                       "relu_4_1", "relu_5_1"])
    layer_weights: List[float] = field(default_factory=lambda: [1.0, 1.0, 1.0, 1.0, 1.0])
    input_range: LossInputRange = LossInputRange.original
    min_feature_size: int = 1
    vgg_path: Optional[str] = None        # null: torchvision cache via infra.assets (vgg19)


@dataclass
class OptimConfig:
    """Adam + StepLR stepped once per epoch."""

    lr: float = MISSING
    betas: List[float] = field(default_factory=lambda: [0.5, 0.999])
    eps: float = 1e-8
    weight_decay: float = 0.0
    lr_step_size: int = 150               # epochs
    lr_gamma: float = 0.2


@dataclass
class TrainLoopConfig:
    """Stages, EMA, precision, initialisation."""

    epochs: int = MISSING
    switch_epoch: int = MISSING           # first epoch of the 'gen' stage
    initial_stage: Stage = Stage.warp
    ema_decay: float = 0.9977843871238888  # 0.5 ** (32 / 10000) per step
    precision: Precision = Precision.fp32
    init: str = "normal"                  # normal (N(0, init_gain), reference) | default (PyTorch)
    init_gain: float = 0.02
    init_checkpoint: Optional[str] = None  # start from these weights (authors' .ckpt or ours)
    trust_init_checkpoint: bool = False    # full unpickle of init_checkpoint (only files you created)
    max_steps_per_epoch: Optional[int] = None  # cut epochs short (smoke tests)
    valid_every: int = 0                  # epochs between validation passes (0: never)
    valid_batches: int = 4


@dataclass
class LogConfig:
    every: int = 50                       # steps between TensorBoard scalars
    image_every: int = 500                # steps between image grids (0: never)
    image_samples: int = 4
    tensorboard: bool = True
    progress: bool = True


@dataclass
class CheckpointConfig:
    every: int = 10                       # epochs between epoch_XXXX.pt snapshots (0: never)


@dataclass
class TrainAGConfig:
    """Root of ``configs/train_ag.yaml``."""

    device: str = "auto"                  # auto | cpu | cuda | cuda:N
    seed: int = 0
    resume: Optional[str] = None          # null | auto | path
    run_dir: Optional[str] = None         # null: Hydra's run dir (or ./outputs/train_ag)
    model: GeneratorConfig = field(default_factory=GeneratorConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainLoopConfig = field(default_factory=TrainLoopConfig)
    log: LogConfig = field(default_factory=LogConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)


def register_configs() -> None:
    """Register :class:`TrainAGConfig` in Hydra's ConfigStore under :data:`SCHEMA_NAME`."""
    ConfigStore.instance().store(name=SCHEMA_NAME, node=TrainAGConfig)


register_configs()

_POSITIVE = ("data.image_size", "data.batch_size", "data.valid_batch_size", "data.num_repeats",
             "loss.num_scales", "train.epochs", "optim.lr_step_size", "log.image_samples")
_NON_NEGATIVE = ("train.switch_epoch", "data.num_workers", "loss.warp_weight", "loss.final_weight",
                 "loss.style_weight", "optim.lr", "log.every", "log.image_every", "checkpoint.every",
                 "train.valid_every")


def validate_config(cfg: Any) -> DictConfig:
    """Merge ``cfg`` into the typed schema; raise ``ValueError`` naming the offending key.

    Args:
        cfg: a DictConfig (from Hydra) or a plain dict.
    Returns:
        a typed DictConfig (the ``hydra`` node dropped).
    """
    typed = merge_into_schema(TrainAGConfig, cfg, "generator training config")
    for key in _POSITIVE:
        if OmegaConf.select(typed, key) <= 0:
            raise ValueError(f"{key} must be > 0, got {OmegaConf.select(typed, key)}")
    for key in _NON_NEGATIVE:
        if OmegaConf.select(typed, key) < 0:
            raise ValueError(f"{key} must be >= 0, got {OmegaConf.select(typed, key)}")
    if len(typed.optim.betas) != 2:
        raise ValueError(f"optim.betas must hold 2 numbers, got {list(typed.optim.betas)}")
    if len(typed.loss.layer_weights) != len(typed.loss.layers):
        raise ValueError(f"loss.layer_weights has {len(typed.loss.layer_weights)} entries for "
                         f"{len(typed.loss.layers)} loss.layers")
    if len(typed.data.background) != 3:
        raise ValueError(f"data.background must be 3 ints (RGB), got {list(typed.data.background)}")
    if not 0.0 <= typed.train.ema_decay <= 1.0:
        raise ValueError(f"train.ema_decay must be in [0, 1], got {typed.train.ema_decay}")
    if typed.train.init not in ("normal", "default"):
        raise ValueError(f"train.init must be 'normal' or 'default', got {typed.train.init!r}")
    if typed.data.name == DatasetName.animeceleb_deca and not typed.data.vox_root:
        raise ValueError("data.vox_root is required for data.name=animeceleb_deca")
    try:
        GeneratorConfig.from_dict(OmegaConf.to_container(typed.model))
    except ValueError as exc:
        raise ValueError(f"model: {exc}") from exc
    return typed
