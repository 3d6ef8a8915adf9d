"""VGG19 multi-scale perceptual loss (L1 on relu_k_1 features) with an optional Gram style term.

This reproduces the loss used to train the anime generator (generator README §5) term by term on
inputs of at least 256 px, and also works on smaller inputs (>= 32 px):

* The network is torchvision's ``vgg19().features`` layout, but only the modules up to the deepest
  layer in use are built (module 29, relu_5_1, by default). The original also ran the final
  max-pool, which is why it needed >= 256 px with 4 scales (quirk 18); skipping it changes no
  value of any used layer.
* At each scale a layer whose feature map would be smaller than ``min_feature_size`` pixels
  (after the max-pools in front of it) is skipped, together with everything deeper at that scale.
  Its term is reported as 0 with ``used=False`` in :class:`PerceptualBreakdown`. With the default
  4 scales every term is used at >= 256 px; at 64 px, for example, scale 3 is 8 px and keeps
  relu_1_1..relu_4_1 (8, 4, 2, 1 px) but drops relu_5_1.
* Scales whose input would be smaller than 1 px are skipped entirely.

Input range (``input_range``):

* ``"original"`` (default, parity): ``x -> (x + 1) / 2`` then ImageNet mean/std, i.e. the input is
  assumed to be in [-1, 1]. The original feeds [0, 1] images through it (quirk 1); keep this mode
  to reproduce the authors' numbers.
* ``"unit"``: the input is in [0, 1]; only the ImageNet mean/std normalisation is applied. This is
  the correct choice when both the prediction and the target are in [0, 1].

The VGG19 weights are ImageNet weights read from torchvision's cache through
:func:`infra.assets.resolve_asset` (asset ``vgg19``, file ``vgg19-dcbb9e9d.pth``); nothing is ever
downloaded here. The network is frozen (``requires_grad=False``), stays in eval mode, and its
tensors are stored as non-persistent buffers, so it never appears in any state dict or checkpoint.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from infra.assets import AssetError, resolve_asset
from infra.checkpoint import load_torch_file

__all__ = [
    "VGG19_CFG",
    "VGG19_LAYER_INDEX",
    "DEFAULT_LAYERS",
    "INPUT_RANGES",
    "build_vgg19_features",
    "load_vgg19_features",
    "VGG19FeatureExtractor",
    "PerceptualBreakdown",
    "PerceptualLoss",
    "gram_matrix",
]

# torchvision's VGG19 ("E") feature layout: channel counts and "M" for a 2x2 max-pool.
VGG19_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
             512, 512, 512, 512, "M", 512, 512, 512, 512, "M")
# Module index of each relu_k_1 inside vgg19().features (generator_manifest.json).
VGG19_LAYER_INDEX = {"relu_1_1": 1, "relu_2_1": 6, "relu_3_1": 11, "relu_4_1": 20, "relu_5_1": 29}
DEFAULT_LAYERS = ("relu_1_1", "relu_2_1", "relu_3_1", "relu_4_1", "relu_5_1")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INPUT_RANGES = ("original", "unit")
TORCHVISION_PREFIX = "features."
DOWNSAMPLE_FACTOR = 0.5
DEFAULT_MIN_FEATURE_SIZE = 1


def build_vgg19_features(num_modules: Optional[int] = None) -> nn.Sequential:
    """Randomly initialised VGG19 feature stack with torchvision's module indices.

    Args:
        num_modules: keep only the first ``num_modules`` modules (``None``: all 37). The state-dict
            keys (``0.weight``, ``0.bias``, ..., ``34.bias``) equal those of
            ``torchvision.models.vgg19().features`` restricted to the kept modules.
    """
    layers: list[nn.Module] = []
    in_ch = 3
    for item in VGG19_CFG:
        if item == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(in_ch, int(item), kernel_size=3, padding=1), nn.ReLU(inplace=False)]
            in_ch = int(item)
    if num_modules is not None:
        layers = layers[:num_modules]
    return nn.Sequential(*layers)


def load_vgg19_features(path: str | os.PathLike | None = None,
                        num_modules: Optional[int] = None) -> nn.Sequential:
    """VGG19 feature stack with the ImageNet weights from torchvision's cache.

    Args:
        path: explicit ``vgg19-dcbb9e9d.pth`` (a config value); ``None`` looks in ``$EDTN_HOME`` and
            ``$TORCH_HOME/hub/checkpoints`` (see :func:`infra.assets.resolve_asset`).
        num_modules: as in :func:`build_vgg19_features`.

    Raises:
        AssetError: the file is missing (the message names ``vgg19-dcbb9e9d.pth``) or holds no
            ``features.N.*`` tensors of the right shapes.
    """
    file = resolve_asset("vgg19", path)
    state = load_torch_file(file, map_location="cpu")
    features = {k[len(TORCHVISION_PREFIX):]: v for k, v in state.items() if k.startswith(TORCHVISION_PREFIX)}
    net = build_vgg19_features(num_modules)
    wanted = net.state_dict()
    missing = [k for k in wanted if k not in features]
    if missing:
        raise AssetError(f"{file} is not torchvision's VGG19 (vgg19-dcbb9e9d.pth): keys "
                         f"{[TORCHVISION_PREFIX + k for k in missing[:4]]}... are missing")
    for key, ref in wanted.items():
        if tuple(features[key].shape) != tuple(ref.shape):
            raise AssetError(f"{file}: {TORCHVISION_PREFIX}{key} has shape {tuple(features[key].shape)}, "
                             f"expected {tuple(ref.shape)} (not torchvision's VGG19)")
    net.load_state_dict({k: features[k] for k in wanted}, strict=True)
    return net


def _as_frozen_buffers(module: nn.Module) -> None:
    """Replace every parameter of ``module`` by a non-persistent, gradient-free buffer."""
    for child in module.modules():
        for name, param in list(child.named_parameters(recurse=False)):
            data = param.detach()
            del child._parameters[name]
            child.register_buffer(name, data, persistent=False)


class VGG19FeatureExtractor(nn.Module):
    """Frozen VGG19 returning the requested ``relu_k_1`` activations.

    The weights are non-persistent buffers: they move with ``.to()`` but are never part of a
    ``state_dict`` (so never in a checkpoint), and nothing here requires a gradient. The module
    always stays in eval mode.

    Args:
        features: a VGG19 feature ``nn.Sequential`` (torchvision indices), e.g. from
            :func:`load_vgg19_features`. It may be longer than needed; it is truncated.
        layers: names from :data:`VGG19_LAYER_INDEX`.
    """

    def __init__(self, features: nn.Sequential, layers: Sequence[str] = DEFAULT_LAYERS):
        super().__init__()
        unknown = [name for name in layers if name not in VGG19_LAYER_INDEX]
        if unknown or not layers:
            raise ValueError(f"perceptual layers {list(layers)}: unknown {unknown}; "
                             f"choose from {list(VGG19_LAYER_INDEX)}")
        self.layers = tuple(sorted(layers, key=VGG19_LAYER_INDEX.__getitem__))
        last = max(VGG19_LAYER_INDEX[name] for name in self.layers)
        if len(features) <= last:
            raise ValueError(f"VGG19 features have {len(features)} modules, need {last + 1} for {self.layers[-1]}")
        self.network = nn.Sequential(*list(features.children())[: last + 1])
        _as_frozen_buffers(self.network)
        self.eval()

    def train(self, mode: bool = True) -> "VGG19FeatureExtractor":  # noqa: ARG002 - always eval
        return super().train(False)

    @staticmethod
    def feature_size(size: int, layer: str) -> int:
        """Spatial size of ``layer``'s map for an input of ``size`` px (floor after each pool)."""
        for _ in range(list(VGG19_LAYER_INDEX).index(layer)):
            size //= 2
        return size

    def forward(self, x: torch.Tensor, layers: Optional[Sequence[str]] = None) -> dict[str, torch.Tensor]:
        """Run up to the deepest requested layer.

        Args:
            x: (B,3,H,W) ImageNet-normalised images.
            layers: subset of ``self.layers`` (default: all of them).

        Returns:
            ``{layer name: (B,C,h,w) activation}``.
        """
        wanted = self.layers if layers is None else tuple(layers)
        index_to_name = {VGG19_LAYER_INDEX[name]: name for name in wanted}
        last = max(index_to_name)
        out: dict[str, torch.Tensor] = {}
        for index, module in enumerate(self.network):
            x = module(x)
            if index in index_to_name:
                out[index_to_name[index]] = x
            if index == last:
                break
        return out


