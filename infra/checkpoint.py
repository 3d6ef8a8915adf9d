"""Checkpoint reading and key handling shared by every loader (EDTN, DECA encoder, anime generator).

:func:`load_torch_file` reads a checkpoint safely (``weights_only``) and falls back, with a warning,
for the authors' files that pickle config objects next to the weights. Two small pure functions,
in the spirit of timm's ``clean_state_dict`` and strict loading, then check the keys:

* :func:`strip_wrapper_prefixes` removes the ``module.`` (DistributedDataParallel) and
  ``_orig_mod.`` (``torch.compile``) prefixes a saved state dict may carry;
* :func:`state_dict_problems` lists, in readable lines, every missing, unexpected, mis-shaped or
  non-tensor entry of a state dict compared with a model's, so a loader can raise one clear error
  instead of letting ``load_state_dict`` fail (or, like the original DECA code, skip silently).
"""
from __future__ import annotations

import logging
import os
import pickle
from typing import Any, Iterable, Mapping

import torch

__all__ = ["WRAPPER_PREFIXES", "load_torch_file", "strip_wrapper_prefixes", "format_keys",
           "state_dict_problems"]

_logger = logging.getLogger(__name__)

WRAPPER_PREFIXES = ("module.", "_orig_mod.")
MAX_KEYS_LISTED = 12


def load_torch_file(path: str | os.PathLike, map_location: Any = "cpu", allow_unsafe_fallback: bool = True) -> Any:
    """``torch.load(path, map_location)`` with ``weights_only=True``.

    Trainer checkpoints (DECA's tar, Lightning ``.ckpt``) may pickle argparse Namespaces or
    hyper-parameter dicts next to the weights, which the safe loader refuses
    (``pickle.UnpicklingError``). Such a file is then loaded fully, with a logged warning: only
    files the user pointed us to get here, but unpickling can run code. With
    ``allow_unsafe_fallback=False`` (files that are plain tensor dicts, e.g. the FID Inception
    weights) it raises ``ValueError`` instead. Other errors (a missing, truncated or foreign
    file) propagate unchanged.
    """
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        if not allow_unsafe_fallback:
            raise ValueError(f"{path} holds pickled objects besides tensors; it is not loaded "
                             f"(weights_only=True refused it: {str(exc).splitlines()[0]})") from exc
        _logger.warning("%s holds pickled non-tensor objects; loading it with weights_only=False "
                        "(only do this for files you trust)", path)
        return torch.load(path, map_location=map_location, weights_only=False)


def strip_wrapper_prefixes(state: Mapping[str, Any]) -> dict[str, Any]:
    """Copy of ``state`` with leading ``module.`` / ``_orig_mod.`` (any number, any order) removed."""
    out = {}
    for key, value in state.items():
        stripped = True
        while stripped:
            stripped = False
            for prefix in WRAPPER_PREFIXES:
                if key.startswith(prefix):
                    key, stripped = key[len(prefix):], True
        out[key] = value
    return out


def format_keys(keys: Iterable[str], limit: int = MAX_KEYS_LISTED) -> str:
    """``'a, b, c'``, or the first ``limit`` keys and ``'... (N in all)'``."""
    keys = list(keys)
    shown = ", ".join(keys[:limit])
    return f"{shown}, ... ({len(keys)} in all)" if len(keys) > limit else shown


def state_dict_problems(state: Mapping[str, Any], expected: Mapping[str, torch.Tensor],
                        optional_suffixes: tuple[str, ...] = ()) -> list[str]:
    """Every way ``state`` differs from ``expected`` (a model's ``state_dict()``), one line each.

    Args:
        state: the loaded entries (prefixes already stripped).
        expected: the model's state dict (names and shapes are compared).
        optional_suffixes: keys ending like this may be absent (e.g. ``.num_batches_tracked`` of
            old BatchNorm checkpoints).
    Returns:
        An empty list when ``state`` loads strictly, else lines such as ``"2 missing keys: a, b"``.
    """
    missing = [k for k in expected if k not in state and not k.endswith(optional_suffixes or ("\0",))]
    unexpected = sorted(k for k in state if k not in expected)
    not_tensors = [k for k in expected if k in state and not isinstance(state[k], torch.Tensor)]
    mismatched = [f"{k} {tuple(state[k].shape)} (model {tuple(v.shape)})" for k, v in expected.items()
                  if isinstance(state.get(k), torch.Tensor) and state[k].shape != v.shape]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys: {format_keys(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys: {format_keys(unexpected)}")
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatches: {format_keys(mismatched)}")
    if not_tensors:
        problems.append(f"{len(not_tensors)} non-tensor values: {format_keys(not_tensors)}")
    return problems
