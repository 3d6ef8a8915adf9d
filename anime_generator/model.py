"""The anime generator: mapping net, warping net, editing net and the warp.

``AnimeGenerator(config).forward(image, pose, stage)`` reproduces the PIRenderer-style
``FaceGenerator`` of Animo / EDTN (see ``../shared/reference/parity/generator/README.md`` §1). Its
state dict has exactly the authors' 304 keys (including the misspelt prefix ``warpping_net``) so
their checkpoints load strictly (:mod:`anime_generator.checkpoint`).

Images are NCHW float. The input image is in [0,1]; ``warp_image`` is a resampling of it (same
range); ``fake_image`` is the raw tanh output in [-1,1] (``output_range='original'``, trained
against [0,1] targets) or ``(tanh + 1) / 2`` in [0,1] (``'unit'``).
"""
from __future__ import annotations

import dataclasses
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from .config import OUTPUT_RANGES, STAGES, GeneratorConfig
from .layers import (ADAINDecoderBlock, ADAINEncoderBlock, ConvNormAct, FineADAINResBlock,
                     FineADAINResStack, LayerNorm2d, UpConvNormAct)

__all__ = [
    "AnimeGenerator",
    "MappingNet",
    "WarpingNet",
    "EditingNet",
    "flow_to_deformation",
    "warp_image",
    "output_to_unit",
    "unit_to_output",
]

FLOW_HEAD_KERNEL = 7
EDIT_FIRST_KERNEL = 7
EDIT_FINAL_KERNEL = 7
WARP_INPUT_KERNEL = 7


# ============================================================================ range conversion
def output_to_unit(image: torch.Tensor, output_range: str) -> torch.Tensor:
    """Map a generator ``fake_image`` in ``output_range`` to a [0,1] image (the project's range).

    ``original``: the reference trains the raw tanh output directly against [0,1] targets, so
    trained weights (the authors' checkpoints included) already produce [0,1] images; values the
    tanh puts below 0 are clipped: ``clamp(x, 0, 1)``. ``unit``: the output is ``(tanh + 1) / 2``
    and is returned unchanged. Any shape.
    """
    if output_range == "original":
        return image.clamp(0.0, 1.0)
    if output_range == "unit":
        return image
    raise ValueError(f"output_range must be one of {OUTPUT_RANGES}, got {output_range!r}")


def unit_to_output(image: torch.Tensor, output_range: str) -> torch.Tensor:
    """A [0,1] image (e.g. a loss target) in the generator's ``output_range``.

    Both ranges compare their output with [0,1] targets as they are, so this is the identity; it
    exists so that training code states the conversion explicitly. Inverse of
    :func:`output_to_unit` on [0,1] images.
    """
    if output_range not in OUTPUT_RANGES:
        raise ValueError(f"output_range must be one of {OUTPUT_RANGES}, got {output_range!r}")
    return image


# ============================================================================ warp (pure functions)
def _linspace_grid(height: int, width: int, align_corners: bool, like: torch.Tensor) -> torch.Tensor:
    """Normalised sampling grid (height, width, 2), last dim (x, y), in ``like``'s dtype/device."""
    def axis(n: int) -> torch.Tensor:
        if align_corners:
            return torch.linspace(-1.0, 1.0, n, dtype=like.dtype, device=like.device)
        return (torch.arange(n, dtype=like.dtype, device=like.device) * 2 + 1) / n - 1

    ys, xs = torch.meshgrid(axis(height), axis(width), indexing="ij")
    return torch.stack([xs, ys], dim=-1)


