"""DECA coarse encoder: ResNet-50 trunk + 2-layer head, the official weight loader, code layout.

Architecture (as in DECA's ``ResnetEncoder``): ResNet-50 with Bottleneck blocks [3, 4, 6, 3]
(stride on the 3x3 conv), no fc, a fixed ``AvgPool2d(7)`` — so the input must be 224x224 — then
``Linear(2048, 1024) -> ReLU -> Linear(1024, outsize)``. ``outsize`` is 236 for ``E_flame`` and 128
for ``E_detail``. Input: RGB in [0, 1], NCHW, **no** mean/std normalisation.

State-dict keys are exactly those of DECA (``encoder.conv1.weight``, ``encoder.layer1.0.bn1.*``,
``encoder.layer1.0.downsample.{0,1}.*``, ..., ``layers.0.*``, ``layers.2.*``), so the released
``deca_model.tar`` loads strictly.

The 236 outputs split, in this order, into shape 100 | tex 50 | exp 50 | pose 6 | cam 3 | light 27
(:data:`PARAM_LAYOUT`, :func:`decompose`).
"""
from __future__ import annotations

import logging
import os
from typing import Any, Mapping, Optional

import torch
from torch import nn

from infra.assets import resolve_asset
from infra.checkpoint import (UnsafeFileError, load_torch_file, state_dict_problems,
                              strip_wrapper_prefixes)

__all__ = [
    "INPUT_SIZE",
    "FEATURE_DIM",
    "FLAME_PARAM_DIM",
    "DETAIL_DIM",
    "PARAM_LAYOUT",
    "Bottleneck",
    "ResNet50Trunk",
    "DecaEncoder",
    "DecaCheckpointError",
    "decompose",
    "clean_state_dict",
    "check_state_dict",
    "load_encoder_state",
    "load_deca_checkpoint",
]

_logger = logging.getLogger(__name__)

INPUT_SIZE = 224            # AvgPool2d(7) after a /32 trunk fixes the input to 224x224
FEATURE_DIM = 2048          # ResNet-50 trunk output
HIDDEN_DIM = 1024           # head hidden layer
FLAME_PARAM_DIM = 236       # E_flame output
DETAIL_DIM = 128            # E_detail output
RESNET50_BLOCKS = (3, 4, 6, 3)
RESNET_WIDTHS = (64, 128, 256, 512)
BOTTLENECK_EXPANSION = 4
FINAL_POOL = 7
LIGHT_SHAPE = (9, 3)        # 9 spherical-harmonics bands x RGB, row-major in the flat vector

# (name, size) in the order DECA slices the 236 outputs; offsets 0, 100, 150, 200, 206, 209.
PARAM_LAYOUT: tuple[tuple[str, int], ...] = (
    ("shape", 100), ("tex", 50), ("exp", 50), ("pose", 6), ("cam", 3), ("light", 27))

# Checkpoint entries: the coarse encoder, the detail encoder.
FLAME_ENTRY = "E_flame"
DETAIL_ENTRY = "E_detail"
# Prefixes added by DataParallel / torch.compile wrappers; stripped before loading.
OPTIONAL_SUFFIX = ".num_batches_tracked"


