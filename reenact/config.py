"""Typed schema of the inference config (``configs/infer.yaml``), shared by ``infer.py`` and the demo.

The dataclasses are registered in Hydra's ConfigStore as ``infer_schema``; ``configs/infer.yaml``
lists it first in its defaults, so every YAML value and command-line override is type-checked at
compose time (``fps=abc`` and ``batch_size=1.5`` fail naming the key). :func:`validate_infer_config`
repeats that check for configs built without Hydra (a dict from the demo or a test), adds the range
checks, and returns a typed :class:`InferConfig` *object*: the pipeline never sees a DictConfig.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

from infra.typed_config import merge_into_schema
from reenact.pose import PoseOptions

__all__ = [
    "SCHEMA_NAME",
    "RenderMode",
    "Layout",
    "GeneratorStyle",
    "SourceComposite",
    "AngleMode",
    "SmoothingMethod",
    "MappingName",
    "SmoothingConfig",
    "InferConfig",
    "validate_infer_config",
    "pose_options",
]

SCHEMA_NAME = "infer_schema"
DEFAULT_FPS = 25.0   # VoxCeleb's frame rate; used for inputs without one


class RenderMode(str, Enum):
    anime = "anime"  # run the generator and write `out`
    none = "none"    # poses only (no generator, no source image)


class Layout(str, Enum):
    single = "single"  # the anime frame alone
    grid = "grid"      # driving | [mesh] | anime | [morph chart]


class GeneratorStyle(str, Enum):
    default = "default"  # asset generator_default
    cartoon = "cartoon"  # asset generator_cartoon


class SourceComposite(str, Enum):
    round = "round"        # ours: alpha compositing rounded to nearest
    truncate = "truncate"  # the original's rgba2rgb (float32, truncated)


class AngleMode(str, Enum):
    reference = "reference"  # axis-angle components used as Euler angles (original)
    euler = "euler"          # proper intrinsic X-Z-Y Euler angles


class MappingName(str, Enum):
    edtn = "edtn"              # the trained EDTN network
    basis_fit = "basis_fit"    # training-free: box-constrained fit in expression space
    vertex_fit = "vertex_fit"  # training-free: per-frame optimum of EDTN's vertex loss (needs FLAME)


class SmoothingMethod(str, Enum):
    none = "none"
    ema = "ema"
    one_euro = "one_euro"


@dataclass
class SmoothingConfig:
    """Causal temporal smoothing of all 20 pose values (see :mod:`reenact.pose`)."""

    method: SmoothingMethod = SmoothingMethod.none
    ema_alpha: float = 0.5
    min_cutoff: float = 1.0
    beta: float = 0.0
    d_cutoff: float = 1.0


@dataclass
class InferConfig:
    """Every option of ``infer.py``; comments and defaults in ``configs/infer.yaml``."""

    # inputs / outputs
    driving: str = MISSING
    driving_video: Optional[str] = None
    max_frames: Optional[int] = None
    source: Optional[str] = None
    out: Optional[str] = "anime.mp4"
    fps: Optional[float] = None
    default_fps: float = DEFAULT_FPS
    pose_csv: Optional[str] = None
    pose_npy: Optional[str] = None
    pose_plot: Optional[str] = None
    grid_out: Optional[str] = None
    overwrite: bool = False
    strict_frames: bool = False
    # models
    generator: GeneratorStyle = GeneratorStyle.default
    generator_path: Optional[str] = None
    use_ema: bool = True
    mapping: MappingName = MappingName.edtn
    edtn_path: Optional[str] = None
    basis_path: Optional[str] = None
    deca_path: Optional[str] = None
    flame_path: Optional[str] = None
    landmark_embedding_path: Optional[str] = None
    trust_checkpoint: bool = False
    # face detection / cropping
    aligned: bool = False
    detector: str = "auto"
    # pose post-processing
    angle_mode: AngleMode = AngleMode.reference
    mouth_gain: float = 1.0
    relative: bool = False
    smoothing: SmoothingConfig = field(default_factory=SmoothingConfig)
    # rendering
    render: RenderMode = RenderMode.anime
    layout: Layout = Layout.single
    show_morphs: bool = True
    show_mesh: bool = False
    source_composite: SourceComposite = SourceComposite.round
    # runtime
    device: str = "auto"
    batch_size: int = 8
    progress: bool = True


def register_configs() -> None:
    """Register :class:`InferConfig` in Hydra's ConfigStore under :data:`SCHEMA_NAME`."""
    ConfigStore.instance().store(name=SCHEMA_NAME, node=InferConfig)


