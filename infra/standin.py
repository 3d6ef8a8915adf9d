"""Stand-in asset files: how they are marked and how a program recognises them.

``scripts/make_standin_assets.py`` writes a complete asset folder of *stand-ins*: files in the
official formats, filled with deterministic numbers instead of the licensed / released weights,
so that every command and the demo can be tried without them. Their output is noise. Each file is
marked twice:

* a key inside: :data:`STANDIN_KEY` in the file's top-level dict (FLAME pickle, DECA tar,
  generator ``.ckpt``, EDTN checkpoint, VGG19 state dict) holding a one-line description
  (``.npy`` arrays cannot carry one);
* a note file :data:`STANDIN_NOTE` in the folder (written by :mod:`reenact.standin`): JSON with a
  warning line and, per file, its size, sha256, what it is and whether it is a stand-in (a real
  file copied into the kit, e.g. a given ``EDTN.pt`` or DECA's public landmark embedding, is
  listed with ``standin: false``).

:func:`standin_entry` answers "is this path a stand-in?" from the note (name and size; cheap
enough for every run), :func:`has_standin_key` from a loaded object. Programs print
:data:`STANDIN_WARNING` once when they use one (:func:`warn_if_standin`).
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional

__all__ = [
    "STANDIN_KEY",
    "STANDIN_NOTE",
    "STANDIN_WARNING",
    "NOTE_FORMAT",
    "has_standin_key",
    "read_note",
    "standin_entry",
    "standin_paths",
    "is_standin_file",
    "warn_if_standin",
]

_logger = logging.getLogger(__name__)

STANDIN_KEY = "standin"
STANDIN_NOTE = "STANDIN"
STANDIN_WARNING = "stand-in weights: output is noise"
NOTE_FORMAT = "edtn-standin/1"


def has_standin_key(obj: Any) -> bool:
    """True when a loaded asset object (a dict) carries the stand-in key."""
    return isinstance(obj, Mapping) and STANDIN_KEY in obj


def read_note(folder: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """The ``files`` table of ``folder/STANDIN`` (``{}`` when there is no readable note)."""
    note = Path(folder) / STANDIN_NOTE
    try:
        data = json.loads(note.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    files = data.get("files") if isinstance(data, dict) and data.get("format") == NOTE_FORMAT else None
    return files if isinstance(files, dict) else {}


def standin_entry(path: str | os.PathLike) -> Optional[dict[str, Any]]:
    """The note entry of ``path`` when the note beside it lists it as a stand-in of the same size."""
    path = Path(path)
    entry = read_note(path.parent).get(path.name)
    if not entry or not entry.get("standin"):
        return None
    try:
        if path.stat().st_size != entry.get("size"):
            return None
    except OSError:
        return None
    return entry


def standin_paths(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Those of ``paths`` that are listed stand-ins (see :func:`standin_entry`)."""
    return [Path(p) for p in paths if p is not None and standin_entry(p) is not None]


def _has_key_inside(path: Path) -> bool:
    """Open the file with its format's reader and look for :data:`STANDIN_KEY` (False if unreadable)."""
    try:
        if path.suffix == ".npy":
            return False  # plain arrays cannot carry a key
        if path.suffix == ".pkl":
            from infra.pickle_files import load_flame_model

            return has_standin_key(load_flame_model(path))
        from infra.checkpoint import load_torch_file

        return has_standin_key(load_torch_file(path, map_location="cpu"))
    except Exception:  # noqa: BLE001 - a file we cannot read is simply not a recognised stand-in
        return False


def is_standin_file(path: str | os.PathLike, sha256: Callable[[Path], str]) -> bool:
    """Thorough check (reads the file): listed in the note beside it with the same ``sha256(path)``
    (pass :func:`infra.assets.sha256_of`), or carrying :data:`STANDIN_KEY` inside (a stand-in moved
    out of its kit folder)."""
    path = Path(path)
    entry = read_note(path.parent).get(path.name)
    if entry is not None and entry.get("sha256") == sha256(path):
        return bool(entry.get("standin"))
    return _has_key_inside(path)


def warn_if_standin(paths: Iterable[str | os.PathLike], echo=print) -> bool:
    """Print :data:`STANDIN_WARNING` once (naming the files) when any path is a stand-in."""
    found = standin_paths(paths)
    if found:
        echo(f"warning: {STANDIN_WARNING} ({', '.join(p.name for p in found)})")
    return bool(found)
