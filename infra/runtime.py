"""Process-level helpers shared by every entry point: device choice, seeding, atomic file writes,
RNG state capture, checkpoint files that survive a crash, and the rules that keep outputs from
destroying inputs.

Nothing here knows about a particular model; ``train.py``, ``train_ag.py``, ``infer.py`` and the
scripts all use the same few functions so that "device", "seed" and "checkpoint" mean one thing.

* Writes: :func:`atomic_path` / :func:`atomic_save` (temporary file + rename; umask-respecting
  modes; temporaries locked by their writer and removed by the next write of the same target once
  the writer is gone, :func:`clean_stale_temps`); ``checksum=True`` adds a ``.sha256`` sidecar.
* Resume: :func:`load_resume_checkpoint` takes the newest intact checkpoint and says so.
* Outputs: :func:`check_input_path` (regular files and folders only),
  :func:`check_outputs_distinct` (no output is an input), :func:`check_replaceable` and the
  ownership marker (:func:`write_output_marker`, :func:`read_output_marker`, :func:`owned_files`),
  :func:`output_lock` (one writer per output / run folder).
* :func:`exit_on_user_error`: one line instead of a traceback for user errors and Ctrl-C.
"""
from __future__ import annotations

import fcntl
import json
import logging
import os
import random
import re
import shutil
import stat
import tempfile
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional

import numpy as np
import torch

from infra.assets import sha256_of

