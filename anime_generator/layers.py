"""Building blocks of the anime generator: ADAIN, LayerNorm2d and the conv blocks.

Attribute names (``conv_0``, ``norm_s``, ``mlp_shared``, ``model`` ...) are part of the state-dict
layout of the authors' checkpoints; they must not be renamed. Shapes use ``B`` for the batch,
``C`` for channels, ``H, W`` for the spatial size and ``D`` for the descriptor width.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "LayerNorm2d",
    "ADAIN",
    "ADAINEncoderBlock",
    "ADAINDecoderBlock",
    "ConvNormAct",
    "UpConvNormAct",
    "FineADAINResBlock",
    "FineADAINResStack",
    "subpixel_kernels",
    "upsample_conv3x3_subpixel",
]


class LayerNorm2d(nn.Module):
    """Layer norm over (C, H, W) of each sample with a per-channel affine of shape (C, 1, 1).

    ``x (B,C,H,W) -> (B,C,H,W)``; uses ``F.layer_norm`` with the weight/bias expanded to (C,H,W).
    """

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels, 1, 1))
        self.bias = nn.Parameter(torch.zeros(channels, 1, 1))
        # Inference optimisation: one-group GroupNorm is the same normalisation with a per-channel
        # affine, without materialising the (C,H,W) expanded weights (equal up to rounding).
        self.fused = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused:
            return F.group_norm(x, 1, self.weight.view(-1), self.bias.view(-1), self.eps)
        shape = x.shape[1:]
        return F.layer_norm(x, shape, self.weight.expand(shape), self.bias.expand(shape), self.eps)


class ADAIN(nn.Module):
    """Adaptive instance norm driven by a descriptor.

    ``forward(x (B,C,H,W), descriptor (B,D)) -> (B,C,H,W)``:
    ``IN(x) * (1 + mlp_gamma(a)) + mlp_beta(a)`` with ``a = ReLU(mlp_shared(descriptor))`` and
    ``IN`` an affine-free InstanceNorm2d.
    """

    def __init__(self, channels: int, descriptor_nc: int, hidden: int = 128, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.mlp_shared = nn.Sequential(nn.Linear(descriptor_nc, hidden), nn.ReLU())
        self.mlp_gamma = nn.Linear(hidden, channels)
        self.mlp_beta = nn.Linear(hidden, channels)
        # Inference optimisation: normalise and modulate in one batch_norm call over the
        # (1, B*C, H, W) view (per-sample statistics = instance norm); equal up to rounding.
        self.fused = False

    def forward(self, x: torch.Tensor, descriptor: torch.Tensor) -> torch.Tensor:
        if self.fused and x.is_contiguous():
            hidden = self.mlp_shared(descriptor)
            scale = (1 + self.mlp_gamma(hidden)).reshape(-1)
            shift = self.mlp_beta(hidden).reshape(-1)
            batch, channels, height, width = x.shape
            out = F.batch_norm(x.reshape(1, batch * channels, height, width), None, None, scale, shift,
                               True, 0.0, self.eps)
            return out.view(batch, channels, height, width)
        normalized = F.instance_norm(x, eps=self.eps)
        hidden = self.mlp_shared(descriptor)
        gamma = self.mlp_gamma(hidden)[:, :, None, None]
        beta = self.mlp_beta(hidden)[:, :, None, None]
        return normalized * (1 + gamma) + beta


class ADAINEncoderBlock(nn.Module):
    """Warping-hourglass down block: ``conv_1(act(norm_1(conv_0(act(norm_0(x))))))``.

    ``conv_0`` is a 4x4 stride-2 conv (halves H, W), ``conv_1`` a 3x3 conv.
    ``(B,C_in,H,W), (B,D) -> (B,C_out,H/2,W/2)``.
    """

    def __init__(self, in_nc: int, out_nc: int, descriptor_nc: int, hidden: int, slope: float,
                 eps: float):
        super().__init__()
        self.conv_0 = nn.Conv2d(in_nc, out_nc, kernel_size=4, stride=2, padding=1)
        self.conv_1 = nn.Conv2d(out_nc, out_nc, kernel_size=3, stride=1, padding=1)
        self.norm_0 = ADAIN(in_nc, descriptor_nc, hidden, eps)
        self.norm_1 = ADAIN(out_nc, descriptor_nc, hidden, eps)
        self.slope = slope

    def forward(self, x: torch.Tensor, descriptor: torch.Tensor) -> torch.Tensor:
        x = self.conv_0(F.leaky_relu(self.norm_0(x, descriptor), self.slope))
        return self.conv_1(F.leaky_relu(self.norm_1(x, descriptor), self.slope))


class ADAINDecoderBlock(nn.Module):
    """Warping-hourglass up block with a learned shortcut; doubles H, W.

    main:     ``conv_1(act(norm_1(conv_0(act(norm_0(x))))))`` (conv_0 3x3, conv_1 3x3 ConvTranspose
              stride 2, output_padding 1)
    shortcut: ``conv_s(act(norm_s(x)))`` (3x3 ConvTranspose stride 2)
    ``(B,C_in,H,W), (B,D) -> (B,C_out,2H,2W)``.
    """

    def __init__(self, in_nc: int, out_nc: int, descriptor_nc: int, hidden: int, slope: float,
                 eps: float):
        super().__init__()
        up = dict(kernel_size=3, stride=2, padding=1, output_padding=1)
        self.conv_0 = nn.Conv2d(in_nc, out_nc, kernel_size=3, stride=1, padding=1)
        self.conv_1 = nn.ConvTranspose2d(out_nc, out_nc, **up)
        self.conv_s = nn.ConvTranspose2d(in_nc, out_nc, **up)
        self.norm_0 = ADAIN(in_nc, descriptor_nc, hidden, eps)
        self.norm_1 = ADAIN(out_nc, descriptor_nc, hidden, eps)
        self.norm_s = ADAIN(in_nc, descriptor_nc, hidden, eps)
        self.slope = slope

    def forward(self, x: torch.Tensor, descriptor: torch.Tensor) -> torch.Tensor:
        shortcut = self.conv_s(F.leaky_relu(self.norm_s(x, descriptor), self.slope))
        main = self.conv_0(F.leaky_relu(self.norm_0(x, descriptor), self.slope))
        main = self.conv_1(F.leaky_relu(self.norm_1(main, descriptor), self.slope))
        return main + shortcut


class ConvNormAct(nn.Module):
    """``model = [Conv(k, same padding), LayerNorm2d, LeakyReLU(, AvgPool2d(2))]``.

    ``(B,C_in,H,W) -> (B,C_out,H,W)``, or ``(B,C_out,H/2,W/2)`` with ``pool=True``.
    """

    def __init__(self, in_nc: int, out_nc: int, kernel_size: int, slope: float, eps: float,
                 pool: bool = False):
        super().__init__()
        layers = [nn.Conv2d(in_nc, out_nc, kernel_size, stride=1, padding=kernel_size // 2),
                  LayerNorm2d(out_nc, eps), nn.LeakyReLU(slope)]
        if pool:
            layers.append(nn.AvgPool2d(2))
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def subpixel_kernels(conv: nn.Conv2d) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The four phase kernels of :func:`upsample_conv3x3_subpixel`, stacked: weight
    (4*C_out, C_in, 2, 2) and bias (4*C_out,), phase index 2a + b. Cached on ``conv`` and rebuilt
    whenever its weight or bias changes (in-place update, new device or dtype)."""
    weight, bias = conv.weight, conv.bias
    if weight.shape[-2:] != (3, 3) or conv.stride != (1, 1) or conv.padding != (1, 1) or conv.groups != 1:
        raise ValueError("upsample_conv3x3_subpixel needs a 3x3, stride-1, pad-1, ungrouped conv")
    key = tuple((t.data_ptr(), t._version, t.dtype, t.device) for t in (weight, bias) if t is not None)
    cached = getattr(conv, "_subpixel_cache", None)
    if cached is not None and cached[0] == key and not torch.is_grad_enabled():
        return cached[1], cached[2]
    # For output parity p the two low-resolution taps sum the 3x3 taps [start, stop):
    # parity 0 sees offsets (-1, 0) <- taps {0}, {1, 2}; parity 1 sees (0, +1) <- {0, 1}, {2}.
    groups = {0: ((0, 1), (1, 3)), 1: ((0, 2), (2, 3))}
    kernels = []
    for a in (0, 1):
        rows = torch.stack([weight[:, :, r0:r1].sum(2) for r0, r1 in groups[a]], dim=2)
        for b in (0, 1):
            kernels.append(torch.stack([rows[:, :, :, c0:c1].sum(3) for c0, c1 in groups[b]], dim=3))
    stacked = torch.cat(kernels)
    stacked_bias = bias.repeat(4) if bias is not None else None
    if not torch.is_grad_enabled():
        conv._subpixel_cache = (key, stacked, stacked_bias)
    return stacked, stacked_bias


