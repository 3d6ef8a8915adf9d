"""Temporary files of the demo server: one root folder, removed when the server stops.

Layout: ``<root>/gradio`` is Gradio's upload / output cache (``GRADIO_TEMP_DIR``; Gradio itself
also prunes it, see ``delete_cache`` in :mod:`reenact.demo.app`) and ``<root>/runs/<id>`` holds the
files of one Video-tab run. A run folder cannot be removed as soon as its function returns --
Gradio copies the outputs into its cache afterwards -- so finished runs older than ``max_age_s``
are pruned at the start of every new run, and the whole root goes at shutdown.
"""
from __future__ import annotations

import itertools
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Optional

__all__ = ["WorkDir", "DEFAULT_RUN_MAX_AGE_S"]

DEFAULT_RUN_MAX_AGE_S = 3600.0
ROOT_PREFIX = "edtn_demo_"


class WorkDir:
    """The demo's temporary root (see the module docstring). Use as a context manager."""

    def __init__(self, parent: Optional[str | os.PathLike] = None, max_age_s: float = DEFAULT_RUN_MAX_AGE_S):
        self.root = Path(tempfile.mkdtemp(prefix=ROOT_PREFIX, dir=parent))
        self.gradio_cache = self.root / "gradio"
        self.runs = self.root / "runs"
        self.gradio_cache.mkdir()
        self.runs.mkdir()
        self.max_age_s = max_age_s
        self._counter = itertools.count()
        self._lock = threading.Lock()

    def new_run(self) -> Path:
        """A fresh, empty folder for one run (prunes finished runs older than ``max_age_s``)."""
        self.prune()
        with self._lock:
            run = self.runs / f"run_{os.getpid()}_{next(self._counter):05d}"
        run.mkdir()
        return run

    def prune(self, now: Optional[float] = None) -> list[Path]:
        """Remove run folders last modified more than ``max_age_s`` ago; returns what was removed."""
        now = time.time() if now is None else now
        removed = []
        for run in sorted(self.runs.iterdir()):
            try:
                if now - run.stat().st_mtime > self.max_age_s:
                    shutil.rmtree(run, ignore_errors=True)
                    removed.append(run)
            except FileNotFoundError:
                pass
        return removed

    def cleanup(self) -> None:
        """Remove the whole root (uploads, outputs, Gradio's cache)."""
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> "WorkDir":
        return self

    def __exit__(self, *exc) -> None:
        self.cleanup()
