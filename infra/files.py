"""Files that survive crashes and never destroy the user's data: the one atomic writer and the rules
for outputs. Nothing here knows about a model.

* Writes: :func:`atomic_path` / :func:`atomic_save` (temporary file + rename; umask-respecting
  modes; temporaries locked by their writer and removed by the next write of the same target once
  the writer is gone, :func:`clean_stale_temps`); ``checksum=True`` adds a ``.sha256`` sidecar
  (:func:`checksum_problem` verifies it).
* Inputs and outputs: :func:`check_input_path` (regular files and folders only),
  :func:`check_outputs_distinct` (no output is an input), :func:`check_replaceable` and the
  ownership marker (:func:`write_output_marker`, :func:`read_output_marker`, :func:`owned_files`),
  :func:`output_lock` (one writer per output or run folder; :class:`OutputBusyError`).
"""
from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import shutil
import stat
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional

import numpy as np
import torch

from infra.assets import sha256_of

__all__ = [
    "current_umask",
    "apply_umask",
    "clean_stale_temps",
    "make_temp",
    "atomic_path",
    "CHECKSUM_SUFFIX",
    "file_digest",
    "checksum_path",
    "checksum_problem",
    "atomic_save",
    "atomic_save_npy",
    "OutputBusyError",
    "OWNER_SUFFIX",
    "check_input_path",
    "check_outputs_distinct",
    "read_output_marker",
    "write_output_marker",
    "owned_files",
    "check_replaceable",
    "lock_path_for",
    "output_lock",
]

_logger = logging.getLogger(__name__)


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


def atomic_save_npy(array: np.ndarray, path: str | os.PathLike) -> Path:
    """``np.save`` of ``array`` to ``path`` atomically (the exact file name is kept: no ``.npy``
    is appended to the temporary file)."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.save(handle, array)
    return Path(path)


# ============================================================================= outputs: inputs, ownership, locks
class OutputBusyError(RuntimeError):
    """Another live process holds the advisory lock of an output (see :func:`output_lock`)."""
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