def flow_to_deformation(flow: torch.Tensor, warp_align: str = "original") -> torch.Tensor:
    """Pixel flow on the flow grid -> normalised sampling grid on the same grid.

    Args:
        flow: (B, 2, h, w); channel 0 is x, channel 1 is y, in pixels of the h x w grid.
        warp_align: ``original``: ``2 * flow / (size - 1)`` plus an align_corners=True base grid
            (``linspace(-1, 1, size)``), as the reference. ``consistent``: ``2 * flow / size``
            plus the align_corners=False base grid (pixel centres).
    Returns:
        (B, h, w, 2) deformation in ``grid_sample`` coordinates, last dim (x, y).
    """
    if flow.dim() != 4 or flow.shape[1] != 2:
        raise ValueError(f"flow must have shape (B, 2, h, w), got {tuple(flow.shape)}")
    height, width = flow.shape[-2:]
    aligned = warp_align == "original"
    scale_x = 2.0 / (width - 1) if aligned else 2.0 / width
    scale_y = 2.0 / (height - 1) if aligned else 2.0 / height
    flow_norm = torch.cat([flow[:, :1] * scale_x, flow[:, 1:] * scale_y], dim=1)
    return _linspace_grid(height, width, aligned, flow) + flow_norm.permute(0, 2, 3, 1)


def warp_image(image: torch.Tensor, flow: torch.Tensor, warp_align: str = "original") -> torch.Tensor:
    """Resample ``image`` (B,C,H,W) along ``flow`` (B,2,h,w) (pixels of the h x w grid).

    ``original``: the h x w deformation (:func:`flow_to_deformation`) is bilinearly upsampled to
    H x W (align_corners=False) and fed to ``grid_sample(bilinear, border, align_corners=False)``,
    reproducing the reference's mixed conventions (a zero flow is not an identity warp).
    ``consistent``: only the flow is upsampled; the align_corners=False base grid is built at full
    resolution, so a zero flow gives the identity warp. Returns (B,C,H,W).
    """
    if warp_align not in ("original", "consistent"):
        raise ValueError(f"warp_align must be 'original' or 'consistent', got {warp_align!r}")
    size = image.shape[-2:]
    if warp_align == "original":
        deformation = flow_to_deformation(flow, warp_align)
        grid = F.interpolate(deformation.permute(0, 3, 1, 2), size=size, mode="bilinear",
                             align_corners=False).permute(0, 2, 3, 1)
    else:
        height, width = flow.shape[-2:]
        # A displacement of 1 flow-grid pixel is 2/w in normalised coordinates.
        scale = torch.tensor([2.0 / width, 2.0 / height], dtype=flow.dtype, device=flow.device)
        flow_up = F.interpolate(flow, size=size, mode="bilinear", align_corners=False)
        grid = _linspace_grid(size[0], size[1], False, flow) + flow_up.permute(0, 2, 3, 1) * scale
    return F.grid_sample(image, grid, mode="bilinear", padding_mode="border", align_corners=False)


# ============================================================================ sub-networks
class MappingNet(nn.Module):
    """Pose (B, pose_nc) -> descriptor (B, descriptor_nc).

    ``h = first(pose)``, then ``h = encoder_i(h) + h`` with ``encoder_i = [LeakyReLU, Linear]``.
    """

    def __init__(self, config: GeneratorConfig):
        super().__init__()
        self.first = nn.Sequential(nn.Linear(config.pose_nc, config.descriptor_nc))
        for i in range(config.mapping_layers):
            self.add_module(f"encoder{i}", nn.Sequential(
                nn.LeakyReLU(config.leaky_slope), nn.Linear(config.descriptor_nc, config.descriptor_nc)))
        self.num_layers = config.mapping_layers

    def forward(self, pose: torch.Tensor) -> torch.Tensor:
        out = self.first(pose)
        for i in range(self.num_layers):
            out = getattr(self, f"encoder{i}")(out) + out
        return out