register_configs()

_EMPTY = ("", "null", "none", "None")


def _blank_to_none(typed: Any, keys: tuple[str, ...]) -> None:
    for key in keys:
        if getattr(typed, key) in _EMPTY:
            setattr(typed, key, None)


def pose_options(cfg: InferConfig, fps: float = DEFAULT_FPS) -> PoseOptions:
    """The pose post-processing options of ``cfg`` at frame rate ``fps``."""
    s = cfg.smoothing
    return PoseOptions(angle_mode=cfg.angle_mode.value, mouth_gain=cfg.mouth_gain,
                       relative=cfg.relative, smoothing=s.method.value, ema_alpha=s.ema_alpha,
                       min_cutoff=s.min_cutoff, beta=s.beta, d_cutoff=s.d_cutoff, fps=fps)


def validate_infer_config(cfg: Any) -> InferConfig:
    """Type- and range-check an ``infer.yaml``-shaped config (DictConfig, dict or InferConfig).

    Returns:
        a typed :class:`InferConfig` object (empty strings of optional paths become ``None``).
    Raises:
        ValueError: naming the first offending key (``fps``, ``batch_size``, ``smoothing.beta`` ...).
    """
    if isinstance(cfg, InferConfig):
        cfg = OmegaConf.structured(cfg)
    typed: InferConfig = OmegaConf.to_object(merge_into_schema(InferConfig, cfg, "infer config"))
    _blank_to_none(typed, ("driving_video", "source", "out", "pose_csv", "pose_npy", "pose_plot",
                           "grid_out", "generator_path", "edtn_path", "basis_path", "deca_path",
                           "flame_path", "landmark_embedding_path"))
    if typed.driving in _EMPTY:
        raise ValueError("config key 'driving' is required (video, frame folder, image, .mat code "
                         "folder or packed codes)")
    if typed.batch_size < 1:
        raise ValueError(f"config key 'batch_size' must be >= 1, got {typed.batch_size}")
    if typed.max_frames is not None and typed.max_frames < 1:
        raise ValueError(f"config key 'max_frames' must be >= 1 or null, got {typed.max_frames}")
    for key in ("fps", "default_fps"):
        value = getattr(typed, key)
        if value is not None and not (value > 0 and math.isfinite(value)):
            raise ValueError(f"config key {key!r} must be a frame rate > 0, got {value}")
    if not (math.isfinite(typed.mouth_gain) and typed.mouth_gain >= 0):
        raise ValueError(f"config key 'mouth_gain' must be a finite number >= 0, got {typed.mouth_gain}")
    s = typed.smoothing
    if not 0 < s.ema_alpha <= 1:
        raise ValueError(f"config key 'smoothing.ema_alpha' must be in (0, 1], got {s.ema_alpha}")
    for key in ("min_cutoff", "d_cutoff"):
        if not getattr(s, key) > 0:
            raise ValueError(f"config key 'smoothing.{key}' must be > 0 (Hz), got {getattr(s, key)}")
    if s.beta < 0:
        raise ValueError(f"config key 'smoothing.beta' must be >= 0, got {s.beta}")
    from deca_edit.crop import DETECTOR_CHOICES

    if typed.detector not in DETECTOR_CHOICES:
        raise ValueError(f"config key 'detector' must be one of {DETECTOR_CHOICES}, got {typed.detector!r}")
    if typed.render is RenderMode.anime:
        if typed.out is None:
            raise ValueError("config key 'out' is required unless render=none")
        if typed.source is None:
            raise ValueError("config key 'source' (the anime image) is required unless render=none")
    return typed
