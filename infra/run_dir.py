"""A training run's folder: where it is, its log, its lock, and resuming from its checkpoints.

Shared by ``train.py`` and ``train_ag.py``: :func:`training_run` holds the folder for one run (lock,
log file, and the clean-up of a run that failed before writing anything);
:func:`load_resume_checkpoint` resumes from the newest intact checkpoint and says which.
"""
from __future__ import annotations

import logging
import os
import shutil
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, Callable, Iterator, Optional


from infra.files import OutputBusyError, checksum_problem, output_lock
from infra.runtime import USER_ERRORS

__all__ = [
    "resolve_run_dir",
    "run_log",
    "discard_unused_run_dir",
    "find_resume_checkpoint",
    "load_resume_checkpoint",
    "run_dir_lock",
    "training_run",
]

_logger = logging.getLogger(__name__)


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


@contextmanager
def run_log(run_dir: str | os.PathLike, filename: str = "train.log", enabled: bool = True) -> Iterator[None]:
    """While the block runs, send INFO+ log records to ``run_dir/filename`` once.

    Under ``@hydra.main`` Hydra's job logging may already write that very file (its run dir is
    ours); then nothing is added, so no line is written twice. Chatty third-party INFO lines
    (matplotlib's font cache, PIL's plugins) are kept out. The handler is removed and closed on
    exit, also after an error. ``enabled=False`` (non-main DDP ranks) does nothing.
    """
    if not enabled:
        yield
        return
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger()
    if root.level > logging.INFO or root.level == logging.NOTSET:
        root.setLevel(logging.INFO)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    target = (run_dir / filename).resolve()
    handler = None
    if not any(isinstance(h, logging.FileHandler) and Path(h.baseFilename).resolve() == target
               for h in root.handlers):
        handler = logging.FileHandler(target)
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        root.addHandler(handler)
    try:
        yield
    finally:
        if handler is not None:
            root.removeHandler(handler)
            handler.close()


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


RESUME_FALLBACK_PATTERNS = ("epoch_*.pt", "best.pt")


def _newest_first(paths: list[Path]) -> list[Path]:
    return sorted(paths, key=lambda p: (p.stat().st_mtime_ns, p.name), reverse=True)


def load_resume_checkpoint(resume: Optional[str], checkpoint_dir: str | os.PathLike,
                           load: Callable[[Path], Any], name: str = "last.pt",
                           fallbacks: tuple[str, ...] = RESUME_FALLBACK_PATTERNS
                           ) -> Optional[tuple[Path, Any]]:
    """Find and load the checkpoint to resume from, falling back to the newest intact one.

    A checkpoint is intact when it matches its ``.sha256`` sidecar (if it has one, see
    :func:`atomic_save`) and ``load(path)`` returns without raising (``load`` also checks that it
    is a training checkpoint of the right kind, and refuses unsafe pickles).

    * ``resume=auto`` or an explicit path to ``<dir>/<name>`` (``last.pt``, "the latest state"):
      the first intact one of ``<name>`` and then the ``fallbacks`` (``epoch_*.pt``, ``best.pt``)
      of that folder, newest first; a fallback is logged as a warning naming both files.
    * an explicit path to another file: that file only.

    Returns:
        ``(path, loaded object)``, or ``None`` when there is nothing to resume (``resume`` empty,
        or ``auto`` in a folder without checkpoints).
    Raises:
        FileNotFoundError: an explicit path does not exist.
        ValueError: no candidate is intact; one message lists every file and why.
    """
    requested = find_resume_checkpoint(resume, checkpoint_dir, name)
    auto = str(resume) == "auto"
    if requested is None and not auto:
        return None
    folder = Path(checkpoint_dir) if requested is None else requested.parent
    follow = auto or requested.name == name
    candidates = [requested] if requested is not None else []
    if follow:
        others = {p for pattern in fallbacks for p in folder.glob(pattern) if p.is_file()}
        candidates += _newest_first([p for p in others if p != requested])
    if not candidates:
        return None
    problems = []
    for path in candidates:
        problem = checksum_problem(path)
        if problem is None:
            try:
                loaded = load(path)
            except Exception as exc:  # noqa: BLE001 - any failure means "not intact"
                problem = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:600]
        if problem is None:
            if problems:
                _logger.warning("resume: %s; resuming from %s instead (the newest intact checkpoint)",
                                "; ".join(problems), path)
            return path, loaded
        problems.append(f"{path} is not usable ({problem})")
    listing = "\n  ".join(problems)
    hint = ("" if follow else f"\n  intact checkpoints may remain in {folder}; or start fresh with resume=null")
    raise ValueError(f"no intact checkpoint to resume from:\n  {listing}{hint}")


def run_dir_lock(run_dir: str | os.PathLike, main: bool = True):
    """:func:`output_lock` of a training run folder, held by the main process only (DDP ranks
    share the folder): a second training run on it fails fast naming the first one's pid."""
    return output_lock(run_dir, "run_dir") if main else nullcontext(Path(run_dir))


@contextmanager
def training_run(run_dir: str | os.PathLike, main: bool = True, log_name: str = "train.log") -> Iterator[Path]:
    """The run folder of one training process, for the length of the block.

    The main process (rank 0 under DDP) holds the folder's lock (:func:`run_dir_lock`: a second
    run on it fails fast) and logs into ``run_dir/log_name`` (:func:`run_log`). When the block
    fails on a user error before anything of value was written (a missing asset, bad data), the
    folder is removed (:func:`discard_unused_run_dir`); a folder another run holds is never
    touched. Yields ``run_dir`` as a Path.
    """
    run_dir = Path(run_dir)
    try:
        with run_dir_lock(run_dir, main), run_log(run_dir, log_name, main):
            yield run_dir
    except OutputBusyError:
        raise
    except USER_ERRORS:
        if main:
            discard_unused_run_dir(run_dir)
        raise