class _HourglassEncoder(nn.Module):
    def __init__(self, config: GeneratorConfig):
        super().__init__()
        c = config
        self.input_layer = nn.Conv2d(c.image_nc, c.warp_base_nc, WARP_INPUT_KERNEL,
                                     padding=WARP_INPUT_KERNEL // 2)
        for i in range(c.warp_encoder_layers):
            in_nc = min(c.warp_base_nc * 2 ** i, c.max_nc)
            out_nc = min(c.warp_base_nc * 2 ** (i + 1), c.max_nc)
            self.add_module(f"encoder{i}", ADAINEncoderBlock(
                in_nc, out_nc, c.descriptor_nc, c.adain_hidden, c.leaky_slope, c.norm_eps))
        self.num_layers = c.warp_encoder_layers

    def forward(self, x: torch.Tensor, descriptor: torch.Tensor) -> list[torch.Tensor]:
        x = self.input_layer(x)
        features = [x]
        for i in range(self.num_layers):
            x = getattr(self, f"encoder{i}")(x, descriptor)
            features.append(x)
        return features


class _HourglassDecoder(nn.Module):
    def __init__(self, config: GeneratorConfig):
        super().__init__()
        c = config
        top = c.warp_encoder_layers - 1
        self.indices = list(range(top, c.warp_encoder_layers - c.warp_decoder_layers - 1, -1))
        for i in self.indices:
            in_nc = min(c.warp_base_nc * 2 ** (i + 1), c.max_nc) * (1 if i == top else 2)
            out_nc = min(c.warp_base_nc * 2 ** i, c.max_nc)
            self.add_module(f"decoder{i}", ADAINDecoderBlock(
                in_nc, out_nc, c.descriptor_nc, c.adain_hidden, c.leaky_slope, c.norm_eps))
        last = self.indices[-1]
        # Last decoder output concatenated with the encoder feature of the same size.
        self.out_nc = min(c.warp_base_nc * 2 ** last, c.max_nc) * 2

    def forward(self, features: list[torch.Tensor], descriptor: torch.Tensor) -> torch.Tensor:
        features = list(features)
        x = features.pop()
        for i in self.indices:
            x = getattr(self, f"decoder{i}")(x, descriptor)
            x = torch.cat([x, features.pop()], dim=1)
        return x


class _Hourglass(nn.Module):
    def __init__(self, config: GeneratorConfig):
        super().__init__()
        self.encoder = _HourglassEncoder(config)
        self.decoder = _HourglassDecoder(config)
        self.out_nc = self.decoder.out_nc

    def forward(self, x: torch.Tensor, descriptor: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x, descriptor), descriptor)