def upsample_conv3x3_subpixel(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """``conv(nearest_upsample_x2(x))`` for a 3x3, stride-1, pad-1 conv, computed at low resolution.

    Each of the four output phases (row parity a, column parity b) of a 3x3 conv applied to a
    nearest-upsampled map only sees a 2x2 neighbourhood of the low-resolution map, with the 3x3
    taps summed into 2x2 taps. One 2x2 conv with the four phase kernels stacked as output channels
    runs on the zero-padded (H+2, W+2) map; phase (a, b) is its output window starting at (a, b).
    That is 16/36 of the multiply-adds of the 3x3 conv at (2H, 2W); same result up to float
    rounding (the taps are pre-summed). ``x (B,C_in,H,W) -> (B,C_out,2H,2W)``.
    """
    weight, bias = subpixel_kernels(conv)
    out = F.conv2d(F.pad(x, (1, 1, 1, 1)), weight, bias)  # (B, 4*C, H+1, W+1)
    out_nc = weight.shape[0] // 4
    batch, height, width = x.shape[0], x.shape[-2], x.shape[-1]
    out = out.view(batch, 2, 2, out_nc, height + 1, width + 1)
    result = out.new_empty(batch, out_nc, height, 2, width, 2)
    for a in (0, 1):
        for b in (0, 1):
            result[:, :, :, a, :, b] = out[:, a, b, :, a:a + height, b:b + width]
    return result.view(batch, out_nc, 2 * height, 2 * width)


class UpConvNormAct(ConvNormAct):
    """Nearest x2 upsampling, then ``model = [Conv3, LayerNorm2d, LeakyReLU]``.

    ``(B,C_in,H,W) -> (B,C_out,2H,2W)``. With ``subpixel`` set (inference optimisation) the
    upsample + conv pair is evaluated at low resolution by :func:`upsample_conv3x3_subpixel`.
    """

    def __init__(self, in_nc: int, out_nc: int, slope: float, eps: float):
        super().__init__(in_nc, out_nc, 3, slope, eps)
        self.subpixel = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.subpixel:
            x = upsample_conv3x3_subpixel(x, self.model[0])
            return self.model[2](self.model[1](x))
        return self.model(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class FineADAINResBlock(nn.Module):
    """Editing-net residual block: ``x + norm2(conv2(x), descriptor)``; no activation after it.

    The original also computes ``norm1(conv1(x))`` and then overwrites the result, so ``conv1`` /
    ``norm1`` never influence the output (the "dead branch"). They are kept so the authors'
    checkpoints load; with ``skip_dead_branch`` the dead computation is not run (bit-identical
    output). ``(B,C,H,W), (B,D) -> (B,C,H,W)``.
    """

    DEAD_CHILDREN = ("conv1", "norm1")

    def __init__(self, channels: int, descriptor_nc: int, hidden: int, eps: float):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, kernel_size=3, padding=1)
        self.norm1 = ADAIN(channels, descriptor_nc, hidden, eps)
        self.norm2 = ADAIN(channels, descriptor_nc, hidden, eps)
        self.skip_dead_branch = False

    def forward(self, x: torch.Tensor, descriptor: torch.Tensor) -> torch.Tensor:
        if not self.skip_dead_branch:
            # Reproduces the original's wasted work (its result is discarded, as there).
            self.norm1(self.conv1(x), descriptor)
        return x + self.norm2(self.conv2(x), descriptor)


class FineADAINResStack(nn.Module):
    """``num_blocks`` FineADAINResBlocks named ``res0, res1, ...`` applied in order."""

    def __init__(self, num_blocks: int, channels: int, descriptor_nc: int, hidden: int, eps: float):
        super().__init__()
        for j in range(num_blocks):
            self.add_module(f"res{j}", FineADAINResBlock(channels, descriptor_nc, hidden, eps))

    def forward(self, x: torch.Tensor, descriptor: torch.Tensor) -> torch.Tensor:
        for block in self.children():
            x = block(x, descriptor)
        return x

