"""The conformance kit's deterministic weight-fill rules.

Tests fill models with them to compare against the kit's vectors, and
``scripts/make_standin_assets.py`` fills its stand-in weights with them, so that a stand-in file is
reproducible byte for byte. Two rules, both documented in ../shared/reference/parity:

* :func:`sine_fill` - generator and VGG19 (generator README section 2): a sine of the flat index,
  phase from crc32(key) mod 1000.
* :func:`splitmix_fill` - DECA encoder (flame_deca README section 5): a splitmix64 hash of
  (crc32(key) << 32) + index mapped to [-1, 1).

Both are computed in float64 and cast to float32 at the end; :func:`fill_module` applies one to
every entry of a module's state dict.
"""
from __future__ import annotations

import zlib
from typing import Callable

import numpy as np
import torch

__all__ = ["sine_fill", "splitmix_fill", "fill_state_dict", "fill_module"]

SINE_FREQUENCY = 0.37
SINE_PHASE_MODULUS = 1000
GOLDEN_GAMMA = np.uint64(0x9E3779B97F4A7C15)
MIX_1 = np.uint64(0xBF58476D1CE4E5B9)
MIX_2 = np.uint64(0x94D049BB133111EB)


def _crc(key: str) -> int:
    return zlib.crc32(key.encode("utf-8")) & 0xFFFFFFFF


def sine_fill(key: str, shape: tuple[int, ...]) -> np.ndarray:
    """Generator / VGG19 rule. Returns a float32 array of ``shape``."""
    n = int(np.prod(shape)) if len(shape) else 1
    leaf = key.rsplit(".", 1)[-1]
    v = np.sin(SINE_FREQUENCY * np.arange(n, dtype=np.float64) + (_crc(key) % SINE_PHASE_MODULUS))
    if leaf == "bias":
        w = 0.01 * v
    elif leaf == "running_mean":
        w = 0.1 * v
    elif leaf == "running_var":
        w = 1 + 0.5 * np.abs(v)
    elif leaf == "num_batches_tracked":
        return np.zeros(shape, dtype=np.int64)
    elif leaf == "weight" and len(shape) == 1:
        w = 1 + 0.1 * v
    elif len(shape) >= 2:
        w = v / np.sqrt(np.prod(shape[1:]))
    else:
        raise ValueError(f"sine_fill: no rule for key {key!r} with shape {shape}")
    return w.reshape(shape).astype(np.float32)


def _splitmix_uniform(key: str, n: int) -> np.ndarray:
    """s_i in [-1, 1) for i = 0..n-1 (uint64 arithmetic wraps mod 2**64)."""
    with np.errstate(over="ignore"):
        z = (np.uint64(_crc(key)) << np.uint64(32)) + np.arange(n, dtype=np.uint64) + GOLDEN_GAMMA
        z = (z ^ (z >> np.uint64(30))) * MIX_1
        z = (z ^ (z >> np.uint64(27))) * MIX_2
        z = z ^ (z >> np.uint64(31))
    return 2.0 * ((z >> np.uint64(11)).astype(np.float64) * 2.0**-53) - 1.0


def splitmix_fill(key: str, shape: tuple[int, ...], batchnorm_prefixes: set[str]) -> np.ndarray:
    """DECA encoder rule. ``batchnorm_prefixes`` are the module paths P with a P.running_mean key."""
    leaf = key.rsplit(".", 1)[-1]
    prefix = key.rsplit(".", 1)[0] if "." in key else ""
    if leaf == "num_batches_tracked":
        return np.zeros(shape, dtype=np.int64)
    n = int(np.prod(shape)) if len(shape) else 1
    s = _splitmix_uniform(key, n)
    if prefix in batchnorm_prefixes:
        table = {"weight": 1 + 0.1 * s, "bias": 0.1 * s, "running_mean": 0.1 * s,
                 "running_var": 1 + 0.5 * np.abs(s)}
        w = table[leaf]
    elif leaf == "weight":
        w = s * np.sqrt(3.0 / (n / shape[0]))
    elif leaf == "bias":
        w = 0.01 * s
    else:
        raise ValueError(f"splitmix_fill: no rule for key {key!r}")
    return w.reshape(shape).astype(np.float32)


def fill_state_dict(state: dict[str, torch.Tensor],
                    rule: Callable[[str, tuple[int, ...]], np.ndarray]) -> dict[str, torch.Tensor]:
    """New state dict with every entry replaced by ``rule(key, shape)`` (dtype kept)."""
    return {k: torch.from_numpy(rule(k, tuple(v.shape))).to(v.dtype) for k, v in state.items()}


def fill_module(module: torch.nn.Module, rule: str = "sine") -> torch.nn.Module:
    """Fill ``module`` in place by the ``sine`` (generator/VGG) or ``splitmix`` (DECA) rule."""
    state = module.state_dict()
    if rule == "sine":
        fn = sine_fill
    elif rule == "splitmix":
        bn = {k[: -len(".running_mean")] for k in state if k.endswith(".running_mean")}
        fn = lambda key, shape: splitmix_fill(key, shape, bn)  # noqa: E731
    else:
        raise ValueError(f"unknown fill rule {rule!r}")
    module.load_state_dict(fill_state_dict(state, fn), strict=True)
    return module