class WarpingNet(nn.Module):
    """Image (B,3,H,W) + descriptor -> dict(flow_field (B,2,h,w), warp_image (B,3,H,W)).

    ``h = H / config.flow_scale``. The flow is in pixels of the h x w grid, channel 0 = x.
    """

    def __init__(self, config: GeneratorConfig):
        super().__init__()
        self.hourglass = _Hourglass(config)
        self.flow_out = nn.Sequential(
            LayerNorm2d(self.hourglass.out_nc, config.norm_eps),
            nn.LeakyReLU(config.leaky_slope),
            nn.Conv2d(self.hourglass.out_nc, 2, FLOW_HEAD_KERNEL, padding=FLOW_HEAD_KERNEL // 2))
        self.warp_align = config.warp_align
        # Inference optimisation: run the 2-output-channel head conv on an NHWC copy (see _FinalBlock).
        self.nhwc_flow_head = False

    def forward(self, image: torch.Tensor, descriptor: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.hourglass(image, descriptor)
        if self.nhwc_flow_head:
            features = self.flow_out[1](self.flow_out[0](features))
            flow = self.flow_out[2](features.contiguous(memory_format=torch.channels_last)).contiguous()
        else:
            flow = self.flow_out(features)
        return {"flow_field": flow, "warp_image": warp_image(image, flow, self.warp_align)}


class _FinalBlock(nn.Module):
    """``model = [Conv7 (C -> 3), Tanh]`` (the attribute name ``model`` is the original's layout).

    ``nhwc`` (inference optimisation): run the conv on an NHWC copy of the input; oneDNN handles a
    3-output-channel conv much better in that layout on CPU (same result up to rounding).
    """

    def __init__(self, in_nc: int, out_nc: int, kernel_size: int):
        super().__init__()
        self.model = nn.Sequential(nn.Conv2d(in_nc, out_nc, kernel_size, padding=kernel_size // 2),
                                   nn.Tanh())
        self.nhwc = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.nhwc:
            x = self.model[0](x.contiguous(memory_format=torch.channels_last))
            return torch.tanh(x.contiguous())
        return self.model(x)


class _EditEncoder(nn.Module):
    def __init__(self, config: GeneratorConfig):
        super().__init__()
        c = config
        self.first = ConvNormAct(2 * c.image_nc, c.edit_base_nc, EDIT_FIRST_KERNEL, c.leaky_slope,
                                 c.norm_eps)
        for i in range(c.edit_layers):
            in_nc = min(c.edit_base_nc * 2 ** i, c.max_nc)
            out_nc = min(c.edit_base_nc * 2 ** (i + 1), c.max_nc)
            self.add_module(f"down{i}", ConvNormAct(in_nc, out_nc, 3, c.leaky_slope, c.norm_eps, pool=True))
        self.num_layers = c.edit_layers

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.first(x)
        features = [x]
        for i in range(self.num_layers):
            x = getattr(self, f"down{i}")(x)
            features.append(x)
        return features


class _EditDecoder(nn.Module):
    def __init__(self, config: GeneratorConfig):
        super().__init__()
        c = config
        for i in reversed(range(c.edit_layers)):
            in_nc = min(c.edit_base_nc * 2 ** (i + 1), c.max_nc)
            out_nc = min(c.edit_base_nc * 2 ** i, c.max_nc)
            self.add_module(f"up{i}", UpConvNormAct(in_nc, out_nc, c.leaky_slope, c.norm_eps))
            self.add_module(f"res{i}", FineADAINResStack(c.edit_num_res_blocks, in_nc, c.descriptor_nc,
                                                         c.adain_hidden, c.norm_eps))
            self.add_module(f"jump{i}", ConvNormAct(out_nc, out_nc, 3, c.leaky_slope, c.norm_eps))
        self.final = _FinalBlock(c.edit_base_nc, c.image_nc, EDIT_FINAL_KERNEL)
        self.num_layers = c.edit_layers

    def forward(self, features: list[torch.Tensor], descriptor: torch.Tensor) -> torch.Tensor:
        x = features[-1]
        for i in reversed(range(self.num_layers)):
            x = getattr(self, f"res{i}")(x, descriptor)
            x = getattr(self, f"up{i}")(x) + getattr(self, f"jump{i}")(features[i])
        return self.final(x)


class EditingNet(nn.Module):
    """(image, warp_image, descriptor) -> tanh image (B,3,H,W) in [-1,1].

    U-Net over ``cat([image, warp_image])`` (6 channels): LayerNorm2d conv encoder, decoder of
    FineADAINResBlocks + nearest-upsampling convs with conv skip ("jump") connections.
    """

    def __init__(self, config: GeneratorConfig):
        super().__init__()
        self.encoder = _EditEncoder(config)
        self.decoder = _EditDecoder(config)

    def forward(self, image: torch.Tensor, warped: torch.Tensor, descriptor: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(torch.cat([image, warped], dim=1)), descriptor)


# ============================================================================ the generator
class AnimeGenerator(nn.Module):
    """PIRenderer-style anime face generator.

    ``forward(image (B,3,H,W) in [0,1], pose (B,20), stage='gen'|'warp')`` returns a dict with
    ``flow_field`` (B,2,H/4,W/4; pixels of that grid, channel 0 = x), ``warp_image`` (B,3,H,W) and,
    for ``stage='gen'``, ``fake_image`` (B,3,H,W) in the config's ``output_range``.
    The pose is 17 morphs in [0,1] followed by 3 angles in degrees, unnormalised.
    H = W = ``config.image_size``.
    """

    def __init__(self, config: GeneratorConfig | None = None):
        super().__init__()
        # A private copy: set_skip_dead_branch() must not mutate the caller's config.
        self.config = dataclasses.replace(config) if config is not None else GeneratorConfig()
        self.mapping_net = MappingNet(self.config)
        self.warpping_net = WarpingNet(self.config)  # sic: the original's key prefix
        self.editing_net = EditingNet(self.config)
        self.set_skip_dead_branch(self.config.skip_dead_branch)

    # ------------------------------------------------------------------ options
    def set_skip_dead_branch(self, skip: bool = True) -> "AnimeGenerator":
        """Skip (or run) the dead conv1/norm1 computation of every FineADAINResBlock."""
        self.config.skip_dead_branch = bool(skip)
        for module in self.modules():
            if isinstance(module, FineADAINResBlock):
                module.skip_dead_branch = bool(skip)
        return self

    def to_unit(self, fake_image: torch.Tensor) -> torch.Tensor:
        """``fake_image`` in this model's ``output_range`` -> [0,1]."""
        return output_to_unit(fake_image, self.config.output_range)

    def from_unit(self, image: torch.Tensor) -> torch.Tensor:
        """[0,1] image (e.g. a loss target) -> this model's ``output_range``."""
        return unit_to_output(image, self.config.output_range)

    # ------------------------------------------------------------------ dead parameters
    def dead_parameter_names(self) -> list[str]:
        """Names of the 48 parameters that never affect the output (FineADAINResBlock conv1/norm1).

        They get no gradient in the original either; keep them out of the optimiser
        (:meth:`trainable_parameters`) but keep them in checkpoints for strict loading.
        """
        names = []
        for prefix, module in self.named_modules():
            if isinstance(module, FineADAINResBlock):
                for child in FineADAINResBlock.DEAD_CHILDREN:
                    names.extend(f"{prefix}.{child}.{n}"
                                 for n, _ in getattr(module, child).named_parameters())
        return names

    def named_trainable_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        """``named_parameters()`` without the dead ones (see :meth:`dead_parameter_names`)."""
        dead = set(self.dead_parameter_names())
        return ((n, p) for n, p in self.named_parameters() if n not in dead)

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters to give the optimiser: every parameter except the dead ones."""
        return (p for _, p in self.named_trainable_parameters())

    # ------------------------------------------------------------------ forward
    def _check_inputs(self, image: torch.Tensor, pose: torch.Tensor, stage: str) -> None:
        c = self.config
        if stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
        if image.dim() != 4 or image.shape[1] != c.image_nc:
            raise ValueError(f"image must have shape (B, {c.image_nc}, H, W), got {tuple(image.shape)}")
        if tuple(image.shape[-2:]) != (c.image_size, c.image_size):
            raise ValueError(f"image is {tuple(image.shape[-2:])} but the generator config says "
                             f"image_size={c.image_size}; resize the input or set image_size")
        if pose.dim() != 2 or pose.shape != (image.shape[0], c.pose_nc):
            raise ValueError(f"pose must have shape (B={image.shape[0]}, {c.pose_nc}), got {tuple(pose.shape)}")
        if not torch.isfinite(pose).all():
            raise ValueError("pose contains NaN or inf")

    def forward(self, image: torch.Tensor, pose: torch.Tensor, stage: str = "gen") -> dict[str, torch.Tensor]:
        """See the class docstring. ``stage='warp'`` skips the editing net (no ``fake_image``)."""
        self._check_inputs(image, pose, stage)
        descriptor = self.mapping_net(pose)
        out = self.warpping_net(image, descriptor)
        if stage == "warp":
            return out
        fake = self.editing_net(image, out["warp_image"], descriptor)
        if self.config.output_range == "unit":
            fake = (fake + 1) / 2  # tanh range -> [0,1]
        out["fake_image"] = fake
        return out
