"""Checkpoint reading and key handling shared by every loader (EDTN, DECA encoder, anime generator).

:func:`load_torch_file` is the one way a torch file is read. It always uses
``torch.load(weights_only=True)``: tensors, numbers, strings and plain containers, nothing that can
run code. A file that needs anything else is refused with :class:`UnsafeFileError`, whose message
names the file, the offending pickle globals and the opt-in. Only with the explicit opt-in
(``trust_checkpoint=True``; ``trust_checkpoint=true`` in configs, ``--trust-checkpoint`` in
scripts) is a file unpickled fully, with a logged warning: that can run any code inside the file,
so it is meant only for files the user created.

Which globals the official layouts need (found by scanning the pickles and loading files built in
each layout; ``tests/test_trust.py`` keeps checking it):

* the authors' Lightning ``.ckpt`` (pytorch-lightning 1.5.8, torch 1.9; layout in the kit's
  ``generator/README.md`` §6: ``epoch``, ``global_step``, ``pytorch-lightning_version``,
  ``state_dict``, ``callbacks`` keyed by a string ``state_key``, ``optimizer_states`` (Adam),
  ``lr_schedulers`` (StepLR); no ``hyper_parameters``): only ``collections.OrderedDict``,
  ``torch._utils._rebuild_tensor_v2`` and the ``torch.*Storage`` types, all in torch's default
  allow-list;
* DECA's ``deca_model.tar`` (``E_flame``/``E_detail``/``D_detail`` state dicts, optionally an
  optimiser state and counters): the same;
* ``EDTN.pt`` and our own checkpoints: the same (RNG states are stored as tensors and tuples).

One extra global is allowed, inside a scoped :func:`torch.serialization.safe_globals` (never
registered process-wide): ``argparse.Namespace``, which trainers built on argparse pickle as their
hyper-parameters. Rebuilding it only sets attributes; it runs no code.

Two small pure functions, in the spirit of timm's ``clean_state_dict`` and strict loading, then
check the keys:

* :func:`strip_wrapper_prefixes` removes the ``module.`` (DistributedDataParallel) and
  ``_orig_mod.`` (``torch.compile``) prefixes a saved state dict may carry;
* :func:`state_dict_problems` lists, in readable lines, every missing, unexpected, mis-shaped or
  non-tensor entry of a state dict compared with a model's, so a loader can raise one clear error
  instead of letting ``load_state_dict`` fail (or, like the original DECA code, skip silently).
"""
from __future__ import annotations

import argparse
import logging
import os
import pickle
import re
from typing import Any, Iterable, Mapping, Sequence

import torch

__all__ = ["WRAPPER_PREFIXES", "TRUST_OPT_IN", "EXTRA_SAFE_GLOBALS", "UnsafeFileError",
           "load_torch_file", "unsafe_globals", "strip_wrapper_prefixes", "format_keys",
           "state_dict_problems"]

_logger = logging.getLogger(__name__)

WRAPPER_PREFIXES = ("module.", "_orig_mod.")
MAX_KEYS_LISTED = 12
TRUST_OPT_IN = "trust_checkpoint=true (infer.py) or --trust-checkpoint (scripts)"
# Harmless globals beyond torch's default allow-list, used only inside a scoped safe_globals.
EXTRA_SAFE_GLOBALS: tuple = (argparse.Namespace,)
_GLOBAL_IN_MESSAGE = re.compile(r"GLOBAL ([\w.]+)")


class UnsafeFileError(ValueError):
    """A model file needs pickle globals outside the allow-list (it could run code), and the
    user did not opt in to trusting it. ``path`` and ``globals`` say which file and which names."""

    def __init__(self, path: str | os.PathLike, names: Sequence[str], what: str = "file"):
        self.path = str(path)
        self.globals = list(names)
        shown = (", ".join(self.globals) if self.globals
                 else "an unsupported pickle construct (or the file is corrupt)")
        super().__init__(
            f"{path}: refused to load this {what}: it references {shown}, which a plain "
            "weights/arrays file never needs; loading it could run code hidden in the file. If "
            f"you created this file yourself and trust it, pass {TRUST_OPT_IN} (a full unpickle, "
            "only for files you created).")


def unsafe_globals(path: str | os.PathLike) -> list[str]:
    """Pickle globals of a torch (zip) file that ``weights_only`` would refuse, without loading it.

    Returns an empty list for legacy (non-zip) files, which torch cannot scan.
    """
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except (ValueError, RuntimeError, OSError, AttributeError):
        return []
    extra = {f"{g.__module__}.{g.__qualname__}" for g in EXTRA_SAFE_GLOBALS}
    return [n for n in names if n not in extra]


def load_torch_file(path: str | os.PathLike, map_location: Any = "cpu",
                    trust_checkpoint: bool = False) -> Any:
    """``torch.load(path, map_location, weights_only=True)``, the one torch-file reader.

    Args:
        path: the file.
        map_location: as for :func:`torch.load` (always pass one: no surprise GPU tensors).
        trust_checkpoint: the explicit opt-in to a full unpickle (can run code; only for files the
            user created). Logged as a warning.
    Raises:
        UnsafeFileError: the file needs globals outside the allow-list and ``trust_checkpoint`` is
            off; the message names the file, the globals and the opt-in.
        Other errors of :func:`torch.load` (missing, truncated, foreign file) propagate unchanged.
    """
    if trust_checkpoint:
        _logger.warning("%s: loading with a full unpickle (trust_checkpoint is set): this runs any "
                        "code inside the file; only do this for files you created", path)
        return torch.load(path, map_location=map_location, weights_only=False)
    try:
        with torch.serialization.safe_globals(list(EXTRA_SAFE_GLOBALS)):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        message = str(exc)
        if "Weights only load failed" not in message:  # a corrupt file, not a refused one
            raise
        names = unsafe_globals(path) or sorted(set(_GLOBAL_IN_MESSAGE.findall(message)))
        raise UnsafeFileError(path, names, "torch file") from None
    except RuntimeError as exc:
        if "legacy .tar format" in str(exc):  # torch cannot check such files safely
            raise UnsafeFileError(path, ["(legacy .tar serialization, cannot be checked)"],
                                  "torch file") from None
        raise


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
