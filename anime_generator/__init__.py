"""Anime generator (PIRenderer-style FaceGenerator of Animo / EDTN): model, checkpoint import,
inference preparation."""
from .config import GeneratorConfig
from .model import (AnimeGenerator, EditingNet, MappingNet, WarpingNet, flow_to_deformation,
                    output_to_unit, unit_to_output, warp_image)
from .checkpoint import CheckpointError, checkpoint_filter_fn, generator_checkpoint, load_generator
from .inference import generate, prepare_for_inference, restore_reference_mode

__all__ = [
    "GeneratorConfig",
    "AnimeGenerator",
    "MappingNet",
    "WarpingNet",
    "EditingNet",
    "flow_to_deformation",
    "warp_image",
    "output_to_unit",
    "unit_to_output",
    "CheckpointError",
    "checkpoint_filter_fn",
    "generator_checkpoint",
    "load_generator",
    "prepare_for_inference",
    "restore_reference_mode",
    "generate",
]
