"""Inference preparation of the anime generator: exact-math speed-ups selected by measurement.

:func:`prepare_for_inference` turns an :class:`~anime_generator.model.AnimeGenerator` into its
fast inference form *in place*; :func:`generate` runs it under ``torch.inference_mode``. The
changes keep the mathematics of the original; only float rounding differs (max abs difference
to the original-equivalent mode is measured by ``scripts/bench_generator.py``; < 1e-4 in float32):

* ``skip_dead_branch``: the editing-net res blocks' dead ``conv1``/``norm1`` work is skipped
  (bit-identical).
* ``subpixel_upsample``: nearest x2 upsampling + 3x3 conv evaluated as four 2x2 convs at low
  resolution (16/36 of the multiply-adds).
* ``fused_norms``: ADAIN as a single ``batch_norm`` with per-sample scale/shift; LayerNorm2d as
  one-group ``group_norm`` (no expanded (C,H,W) affine copies); the LeakyReLU after a LayerNorm2d
  runs in place.
* ``nhwc_final_conv``: the 64->3 7x7 output conv and the 256->2 7x7 flow-head conv run on an NHWC
  copy of their input (oneDNN is several times faster there for so few output channels).
* ``channels_last``: NHWC memory format for the convs (off unless measured to help).
"""
from __future__ import annotations

import torch

from .layers import ADAIN, ConvNormAct, LayerNorm2d, UpConvNormAct
from .model import AnimeGenerator, _FinalBlock

__all__ = ["prepare_for_inference", "restore_reference_mode", "generate"]


def _set_flags(model: AnimeGenerator, subpixel: bool, fused: bool, nhwc_final: bool) -> None:
    for module in model.modules():
        if isinstance(module, UpConvNormAct):
            module.subpixel = subpixel
        if isinstance(module, (ADAIN, LayerNorm2d)):
            module.fused = fused
        if isinstance(module, _FinalBlock):
            module.nhwc = nhwc_final
    # A LeakyReLU that directly follows a LayerNorm2d acts on a fresh tensor: run it in place.
    # (Not the mapping net's, whose input is reused by the residual sum.)
    for module in model.modules():
        if isinstance(module, ConvNormAct):
            module.model[2].inplace = fused
    model.warpping_net.flow_out[1].inplace = fused
    model.warpping_net.nhwc_flow_head = nhwc_final


def prepare_for_inference(model: AnimeGenerator, *, skip_dead_branch: bool = True,
                          subpixel_upsample: bool = True, fused_norms: bool = True,
                          nhwc_final_conv: bool = True, channels_last: bool = False) -> AnimeGenerator:
    """Switch ``model`` (in place) to the fast inference mode and return it, in ``eval()`` mode.

    Parameters keep their names, shapes and values, so checkpoints still load and save the same;
    gradients are turned off. Undo with :func:`restore_reference_mode`.
    """
    if not isinstance(model, AnimeGenerator):
        raise TypeError(f"prepare_for_inference expects an AnimeGenerator, got {type(model).__name__}")
    model.eval()
    model.requires_grad_(False)
    model.set_skip_dead_branch(skip_dead_branch)
    _set_flags(model, subpixel_upsample, fused_norms, nhwc_final_conv)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    model.inference_channels_last = channels_last
    return model


def restore_reference_mode(model: AnimeGenerator) -> AnimeGenerator:
    """Undo :func:`prepare_for_inference` (original computation, contiguous NCHW weights)."""
    _set_flags(model, False, False, False)
    model.set_skip_dead_branch(False)
    model.to(memory_format=torch.contiguous_format)
    model.inference_channels_last = False
    return model


def generate(model: AnimeGenerator, image: torch.Tensor, pose: torch.Tensor,
             stage: str = "gen") -> dict[str, torch.Tensor]:
    """``model(image, pose, stage)`` under ``torch.inference_mode`` (NHWC input when prepared so)."""
    with torch.inference_mode():
        if getattr(model, "inference_channels_last", False):
            image = image.contiguous(memory_format=torch.channels_last)
        return model(image, pose, stage)
