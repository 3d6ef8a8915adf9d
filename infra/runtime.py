"""Process-level helpers shared by every entry point: device choice, seeding, RNG state capture,
unwrapping DDP / compiled models, and one clear message instead of a traceback.

Nothing here knows about a particular model; ``train.py``, ``train_ag.py``, ``infer.py`` and the
scripts all use the same few functions so that "device" and "seed" mean one thing. File writing
lives in :mod:`infra.files`, a training run's folder in :mod:`infra.run_dir`.
"""
from __future__ import annotations

import logging
import random
from typing import Any

import numpy as np
import torch

from infra.files import OutputBusyError

__all__ = [
    "resolve_device",
    "seed_everything",
    "capture_rng_state",
    "restore_rng_state",
    "unwrap_model",
    "USER_ERRORS",
    "exit_on_user_error",
]

_logger = logging.getLogger(__name__)
DEVICE_CHOICES = ("auto", "cpu", "cuda")


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """Turn a config value (``auto``, ``cpu``, ``cuda``, ``cuda:1``) into a :class:`torch.device`.

    ``auto`` picks CUDA when available, else CPU. Asking for CUDA on a machine without it raises a
    ``ValueError`` that says so (rather than failing later inside a kernel).
    """
    if isinstance(name, torch.device):
        return name
    name = str(name).strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"device={name!r} requested but CUDA is not available on this machine; "
                             "use device=cpu or device=auto")
        return torch.device(name)
    if name == "cpu":
        return torch.device("cpu")
    raise ValueError(f"device must be one of {DEVICE_CHOICES} (or cuda:N), got {name!r}")


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def capture_rng_state() -> dict[str, Any]:
    """RNG states of Python, NumPy, torch CPU and (if present) CUDA, for exact resume.

    Only ints, tuples, strings and tensors, so a checkpoint holding it loads with
    ``torch.load(weights_only=True)`` (NumPy's key array is stored as an int64 tensor).
    """
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {"name": name, "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
                  "pos": int(pos), "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    random.setstate(_as_python_rng_state(state["python"]))
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["gauss"]))
    torch.set_rng_state(torch.as_tensor(state["torch"], dtype=torch.uint8).cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.as_tensor(s, dtype=torch.uint8).cpu() for s in state["cuda"]])


def _as_python_rng_state(state: Any) -> tuple:
    # After a round trip through torch.save the inner tuple may come back as a list.
    version, internal, gauss = state
    return version, tuple(internal), gauss


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """Strip DistributedDataParallel / ``torch.compile`` wrappers before saving a state dict."""
    while True:
        if hasattr(model, "module") and isinstance(model, torch.nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


USER_ERRORS = (FileNotFoundError, ValueError, OutputBusyError)  # AssetError is a FileNotFoundError
EXIT_USER_ERROR = 1
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for Ctrl-C


def exit_on_user_error(program: str, fn, *args, **kwargs):
    """Call ``fn(*args, **kwargs)``; a user-facing error (missing asset or file, bad input or config
    value, refused unsafe file, busy output) prints one line ``<program>: error: <message>`` to
    stderr and exits with status 1 instead of a traceback. Ctrl-C prints
    ``<program>: interrupted`` and exits with status 130: every write is atomic, so nothing
    half-written is left. Other exceptions propagate unchanged (they are bugs).
    """
    import sys

    try:
        return fn(*args, **kwargs)
    except USER_ERRORS as exc:
        print(f"{program}: error: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_USER_ERROR) from None
    except KeyboardInterrupt:
        print(f"{program}: interrupted; no half-written file was left (every output is written to "
              "a temporary file and renamed when complete)", file=sys.stderr)
        raise SystemExit(EXIT_INTERRUPTED) from None