def gram_matrix(features: torch.Tensor) -> torch.Tensor:
    """Gram matrix as in the original: ``f @ (f^T / (h*w*c))`` with ``f`` = (B, c, h*w).

    Args:
        features: (B,C,H,W).

    Returns:
        (B,C,C). The division is applied to the transposed factor before the batched matmul,
        which is the order the original uses (it matters at the last ulp only).
    """
    b, c, h, w = features.shape
    f = features.reshape(b, c, h * w)
    return torch.bmm(f, f.transpose(1, 2) / (h * w * c))


@dataclass
class PerceptualBreakdown:
    """Every term of one :class:`PerceptualLoss` evaluation.

    Attributes:
        total: scalar ``perceptual.sum() + style_weight * style.sum()``.
        perceptual: (num_scales, num_layers) layer-weighted mean L1 per scale and layer.
        style: (num_layers,) mean L1 between Gram matrices at scale 0 (zeros when style is off).
        used: (num_scales, num_layers) bool, False where the map was too small and skipped.
    """

    total: torch.Tensor
    perceptual: torch.Tensor
    style: torch.Tensor
    used: torch.Tensor


class PerceptualLoss(nn.Module):
    """Multi-scale VGG19 L1 perceptual loss plus an optional Gram style term at scale 0.

    ``loss = Σ_scale Σ_layer w_layer · mean|φ_l(x_s) − φ_l(y_s)| + style_weight · Σ_layer mean|G(φ_l(x_0)) − G(φ_l(y_0))|``

    where ``x_s`` is the normalised input bilinearly halved ``s`` times. Target features are
    detached; gradients flow into the input only.

    Args:
        extractor: a :class:`VGG19FeatureExtractor` (may be shared by several losses).
        num_scales: number of scales (original: 4).
        layer_weights: one weight per extractor layer (original: all 1.0); ``None`` = all 1.
        style_weight: weight of the style term (original final-image loss: 250; 0 disables it).
        input_range: ``"original"`` or ``"unit"`` (see the module docstring).
        min_feature_size: smallest feature map (px) that still contributes a term.
    """

    def __init__(self, extractor: VGG19FeatureExtractor, num_scales: int = 4,
                 layer_weights: Optional[Sequence[float]] = None, style_weight: float = 0.0,
                 input_range: str = "original", min_feature_size: int = DEFAULT_MIN_FEATURE_SIZE):
        super().__init__()
        if input_range not in INPUT_RANGES:
            raise ValueError(f"input_range must be one of {INPUT_RANGES}, got {input_range!r}")
        if num_scales < 1:
            raise ValueError(f"num_scales must be >= 1, got {num_scales}")
        if min_feature_size < 1:
            raise ValueError(f"min_feature_size must be >= 1, got {min_feature_size}")
        weights = [1.0] * len(extractor.layers) if layer_weights is None else [float(w) for w in layer_weights]
        if len(weights) != len(extractor.layers):
            raise ValueError(f"layer_weights has {len(weights)} entries for {len(extractor.layers)} layers")
        self.extractor = extractor
        self.num_scales = int(num_scales)
        self.layer_weights = tuple(weights)
        self.style_weight = float(style_weight)
        self.input_range = input_range
        self.min_feature_size = int(min_feature_size)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Map images in the configured range to ImageNet-normalised VGG input."""
        if self.input_range == "original":
            x = (x + 1) / 2
        # Built in the input's dtype from the exact constants: in float64 this matches the
        # original to the last bit (a float32 buffer upcast would not).
        mean = torch.tensor(IMAGENET_MEAN, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        return (x - mean) / std

    def _usable_layers(self, size: int) -> list[str]:
        return [name for name in self.extractor.layers
                if self.extractor.feature_size(size, name) >= self.min_feature_size]

    def breakdown(self, input: torch.Tensor, target: torch.Tensor) -> PerceptualBreakdown:
        """Evaluate every term.

        Args:
            input: (B,3,H,W) prediction, in the configured range; H, W >= 32 recommended.
            target: (B,3,H,W) same range and shape.
        """
        if input.shape != target.shape or input.dim() != 4 or input.shape[1] != 3:
            raise ValueError(f"perceptual loss: input {tuple(input.shape)} and target "
                             f"{tuple(target.shape)} must both be (B,3,H,W)")
        layers = self.extractor.layers
        terms = input.new_zeros(self.num_scales, len(layers))
        style = input.new_zeros(len(layers))
        used = torch.zeros(self.num_scales, len(layers), dtype=torch.bool)
        x, y = self.normalize(input), self.normalize(target)
        total = input.new_zeros(())
        for scale in range(self.num_scales):
            if scale > 0:
                if min(x.shape[-2:]) < 2:
                    break  # the next scale would be below 1 px
                x = F.interpolate(x, scale_factor=DOWNSAMPLE_FACTOR, mode="bilinear",
                                  align_corners=False, recompute_scale_factor=True)
                y = F.interpolate(y, scale_factor=DOWNSAMPLE_FACTOR, mode="bilinear",
                                  align_corners=False, recompute_scale_factor=True)
            wanted = self._usable_layers(min(x.shape[-2:]))
            if not wanted:
                break
            fx = self.extractor(x, wanted)
            fy = self.extractor(y, wanted)
            for j, name in enumerate(layers):
                if name not in fx:
                    continue
                target_feat = fy[name].detach()
                term = self.layer_weights[j] * F.l1_loss(fx[name], target_feat)
                terms[scale, j] = term
                used[scale, j] = True
                total = total + term
                if scale == 0 and self.style_weight != 0:
                    style[j] = F.l1_loss(gram_matrix(fx[name]), gram_matrix(target_feat))
        if self.style_weight != 0:
            total = total + self.style_weight * style.sum()
        return PerceptualBreakdown(total=total, perceptual=terms, style=style, used=used)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Scalar loss; see :meth:`breakdown` for the arguments."""
        return self.breakdown(input, target).total
