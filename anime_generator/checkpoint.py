"""Import of anime-generator weights: the authors' Lightning ``.ckpt``, our own checkpoints and
bare state dicts, loaded strictly with a readable report.

Accepted layouts (see ``../shared/reference/parity/generator/README.md`` §6):

* Lightning checkpoint of the authors: ``{'state_dict': {...}, 'epoch', 'global_step',
  'optimizer_states', ...}``. ``pirender_mlp`` runs (config_EDTN.yaml, 672 keys) hold
  ``generator.*`` and ``generator_ema.*``; ``pirender`` runs (Anime_generator.yaml, 368 keys) hold
  only ``generator.*``. Both also hold two frozen VGG19 copies (``perceptual_*``), ignored here.
* Ours: ``{'format': 'edtn-generator/1', 'generator': sd, 'generator_ema': sd or None, ...}``
  (optionally ``'generator_config'``: a :class:`GeneratorConfig` dict used when no config is given).
* A bare generator state dict (304 keys).

Keys may carry ``module.`` (DDP) or ``_orig_mod.`` (torch.compile) prefixes; they are stripped.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Mapping

import torch

from infra.assets import resolve_asset
from infra.runtime import unwrap_model
from infra.checkpoint import (UnsafeFileError, format_keys, load_torch_file, state_dict_problems,
                              strip_wrapper_prefixes)

from .config import GeneratorConfig
from .model import AnimeGenerator

__all__ = [
    "OUR_FORMAT",
    "CheckpointError",
    "checkpoint_filter_fn",
    "check_state_dict",
    "load_checkpoint_file",
    "load_generator",
    "generator_checkpoint",
]

_logger = logging.getLogger(__name__)

OUR_FORMAT = "edtn-generator/1"
GENERATOR_PREFIX = "generator."
EMA_PREFIX = "generator_ema."


class CheckpointError(ValueError):
    """A file or object is not a loadable anime-generator checkpoint (message says why)."""


# ----------------------------------------------------------------------------- filtering
def _take_prefix(state: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def checkpoint_filter_fn(obj: Any, use_ema: bool = True) -> dict[str, torch.Tensor]:
    """Extract the generator state dict (304 keys, no prefix) from a loaded checkpoint object.

    Args:
        obj: what ``torch.load`` returned (Lightning dict, our format dict or a state dict).
        use_ema: take the EMA weights when the checkpoint has them; when it has none, fall back
            to the trained weights with a logged warning. (The authors' ``infer.py`` uses the
            non-EMA ``generator.`` weights: pass ``use_ema=False`` to reproduce it.)
    Returns:
        ``{key: tensor}`` with the model's key names. Not yet checked against the model; see
        :func:`check_state_dict`.
    Raises:
        CheckpointError: the object holds no generator weights.
    """
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"expected a dict-like checkpoint, got {type(obj).__name__}")

    if "format" in obj:  # ours
        if obj["format"] != OUR_FORMAT:
            raise CheckpointError(f"unknown checkpoint format {obj['format']!r} (expected {OUR_FORMAT!r})")
        ema = obj.get("generator_ema")
        if use_ema and ema:
            state = ema
        else:
            if use_ema:
                _logger.warning("EMA weights requested but the checkpoint has none; using 'generator'")
            state = obj.get("generator")
        if not isinstance(state, Mapping) or not state:
            raise CheckpointError(f"{OUR_FORMAT} checkpoint without a 'generator' state dict")
        return strip_wrapper_prefixes(state)

    if "state_dict" in obj and isinstance(obj["state_dict"], Mapping):  # Lightning
        full = strip_wrapper_prefixes(obj["state_dict"])
        gen = _take_prefix(full, GENERATOR_PREFIX)
        ema = _take_prefix(full, EMA_PREFIX)
        if use_ema and ema:
            return strip_wrapper_prefixes(ema)
        if not gen:
            prefixes = sorted({k.split(".", 1)[0] for k in full})
            raise CheckpointError("Lightning checkpoint without 'generator.*' entries "
                                  f"(top-level prefixes found: {format_keys(prefixes)})")
        if use_ema:
            _logger.warning("EMA weights requested but the checkpoint has no 'generator_ema.*' "
                            "entries (a 'pirender' run); using 'generator.*'")
        return strip_wrapper_prefixes(gen)

    # Bare state dict; also tolerate one wrapped in {'model': sd} or a full Lightning-style prefix.
    if "model" in obj and isinstance(obj["model"], Mapping):
        obj = obj["model"]
    state = strip_wrapper_prefixes(obj)
    if any(k.startswith(GENERATOR_PREFIX) for k in state):
        return checkpoint_filter_fn({"state_dict": state}, use_ema)
    return dict(state)


def check_state_dict(state: Mapping[str, Any], model: torch.nn.Module) -> None:
    """Raise :class:`CheckpointError` listing missing, unexpected and shape-mismatched keys."""
    expected = model.state_dict()
    problems = state_dict_problems(state, expected)
    if problems:
        raise CheckpointError("weights do not match the anime generator "
                              f"({len(expected)} keys expected):\n  " + "\n  ".join(problems))


# ----------------------------------------------------------------------------- file IO
def load_checkpoint_file(path: str | os.PathLike, map_location: Any = "cpu",
                         trust_checkpoint: bool = False) -> Any:
    """Read a checkpoint with :func:`infra.checkpoint.load_torch_file` (``weights_only``; the
    authors' Lightning layout needs nothing more). ``trust_checkpoint`` is the explicit opt-in to a
    full unpickle (only for files you created).

    Raises :class:`infra.checkpoint.UnsafeFileError` for a file that needs other pickle globals,
    and :class:`CheckpointError` naming the file when it cannot be read (truncated, foreign).
    """
    try:
        return load_torch_file(path, map_location=map_location, trust_checkpoint=trust_checkpoint)
    except UnsafeFileError:
        raise
    except Exception as exc:  # noqa: BLE001 - any reader error means an unusable file
        raise CheckpointError(f"{path}: cannot be read as a torch checkpoint (truncated, corrupt "
                              f"or not a checkpoint): {type(exc).__name__}: {str(exc)[:300]}") from exc


def load_generator(path: str | os.PathLike | None = None, use_ema: bool = True,
                   device: str | torch.device = "cpu", config: GeneratorConfig | None = None,
                   asset: str = "generator_default", trust_checkpoint: bool = False) -> AnimeGenerator:
    """Build an :class:`AnimeGenerator` and load weights strictly from a checkpoint file.

    Args:
        path: checkpoint path; ``None`` looks the asset up in the cache
            (``infra.assets.resolve_asset(asset, path)``; raises ``AssetError`` naming the file).
        use_ema: prefer EMA weights when present (see :func:`checkpoint_filter_fn`).
        device: where the model and the loaded tensors go (``map_location``).
        config: architecture/behaviour; default: the checkpoint's ``generator_config`` when it
            has one (our format), else :class:`GeneratorConfig` defaults (the authors').
        asset: ``generator_default`` or ``generator_cartoon``.
        trust_checkpoint: the explicit opt-in to a full unpickle (see :func:`load_checkpoint_file`).
    Returns:
        The model on ``device``, in ``eval()`` mode.
    Raises:
        AssetError: file not found. UnsafeFileError: the file needs pickle globals outside the
        allow-list. CheckpointError: unreadable file or mismatching weights (message names the
        file and lists the offending keys).
    """
    file = resolve_asset(asset, path)
    obj = load_checkpoint_file(file, map_location=device, trust_checkpoint=trust_checkpoint)
    try:
        state = checkpoint_filter_fn(obj, use_ema=use_ema)
        if config is None and isinstance(obj, Mapping) and isinstance(obj.get("generator_config"), Mapping):
            config = GeneratorConfig.from_dict(obj["generator_config"])
        model = AnimeGenerator(config)
        check_state_dict(state, model)
    except CheckpointError as exc:
        raise CheckpointError(f"{file}: not a usable anime generator checkpoint: {exc}") from exc
    model.load_state_dict(state, strict=True)
    return model.to(device).eval()


def generator_checkpoint(generator: torch.nn.Module, generator_ema: torch.nn.Module | None = None,
                         **extra: Any) -> dict[str, Any]:
    """Our checkpoint dict ``{'format', 'generator', 'generator_ema', 'generator_config', **extra}``.

    Wrappers (DDP ``module``, ``torch.compile``) are unwrapped; no VGG weights are included.
    Save it with ``infra.files.atomic_save``.
    """
    generator = unwrap_model(generator)
    out = {"format": OUR_FORMAT, "generator": generator.state_dict(),
           "generator_ema": unwrap_model(generator_ema).state_dict() if generator_ema is not None else None}
    if isinstance(generator, AnimeGenerator):
        out["generator_config"] = generator.config.to_dict()
    out.update(extra)
    return out
