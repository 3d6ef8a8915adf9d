"""EDTN: the expression-domain translation MLP (DECA expression + jaw -> 17 anime morphs).

The network is the authors' 4-layer MLP. Its layers live in an ``nn.Sequential`` called ``main``
so that the state-dict keys are ``main.{0,2,4,6}.{weight,bias}`` and the released ``EDTN.pt`` (a
plain state dict) loads with a strict key check.

Loading goes through one filter, :func:`checkpoint_filter_fn`, that accepts both the authors'
plain state dict and our training checkpoints (``{'model': state_dict, ...}``, possibly saved
from a DDP- or ``torch.compile``-wrapped model). :func:`export_edtn` writes the inverse: a plain,
``EDTN.pt``-compatible state dict.
"""
from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path
from typing import Any, Mapping, Union

import torch
from torch import nn

from deca_edit.codes import edtn_input_from_code156  # re-exported for convenience
from infra.assets import resolve_asset
from infra.files import atomic_save
from infra.runtime import unwrap_model
from infra.checkpoint import (UnsafeFileError, format_keys, load_torch_file, state_dict_problems,
                              strip_wrapper_prefixes)

__all__ = [
    "EDTN",
    "EDTN_IN_DIM",
    "EDTN_HIDDEN_DIM",
    "EDTN_OUT_DIM",
    "LEAKY_SLOPE",
    "checkpoint_filter_fn",
    "load_edtn",
    "export_edtn",
    "edtn_input_from_code156",
]

EDTN_IN_DIM = 53  # DECA expression (50) + jaw axis-angle (3)
EDTN_HIDDEN_DIM = 512
EDTN_OUT_DIM = 17  # anime morphs, each in [0, 1]
LEAKY_SLOPE = 0.2

# Wrapper prefixes that training code may leave in front of every key.
# Keys under which a training checkpoint may hold the model's state dict.
_CHECKPOINT_MODEL_KEYS = ("model", "state_dict")