# ----------------------------------------------------------------------------- network
class Bottleneck(nn.Module):
    """ResNet bottleneck (1x1 -> 3x3 with the stride -> 1x1 x4) with an optional projection shortcut.

    Args:
        inplanes: input channels.
        planes: bottleneck width; output channels are ``planes * 4``.
        stride: stride of the 3x3 conv (and of the shortcut projection).
    """

    expansion = BOTTLENECK_EXPANSION

    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: Optional[nn.Sequential] = None
        if stride != 1 or inplanes != out:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, out, 1, stride=stride, bias=False),
                                            nn.BatchNorm2d(out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.relu(y + shortcut)


class ResNet50Trunk(nn.Module):
    """ResNet-50 without fc: ``(B,3,224,224) -> (B,2048)`` (fixed 7x7 average pool)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, RESNET_WIDTHS[0], 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(RESNET_WIDTHS[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        inplanes = RESNET_WIDTHS[0]
        for stage, (planes, blocks) in enumerate(zip(RESNET_WIDTHS, RESNET50_BLOCKS), start=1):
            stride = 1 if stage == 1 else 2
            layer = []
            for block in range(blocks):
                layer.append(Bottleneck(inplanes, planes, stride if block == 0 else 1))
                inplanes = planes * BOTTLENECK_EXPANSION
            setattr(self, f"layer{stage}", nn.Sequential(*layer))
        self.avgpool = nn.AvgPool2d(FINAL_POOL, stride=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)


class DecaEncoder(nn.Module):
    """DECA ``ResnetEncoder``: images ``(B,3,224,224)`` RGB in [0,1] -> ``(B, outsize)``.

    Args:
        outsize: 236 for the coarse FLAME encoder (``E_flame``), 128 for ``E_detail``.

    ``forward(images)`` returns the raw parameters; :meth:`features` the 2048-d trunk output;
    :meth:`forward_with_features` both; :meth:`encode` the decomposed dict (outsize 236 only).
    """

    def __init__(self, outsize: int = FLAME_PARAM_DIM):
        super().__init__()
        self.outsize = outsize
        self.encoder = ResNet50Trunk()
        self.layers = nn.Sequential(nn.Linear(FEATURE_DIM, HIDDEN_DIM), nn.ReLU(), nn.Linear(HIDDEN_DIM, outsize))

    @staticmethod
    def _check_images(images: torch.Tensor) -> None:
        if images.ndim != 4 or images.shape[1] != 3 or tuple(images.shape[-2:]) != (INPUT_SIZE, INPUT_SIZE):
            raise ValueError(f"DecaEncoder expects images (B,3,{INPUT_SIZE},{INPUT_SIZE}) RGB in [0,1] (its "
                             f"AvgPool2d({FINAL_POOL}) fixes the size); got {tuple(images.shape)}. Crop/resize "
                             "with deca_edit.crop first.")

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Trunk output ``(B, 2048)``."""
        self._check_images(images)
        return self.encoder(images)

    def forward_with_features(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(params (B,outsize), features (B,2048))`` in one pass."""
        feats = self.features(images)
        return self.layers(feats), feats

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Raw parameters ``(B, outsize)`` (no final activation)."""
        return self.layers(self.features(images))

    def encode(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Decomposed codes of :func:`decompose` (coarse encoder only)."""
        if self.outsize != FLAME_PARAM_DIM:
            raise ValueError(f"encode() needs the {FLAME_PARAM_DIM}-output FLAME encoder, this one has {self.outsize}")
        return decompose(self(images))


def decompose(params):
    """Split raw E_flame outputs into named codes.

    Args:
        params: ``(B, 236)`` torch tensor or numpy array.

    Returns:
        ``{"shape": (B,100), "tex": (B,50), "exp": (B,50), "pose": (B,6), "cam": (B,3),
        "light": (B,9,3)}`` (views; light row-major: ``light[b,i,c] = params[b, 209 + 3i + c]``).
        Nothing is transformed (cam not exponentiated, jaw stays axis-angle).
    """
    if params.ndim != 2 or params.shape[1] != FLAME_PARAM_DIM:
        raise ValueError(f"decompose expects (B,{FLAME_PARAM_DIM}) parameters, got {tuple(params.shape)}")
    codes, start = {}, 0
    for name, size in PARAM_LAYOUT:
        codes[name] = params[:, start:start + size]
        start += size
    codes["light"] = codes["light"].reshape(-1, *LIGHT_SHAPE)
    return codes


# ----------------------------------------------------------------------------- checkpoint loading
class DecaCheckpointError(ValueError):
    """A DECA checkpoint entry does not match the encoder (missing / unexpected / mis-shaped keys)."""


def clean_state_dict(state: Mapping[str, Any]) -> dict[str, Any]:
    """Copy of ``state`` with DataParallel / torch.compile prefixes (``module.``, ``_orig_mod.``) removed."""
    return strip_wrapper_prefixes(state)


def check_state_dict(state: Mapping[str, Any], model: nn.Module, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Match ``state`` against ``model``'s state dict strictly and return a dict ready for loading.

    ``*.num_batches_tracked`` entries are optional (old checkpoints lack them; the model's own
    values are used). Everything else must be present, expected and of the right shape.

    Raises:
        DecaCheckpointError: one message listing every missing, unexpected and mis-shaped key,
            naming ``source``.
    """
    state = clean_state_dict(state)
    own = model.state_dict()
    problems = state_dict_problems(state, own, optional_suffixes=(OPTIONAL_SUFFIX,))
    if problems:
        raise DecaCheckpointError(f"{source} does not match the DECA encoder "
                                  f"(outsize {getattr(model, 'outsize', '?')}):\n  " + "\n  ".join(problems))
    return {k: state.get(k, own[k]) for k in own}


def load_encoder_state(model: nn.Module, state: Mapping[str, Any], source: str = "checkpoint") -> nn.Module:
    """Strictly load ``state`` into ``model`` after :func:`check_state_dict`; returns ``model``."""
    model.load_state_dict(check_state_dict(state, model, source), strict=True)
    return model


def load_deca_checkpoint(path: Optional[str | os.PathLike] = None, device: str | torch.device = "cpu",
                         with_detail: bool = False, trust_checkpoint: bool = False):
    """Build DECA encoder(s) from the official ``deca_model.tar``.

    Args:
        path: the file; ``None`` looks it up through ``infra.assets.resolve_asset('deca_model')``
            (``$EDTN_HOME/deca_model.tar``).
        device: where to put the encoders; the file is read with ``map_location`` so a CUDA-saved
            checkpoint loads on a CPU-only machine.
        with_detail: also build ``E_detail`` (outsize 128).
        trust_checkpoint: the explicit opt-in to a full unpickle (only for files you created); by
            default the file loads with ``weights_only`` (the official layout needs nothing more).

    Returns:
        ``E_flame`` as a :class:`DecaEncoder` in eval mode, or ``(E_flame, E_detail)`` when
        ``with_detail``.

    Raises:
        infra.assets.AssetError: the file is missing (names ``deca_model.tar`` and where to get it).
        infra.checkpoint.UnsafeFileError: the file needs pickle globals outside the allow-list.
        DecaCheckpointError: the file is not a DECA checkpoint or an entry does not match the
            encoder strictly (lists the missing / unexpected / mis-shaped keys).
    """
    from infra.runtime import resolve_device

    device = resolve_device(device)
    found = resolve_asset("deca_model", path)
    try:
        checkpoint = load_torch_file(found, map_location=device, trust_checkpoint=trust_checkpoint)
    except UnsafeFileError:
        raise
    except Exception as exc:  # noqa: BLE001 - any reader error means an unusable file
        raise DecaCheckpointError(f"{found}: cannot be read as a torch checkpoint (truncated, corrupt "
                                  f"or not deca_model.tar): {type(exc).__name__}: {str(exc)[:300]}") from exc
    wanted = [(FLAME_ENTRY, FLAME_PARAM_DIM)] + ([(DETAIL_ENTRY, DETAIL_DIM)] if with_detail else [])
    if not isinstance(checkpoint, Mapping):
        raise DecaCheckpointError(f"{found}: expected a dict with {[w for w, _ in wanted]}, got {type(checkpoint).__name__}")
    encoders = []
    for entry, outsize in wanted:
        if entry not in checkpoint or not isinstance(checkpoint[entry], Mapping):
            raise DecaCheckpointError(f"{found}: no {entry!r} state dict (entries: {sorted(map(str, checkpoint))}); "
                                      "is this DECA's deca_model.tar?")
        model = DecaEncoder(outsize)
        load_encoder_state(model, checkpoint[entry], source=f"{found} [{entry}]")
        encoders.append(model.to(device).eval())
    return tuple(encoders) if with_detail else encoders[0]