__all__ = [
    "resolve_device",
    "seed_everything",
    "current_umask",
    "apply_umask",
    "make_temp",
    "clean_stale_temps",
    "atomic_path",
    "atomic_save",
    "file_digest",
    "checksum_path",
    "checksum_problem",
    "capture_rng_state",
    "restore_rng_state",
    "find_resume_checkpoint",
    "load_resume_checkpoint",
    "resolve_run_dir",
    "run_log",
    "discard_unused_run_dir",
    "unwrap_model",
    "OutputBusyError",
    "OWNER_SUFFIX",
    "USER_ERRORS",
    "check_input_path",
    "check_outputs_distinct",
    "check_replaceable",
    "read_output_marker",
    "write_output_marker",
    "owned_files",
    "lock_path_for",
    "output_lock",
    "run_dir_lock",
    "training_run",
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


# ============================================================================= file modes, temporaries
TEMP_SUFFIX = ".tmp"
_TEMP_RANDOM = r"[A-Za-z0-9_]{8}"  # what tempfile.mkstemp / mkdtemp put between prefix and suffix
FILE_MODE = 0o666                  # before the umask, as open() / touch create files
DIR_MODE = 0o777


def current_umask() -> int:
    """The process umask (read from ``/proc/self/status`` where possible: no change, no race)."""
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def apply_umask(path: str | os.PathLike) -> None:
    """Give ``path`` the mode a plain ``open()`` / ``mkdir`` would (0644 / 0755 under umask 022).

    ``tempfile.mkstemp`` / ``mkdtemp`` create 0600 / 0700 entries; renamed into place they would
    keep that mode and collaborators could not read the results.
    """
    base = DIR_MODE if os.path.isdir(path) else FILE_MODE
    os.chmod(path, base & ~current_umask())


def _temp_pattern(name: str) -> re.Pattern:
    return re.compile(r"^\." + re.escape(name) + r"\." + _TEMP_RANDOM + re.escape(TEMP_SUFFIX) + "$")


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def _remove_if_unlocked(entry: Path) -> bool:
    """Remove a temporary file or folder unless a live writer holds its lock (see
    :func:`make_temp`). Returns whether it was removed."""
    try:
        fd = os.open(entry, os.O_RDONLY | (os.O_DIRECTORY if entry.is_dir() else 0))
    except OSError:
        return False
    try:
        if not _try_lock(fd):
            return False  # a running process is writing it
        if entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        return True
    finally:
        os.close(fd)


_ANY_TEMP = re.compile(r"^\..+\." + _TEMP_RANDOM + re.escape(TEMP_SUFFIX) + "$")
_temps_seen: dict[str, set[str]] = {}  # folder -> temporary-looking names at this process's scan


def _scan_temps(folder: Path) -> set[str]:
    """Names of ``.*.XXXXXXXX.tmp`` entries in ``folder`` (one ``os.scandir``), cached per folder."""
    try:
        with os.scandir(folder) as entries:
            names = {e.name for e in entries if e.name.endswith(TEMP_SUFFIX) and _ANY_TEMP.match(e.name)}
    except (FileNotFoundError, NotADirectoryError):
        names = set()
    _temps_seen[os.path.realpath(folder)] = names
    return names


def _remove_stale(folder: Path, names: list[str]) -> list[Path]:
    removed = [folder / name for name in sorted(names) if _remove_if_unlocked(folder / name)]
    if removed:
        _logger.info("removed %d temporary file(s) left by an interrupted write: %s", len(removed),
                     ", ".join(p.name for p in removed))
    return removed


def clean_stale_temps(path: str | os.PathLike, all_in_folder: bool = False) -> list[Path]:
    """Remove temporaries that killed writes left beside ``path`` (``.<name>.XXXXXXXX.tmp``).

    Every temporary made by :func:`make_temp` is locked (``flock``) by its writer until it is
    renamed into place or removed, and the kernel drops the lock when the writer dies, so a
    temporary that can be locked here has no live writer and is removed; one held by a running
    process is left alone.

    Args:
        path: the target whose temporaries are removed; or, with ``all_in_folder``, a folder of
            ours (a checkpoint folder) whose every ``.*.XXXXXXXX.tmp`` entry is considered.
    Returns:
        The removed paths.
    """
    path = Path(path)
    folder = path if all_in_folder else path.parent
    names = _scan_temps(folder)
    if not all_in_folder:
        target = _temp_pattern(path.name)
        names = {n for n in names if target.match(n)}
    return _remove_stale(folder, list(names))


def _clean_before_write(path: Path) -> None:
    """:func:`clean_stale_temps` for ``path``, scanning its folder once per process (a write into
    a folder of 10^4 files must not list it every time): temporaries left by writers that died
    before this process first wrote there."""
    key = os.path.realpath(path.parent)
    names = _temps_seen.get(key)
    if names is None:
        names = _scan_temps(path.parent)
    if names:
        target = _temp_pattern(path.name)
        mine = [n for n in names if target.match(n)]
        names.difference_update(mine)
        _remove_stale(path.parent, mine)


def make_temp(path: str | os.PathLike, directory: bool = False) -> tuple[Path, int]:
    """Create a temporary file (or folder) ``.<name>.XXXXXXXX.tmp`` beside ``path``, mode as the
    umask says, locked by this process. Returns ``(temp path, fd holding the lock)``; close the fd
    once the temporary is renamed or removed. Stale temporaries of ``path`` are removed first.
    """
    path = Path(path)
    _clean_before_write(path)
    while True:
        if directory:
            tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent))
            fd = os.open(tmp, os.O_RDONLY | os.O_DIRECTORY)
        else:
            fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
            tmp = Path(name)
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:  # another process's clean-up may have removed it between creation and locking
            if os.path.samestat(os.fstat(fd), os.stat(tmp)):
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    apply_umask(tmp)
    return tmp, fd


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success rename it over ``path``.

    The file appears complete or not at all: on an exception (Ctrl-C included) the temporary file
    is removed and ``path`` is left as it was; after ``kill -9`` the next write of ``path`` removes
    it (:func:`clean_stale_temps`). The result has the mode the umask gives (0644 under 022). The
    parent directory is created if needed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp, fd = make_temp(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        try:
            if tmp.exists():
                tmp.unlink()
        finally:
            os.close(fd)


# ============================================================================= checksummed saves
CHECKSUM_SUFFIX = ".sha256"
CHECKSUM_FORMAT = "edtn-checksum/1"


def file_digest(path: str | os.PathLike) -> tuple[int, str]:
    """``(size in bytes, sha256 hex)`` of a file."""
    return os.stat(path).st_size, sha256_of(Path(path))


def checksum_path(path: str | os.PathLike) -> Path:
    """The sidecar of a checksummed file: ``<path>.sha256``."""
    path = Path(path)
    return path.with_name(path.name + CHECKSUM_SUFFIX)


def _accepted_digests(path: Path) -> Optional[list[dict]]:
    side = checksum_path(path)
    if not side.is_file():
        return None
    try:
        data = json.loads(side.read_text(encoding="utf-8"))
        accepted = [{"size": int(e["size"]), "sha256": str(e["sha256"])} for e in data["accepted"]]
    except (OSError, ValueError, KeyError, TypeError):
        return []  # an unreadable sidecar accepts nothing
    return accepted


def checksum_problem(path: str | os.PathLike) -> Optional[str]:
    """Why ``path`` does not match its ``.sha256`` sidecar, or ``None`` (it matches, or it has no
    sidecar and so cannot be checked this way)."""
    path = Path(path)
    accepted = _accepted_digests(path)
    if accepted is None:
        return None
    size, sha = file_digest(path)
    if any(e["size"] == size and e["sha256"] == sha for e in accepted):
        return None
    expected = ", ".join(f"{e['size']} bytes sha256 {e['sha256'][:12]}" for e in accepted) or "nothing readable"
    return (f"content does not match {checksum_path(path).name} (file: {size} bytes sha256 "
            f"{sha[:12]}; recorded: {expected}): truncated or corrupted")


def atomic_save(obj: Any, path: str | os.PathLike, checksum: bool = False) -> Path:
    """``torch.save`` to ``path`` atomically (temporary file + rename).

    With ``checksum`` the written bytes are read back and their size and sha256 recorded in the
    sidecar ``<path>.sha256`` (:func:`checksum_problem` verifies it). The sidecar is updated before
    the rename and also accepts the digests of the files it replaces, so at every instant the file
    on disk matches it, whatever moment a crash picks.
    """
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
        if checksum:
            size, sha = file_digest(tmp)
            previous = (_accepted_digests(path) or [])[:2] if path.exists() else []
            record = {"format": CHECKSUM_FORMAT, "file": path.name,
                      "accepted": [{"size": size, "sha256": sha}] + previous}
            with atomic_path(checksum_path(path)) as side:
                side.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    return path


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


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """Strip DistributedDataParallel / ``torch.compile`` wrappers before saving a state dict."""
    while True:
        if hasattr(model, "module") and isinstance(model, torch.nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


# ============================================================================= outputs: inputs, ownership, locks
class OutputBusyError(RuntimeError):
    """Another live process holds the advisory lock of an output (see :func:`output_lock`)."""


USER_ERRORS = (FileNotFoundError, ValueError, OutputBusyError)  # AssetError is a FileNotFoundError
EXIT_USER_ERROR = 1
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for Ctrl-C
LOCK_SUFFIX = ".lock"
OWNER_SUFFIX = ".edtn-output.json"
OWNER_FORMAT = "edtn-output/1"
_held_locks: dict[str, list] = {}  # lock file -> [fd, depth]: re-entrant within this process


def check_input_path(path: str | os.PathLike, what: str = "input") -> Path:
    """An input must be an existing regular file or folder: a named pipe, socket or device would
    block a reader forever or be misreported. Returns the expanded path.

    Raises:
        FileNotFoundError: nothing is there. ValueError: it is not a regular file or folder.
    """
    path = Path(path).expanduser()
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} not found: {path}") from None
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        kind = ("a named pipe (FIFO)" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode)
                else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not a regular file")
        raise ValueError(f"{what} {path} is {kind}; only regular files and folders are read")
    return path


def _resolved(path: Path) -> Path:
    return Path(os.path.realpath(os.path.expanduser(path)))


def _same_or_inside(a: Path, b: Path) -> bool:
    """``a`` is ``b`` (same file, through links too) or lies inside folder ``b``."""
    if a.exists() and b.exists() and os.path.samefile(a, b):
        return True
    ra, rb = _resolved(a), _resolved(b)
    return ra == rb or rb in ra.parents


def check_outputs_distinct(outputs: Mapping[str, Optional[str | os.PathLike]],
                           inputs: Mapping[str, Optional[str | os.PathLike]]) -> None:
    """Refuse, before any work, an output that is (or is inside, or contains) an input, or another
    output. Symbolic links, ``..`` and hard links (``os.path.samefile``) are seen through.

    Args:
        outputs: ``{config key: path}`` of everything the run writes (``None`` entries skipped).
        inputs: ``{config key: path}`` of everything it reads (driving, source, codes, weights).
    Raises:
        ValueError: naming both keys and paths.
    """
    outs = {k: Path(v).expanduser() for k, v in outputs.items() if v not in (None, "")}
    ins = {k: Path(v).expanduser() for k, v in inputs.items() if v not in (None, "")}
    for out_key, out in outs.items():
        for in_key, src in ins.items():
            if _same_or_inside(out, src):
                raise ValueError(f"{out_key}={out} would overwrite the input {in_key}={src}; "
                                 "choose an output path that is not an input")
            if _same_or_inside(src, out):
                raise ValueError(f"{out_key}={out} contains the input {in_key}={src}; choose an "
                                 "output path outside the inputs")
    keys = list(outs)
    for i, a in enumerate(keys):
        for b in keys[i + 1:]:
            if _same_or_inside(outs[a], outs[b]) or _same_or_inside(outs[b], outs[a]):
                raise ValueError(f"outputs {a}={outs[a]} and {b}={outs[b]} overlap")


def _owner_path(path: Path) -> Path:
    return path.with_name(f".{path.name}{OWNER_SUFFIX}")


def _stat_entry(path: Path) -> list[int]:
    info = path.stat()
    return [info.st_size, info.st_mtime_ns]


def read_output_marker(path: str | os.PathLike) -> Optional[dict]:
    """The ownership marker of an output written by this program (``.<name>.edtn-output.json``
    beside it), or ``None`` when there is none or it does not describe what is on disk now
    (the user replaced or edited the output since)."""
    path = Path(path)
    try:
        marker = json.loads(_owner_path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(marker, dict) or marker.get("format") != OWNER_FORMAT:
        return None
    try:
        if marker.get("kind") == "folder":
            return marker if path.is_dir() and isinstance(marker.get("files"), dict) else None
        return marker if path.is_file() and _stat_entry(path) == list(marker.get("stat", [])) else None
    except OSError:
        return None


def write_output_marker(path: str | os.PathLike, files: Optional[list[str]] = None) -> None:
    """Record that this program wrote ``path`` (a file, or a folder and the ``files`` in it)."""
    path = Path(path)
    marker: dict[str, Any] = {"format": OWNER_FORMAT, "pid": os.getpid()}
    if files is None:
        marker.update(kind="file", stat=_stat_entry(path))
    else:
        marker.update(kind="folder", files={name: _stat_entry(path / name) for name in files})
    with atomic_path(_owner_path(path)) as tmp:
        tmp.write_text(json.dumps(marker) + "\n", encoding="utf-8")


def owned_files(folder: str | os.PathLike) -> set[str]:
    """Names of the files inside an output folder that this program wrote and nobody changed."""
    folder = Path(folder)
    marker = read_output_marker(folder) or {}
    owned = set()
    for name, entry in (marker.get("files") or {}).items():
        try:
            if "/" not in name and _stat_entry(folder / name) == list(entry):
                owned.add(name)
        except OSError:
            continue
    return owned


def check_replaceable(path: str | os.PathLike, overwrite: bool = False, what: str = "output") -> Path:
    """Before any work: an existing output may be replaced only when this program wrote it (its
    marker matches, see :func:`read_output_marker`) or ``overwrite`` is set.

    Raises:
        ValueError: ``path`` exists, is not ours and ``overwrite`` is off (the message says so).
    """
    path = Path(path).expanduser()
    if os.path.lexists(path) and not overwrite and read_output_marker(path) is None:
        kind = "folder" if path.is_dir() else "file"
        raise ValueError(f"{what} {path} already exists and was not written by this program (no "
                         f"matching {_owner_path(path).name}); not replacing your {kind}. Choose "
                         "another path, or pass overwrite=true to replace it (a folder output "
                         "never deletes files it did not write)")
    return path


def lock_path_for(path: str | os.PathLike) -> Path:
    """The advisory lock file of an output: ``.<name>.lock`` beside it."""
    path = Path(path).expanduser()
    return path.with_name(f".{path.name}{LOCK_SUFFIX}")


def _acquire_lock(lock: Path, target: Path, what: str) -> int:
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, FILE_MODE)
        if not _try_lock(fd):
            try:
                holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip() or "unknown"
            finally:
                os.close(fd)
            raise OutputBusyError(
                f"{what} {target} is being written by another running process (pid {holder}; lock "
                f"file {lock}); wait for it to finish or choose another path")
        try:  # the previous holder may have removed the file between our open and our lock
            if os.path.samestat(os.fstat(fd), os.stat(lock)):
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
    return fd


@contextmanager
def output_lock(path: str | os.PathLike, what: str = "output") -> Iterator[Path]:
    """Hold the advisory lock of an output (or a training run folder) while writing it.

    ``fcntl.flock`` on ``.<name>.lock`` beside ``path``: a second writer, in another process, fails
    at once with :class:`OutputBusyError` naming the path and the holder's pid. The kernel drops
    the lock when its holder dies, so a lock file left by ``kill -9`` blocks nobody. Re-entrant
    within one process (the pipeline and its FrameWriter both lock ``out``). The lock file is
    removed on release.
    """
    target = Path(path).expanduser()
    lock = lock_path_for(target)
    key = os.path.realpath(lock)
    if key in _held_locks:
        _held_locks[key][1] += 1
        try:
            yield lock
        finally:
            _held_locks[key][1] -= 1
        return
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = _acquire_lock(lock, target, what)
    _held_locks[key] = [fd, 1]
    try:
        yield lock
    finally:
        del _held_locks[key]
        try:
            lock.unlink(missing_ok=True)
        finally:
            os.close(fd)


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