class EDTN(nn.Module):
    """Maps DECA expression codes to anime morph weights.

    Layers: Linear 53->512, LeakyReLU(0.2), Linear 512->512, LeakyReLU(0.2), Linear 512->512,
    LeakyReLU(0.2), Linear 512->17, Sigmoid, held in ``self.main``.
    """

    def __init__(self, in_dim: int = EDTN_IN_DIM, hidden_dim: int = EDTN_HIDDEN_DIM,
                 out_dim: int = EDTN_OUT_DIM, negative_slope: float = LEAKY_SLOPE) -> None:
        super().__init__()
        self.in_dim = in_dim
        self.out_dim = out_dim
        self.main = nn.Sequential(
            nn.Linear(in_dim, hidden_dim),
            nn.LeakyReLU(negative_slope),
            nn.Linear(hidden_dim, hidden_dim),
            nn.LeakyReLU(negative_slope),
            nn.Linear(hidden_dim, hidden_dim),
            nn.LeakyReLU(negative_slope),
            nn.Linear(hidden_dim, out_dim),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, 53) = DECA exp (50) ⊕ jaw pose (3)  ->  morphs (B, 17) in [0, 1].

        The batch axis is always kept (B = 1 gives (1, 17)); raises ``ValueError`` for any other
        input shape.
        """
        if x.dim() != 2 or x.shape[1] != self.in_dim:
            raise ValueError(f"EDTN input must have shape (B, {self.in_dim}) "
                             f"(DECA exp 50 + jaw 3), got {tuple(x.shape)}")
        return self.main(x)


# ----------------------------------------------------------------------------- loading / export
def checkpoint_filter_fn(checkpoint: Mapping[str, Any]) -> "OrderedDict[str, torch.Tensor]":
    """Turn anything we save or the authors released into a plain EDTN state dict.

    Accepts the authors' plain state dict (returned unchanged), or a training checkpoint
    ``{'model': state_dict, ...}`` (also ``'state_dict'``); strips ``module.`` (DDP) and
    ``_orig_mod.`` (``torch.compile``) prefixes. Key *names* are not otherwise changed: a wrong
    key is reported by the strict load in :func:`load_edtn`.
    """
    if not isinstance(checkpoint, Mapping):
        raise ValueError(f"expected a state dict or checkpoint dict, got {type(checkpoint).__name__}")
    state = checkpoint
    for key in _CHECKPOINT_MODEL_KEYS:
        if key in checkpoint and isinstance(checkpoint[key], Mapping):
            state = checkpoint[key]
            break
    return OrderedDict(strip_wrapper_prefixes(state))


def _load_state(model: EDTN, state: Mapping[str, torch.Tensor], source: str) -> None:
    problems = state_dict_problems(state, model.state_dict())
    if problems:
        raise ValueError(f"{source}: not an EDTN state dict (expected keys "
                         f"{format_keys(model.state_dict())}):\n  " + "\n  ".join(problems))
    model.load_state_dict(state, strict=True)


def _read(path: Union[str, os.PathLike], trust_checkpoint: bool) -> Any:
    """:func:`infra.checkpoint.load_torch_file` on CPU; an unreadable file -> ``ValueError``."""
    try:
        return load_torch_file(path, map_location="cpu", trust_checkpoint=trust_checkpoint)
    except UnsafeFileError:
        raise
    except Exception as exc:  # noqa: BLE001 - any reader error means an unusable file
        raise ValueError(f"{path}: cannot be read as a torch checkpoint (truncated, corrupt or not "
                         f"an EDTN file): {type(exc).__name__}: {str(exc)[:300]}") from exc


def load_edtn(path: Union[str, os.PathLike, None] = None,
              device: Union[str, torch.device] = "cpu", trust_checkpoint: bool = False) -> EDTN:
    """Build an :class:`EDTN` and load weights (strict key check), in eval mode.

    Args:
        path: ``EDTN.pt`` or one of our training checkpoints; ``None`` looks up the
            ``edtn_weights`` asset in the cache (``infra.assets.resolve_asset``).
        device: where the model lives.
        trust_checkpoint: the explicit opt-in to a full unpickle (only for files you created).
    Raises:
        AssetError: the file does not exist. UnsafeFileError: the file needs pickle globals outside
        the allow-list. ValueError: unreadable file, or a key is missing / unexpected / has the
        wrong shape (the message names the file and the keys).
    """
    file = resolve_asset("edtn_weights", path)
    checkpoint = _read(file, trust_checkpoint)
    model = EDTN()
    _load_state(model, checkpoint_filter_fn(checkpoint), str(file))
    return model.to(device).eval()


def export_edtn(checkpoint_or_model: Union[nn.Module, Mapping[str, Any], str, os.PathLike],
                out_path: Union[str, os.PathLike]) -> Path:
    """Write an ``EDTN.pt``-compatible plain state dict (CPU float32 tensors) atomically.

    Args:
        checkpoint_or_model: an EDTN (possibly DDP/compile-wrapped), a state dict, a training
            checkpoint dict, or the path of a checkpoint file.
        out_path: destination file.
    Returns: ``out_path`` as a Path. The state dict is checked by loading it into a fresh EDTN.
    """
    source = "model"
    if isinstance(checkpoint_or_model, nn.Module):
        state = unwrap_model(checkpoint_or_model).state_dict()
    elif isinstance(checkpoint_or_model, (str, os.PathLike)):
        source = str(checkpoint_or_model)
        state = _read(checkpoint_or_model, trust_checkpoint=False)
    else:
        state = checkpoint_or_model
    state = checkpoint_filter_fn(state)
    plain = OrderedDict((k, v.detach().to("cpu", torch.float32).contiguous().clone())
                        for k, v in state.items())
    _load_state(EDTN(), plain, source)
    return atomic_save(plain, out_path)
