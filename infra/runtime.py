"""Process-level helpers shared by every entry point: device choice, seeding, atomic file writes,
RNG state capture, and checkpoint files that survive a crash.

Nothing here knows about a particular model; ``train.py``, ``train_ag.py``, ``infer.py`` and the
scripts all use the same few functions so that "device", "seed" and "checkpoint" mean one thing.
"""
from __future__ import annotations

import logging
import os
import random
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
import torch

__all__ = [
    "resolve_device",
    "seed_everything",
    "atomic_path",
    "atomic_save",
    "capture_rng_state",
    "restore_rng_state",
    "find_resume_checkpoint",
    "resolve_run_dir",
    "log_to_run_dir",
    "discard_unused_run_dir",
    "unwrap_model",
    "exit_on_user_error",
]

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


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success rename it over ``path``.

    The file appears complete or not at all: on an exception the temporary file is removed and
    ``path`` is left as it was. The parent directory is created if needed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to ``path`` atomically (temporary file + rename)."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return Path(path)


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


def resolve_run_dir(run_dir: Optional[str], default: str | os.PathLike) -> Path:
    """Where a training run writes: ``run_dir`` from the config, else Hydra's output dir, else
    ``default`` (outside ``@hydra.main``, e.g. a test calling ``run(cfg)``). Absolute."""
    if run_dir:
        return Path(run_dir).expanduser().resolve()
    try:
        from hydra.core.hydra_config import HydraConfig

        return Path(HydraConfig.get().runtime.output_dir).resolve()
    except ValueError:  # HydraConfig not set: not inside @hydra.main
        return Path(default).resolve()


LOG_FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"
QUIET_LOGGERS = ("matplotlib", "PIL")   # chatty INFO/DEBUG lines (font cache, plugins) kept out of logs
RUN_BOOKKEEPING = frozenset({".hydra", "config.yaml", "train.log", "train_ag.log"})


def log_to_run_dir(run_dir: Path, filename: str = "train.log") -> Optional[logging.Handler]:
    """Send INFO+ log records to ``run_dir/filename`` once.

    Under ``@hydra.main`` Hydra's job logging may already write that very file (its run dir is
    ours); then nothing is added, so no line is written twice. Returns the added handler (remove
    and close it at the end of the run) or ``None``.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger()
    if root.level > logging.INFO or root.level == logging.NOTSET:
        root.setLevel(logging.INFO)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    target = (run_dir / filename).resolve()
    if any(isinstance(h, logging.FileHandler) and Path(h.baseFilename).resolve() == target
           for h in root.handlers):
        return None
    handler = logging.FileHandler(target)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root.addHandler(handler)
    return handler


def discard_unused_run_dir(run_dir: Path) -> bool:
    """Remove ``run_dir`` when a run failed before it wrote anything of value.

    Only a folder holding nothing but start-up bookkeeping (Hydra's ``.hydra/``, ``config.yaml``,
    the log file) is removed, with the parent folders below the working directory that it leaves
    empty (``outputs/edtn/``); a folder with checkpoints, TensorBoard files or anything else, or a
    folder that does not exist, is left alone. Returns True when the folder was removed.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return False
    entries = {p.name for p in run_dir.iterdir()}
    if not entries <= RUN_BOOKKEEPING:
        return False
    for handler in logging.getLogger().handlers:  # release the log file before deleting it
        if isinstance(handler, logging.FileHandler) and Path(handler.baseFilename).parent == run_dir.resolve():
            handler.close()
    shutil.rmtree(run_dir, ignore_errors=True)
    cwd = Path.cwd().resolve()
    for parent in run_dir.resolve().parents:  # the empty outputs/<name>/ folders made for it
        if parent == cwd or cwd not in parent.parents or any(parent.iterdir()):
            break
        parent.rmdir()
    return not run_dir.exists()


def find_resume_checkpoint(resume: Optional[str], checkpoint_dir: str | os.PathLike,
                           name: str = "last.pt") -> Optional[Path]:
    """Resolve a ``resume=`` config value.

    Args:
        resume: ``None``/empty (start fresh), ``auto`` (``checkpoint_dir/name`` if it exists, else
            start fresh) or an explicit checkpoint path (must exist).
        checkpoint_dir: where this run writes its checkpoints.
        name: file name of the most recent checkpoint.
    """
    if resume in (None, "", "none", "null", False):
        return None
    if str(resume) == "auto":
        candidate = Path(checkpoint_dir) / name
        return candidate if candidate.is_file() else None
    path = Path(str(resume)).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"resume={resume!r}: no checkpoint file at {path}")
    return path


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """Strip DistributedDataParallel / ``torch.compile`` wrappers before saving a state dict."""
    while True:
        if hasattr(model, "module") and isinstance(model, torch.nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


USER_ERRORS = (FileNotFoundError, ValueError)  # AssetError is a FileNotFoundError
EXIT_USER_ERROR = 1


def exit_on_user_error(program: str, fn, *args, **kwargs):
    """Call ``fn(*args, **kwargs)``; a user-facing error (missing asset or file, bad input or config
    value) prints one line ``<program>: error: <message>`` to stderr and exits with status 1
    instead of a traceback. Other exceptions propagate unchanged (they are bugs).
    """
    try:
        return fn(*args, **kwargs)
    except USER_ERRORS as exc:
        import sys

        print(f"{program}: error: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_USER_ERROR) from None
