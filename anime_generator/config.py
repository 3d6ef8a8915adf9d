"""Configuration of the anime generator (PIRenderer-style FaceGenerator used by Animo / EDTN).

The defaults reproduce the authors' ``model_params`` (identical in ``Anime_generator.yaml`` and
``config_EDTN.yaml``) and every numerical convention of the original, so that the authors'
checkpoints load strictly and give the original outputs. The three behaviour switches
(``warp_align``, ``output_range``, ``skip_dead_branch``) default to the original behaviour.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping

__all__ = [
    "GeneratorConfig",
    "WARP_ALIGN_MODES",
    "OUTPUT_RANGES",
    "STAGES",
]

WARP_ALIGN_MODES = ("original", "consistent")
OUTPUT_RANGES = ("original", "unit")
STAGES = ("warp", "gen")


@dataclass
class GeneratorConfig:
    """Architecture and behaviour of :class:`anime_generator.model.AnimeGenerator`.

    Architecture (names follow the original ``model_params``):
        image_size: side of the square input/output images in pixels (256 in the paper). Must be
            divisible by ``2 ** warp_encoder_layers`` (the hourglass bottleneck) and by
            ``2 ** edit_layers``.
        image_nc: image channels (3, RGB).
        pose_nc: driving-pose length (17 morphs in [0,1] + 3 angles in degrees = 20).
        descriptor_nc: mapping-net output width fed to every ADAIN layer.
        mapping_layers: residual Linear layers of the mapping net after the first Linear.
        adain_hidden: width of the ADAIN shared MLP (128 in the original, not configurable there).
        max_nc: channel cap of every conv stack.
        warp_base_nc / warp_encoder_layers / warp_decoder_layers: warping hourglass. The flow grid
            is ``image_size / 2 ** (warp_encoder_layers - warp_decoder_layers)`` (64 at 256²).
        edit_base_nc / edit_layers / edit_num_res_blocks: editing net.
        leaky_slope: slope of every LeakyReLU (0.1).
        norm_eps: eps of InstanceNorm (ADAIN) and LayerNorm2d (1e-5).

    Behaviour (all default to the original):
        warp_align: ``original`` reproduces the mixed align_corners convention of the reference
            warp (base grid built align_corners=True style, upsampling and ``grid_sample`` with
            align_corners=False; a zero flow is *not* an identity warp). ``consistent`` uses the
            align_corners=False convention everywhere and adds the base grid at full resolution,
            so a zero flow is an exact identity warp. Changes numbers: keep ``original`` for the
            authors' checkpoints.
        output_range: what ``fake_image`` holds. ``original``: the raw tanh output in [-1,1],
            which the reference trains directly against [0,1] targets (so trained weights give
            [0,1] images; the image is ``clamp(x, 0, 1)``). ``unit``: ``(tanh + 1) / 2`` in [0,1],
            the range of every other image in this project.
            Convert explicitly with :func:`anime_generator.model.output_to_unit` /
            :func:`anime_generator.model.unit_to_output`.
        skip_dead_branch: skip the ``conv1``/``norm1`` computation of the editing-net
            FineADAINResBlocks, whose result the original computes and then overwrites. The
            output is bit-identical; the 48 tensors stay in the model so checkpoints load.
    """

    image_size: int = 256
    image_nc: int = 3
    pose_nc: int = 20
    descriptor_nc: int = 256
    mapping_layers: int = 3
    adain_hidden: int = 128
    max_nc: int = 256
    warp_base_nc: int = 32
    warp_encoder_layers: int = 5
    warp_decoder_layers: int = 3
    edit_base_nc: int = 64
    edit_layers: int = 3
    edit_num_res_blocks: int = 2
    leaky_slope: float = 0.1
    norm_eps: float = 1e-5
    warp_align: str = "original"
    output_range: str = "original"
    skip_dead_branch: bool = False

    def __post_init__(self) -> None:
        self.validate()

    # ------------------------------------------------------------------ derived sizes
    @property
    def flow_scale(self) -> int:
        """Ratio image size / flow-grid size (4 for the original architecture)."""
        return 2 ** (self.warp_encoder_layers - self.warp_decoder_layers)

    @property
    def flow_size(self) -> int:
        """Side of the (square) flow grid in pixels (64 at image_size 256)."""
        return self.image_size // self.flow_scale

    # ------------------------------------------------------------------ validation / IO
    def validate(self) -> None:
        """Raise ``ValueError`` naming the offending config key when a value is invalid."""
        if self.warp_align not in WARP_ALIGN_MODES:
            raise ValueError(f"generator config key 'warp_align' must be one of {WARP_ALIGN_MODES}, "
                             f"got {self.warp_align!r}")
        if self.output_range not in OUTPUT_RANGES:
            raise ValueError(f"generator config key 'output_range' must be one of {OUTPUT_RANGES}, "
                             f"got {self.output_range!r}")
        for key in ("image_size", "image_nc", "pose_nc", "descriptor_nc", "adain_hidden", "max_nc",
                    "warp_base_nc", "warp_encoder_layers", "warp_decoder_layers", "edit_base_nc",
                    "edit_layers", "edit_num_res_blocks"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"generator config key {key!r} must be a positive int, got {value!r}")
        if self.mapping_layers < 0:
            raise ValueError(f"generator config key 'mapping_layers' must be >= 0, got {self.mapping_layers}")
        if self.warp_decoder_layers >= self.warp_encoder_layers:
            raise ValueError("generator config: 'warp_decoder_layers' must be smaller than "
                             f"'warp_encoder_layers' ({self.warp_decoder_layers} >= {self.warp_encoder_layers})")
        multiple = 2 ** max(self.warp_encoder_layers, self.edit_layers)
        if self.image_size % multiple:
            raise ValueError(f"generator config key 'image_size' must be a multiple of {multiple} "
                             f"(2**warp_encoder_layers / 2**edit_layers), got {self.image_size}")

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (for checkpoints / logging)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None = None, **overrides: Any) -> "GeneratorConfig":
        """Build from a mapping (e.g. a Hydra node); unknown keys raise ``ValueError``."""
        merged = dict(values or {})
        merged.update(overrides)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(merged) - known)
        if unknown:
            raise ValueError(f"unknown generator config key(s) {unknown}; known: {sorted(known)}")
        return cls(**merged)
