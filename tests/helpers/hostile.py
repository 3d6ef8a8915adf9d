"""Hostile pickle payloads for the trust tests: objects whose ``__reduce__`` runs code on load.

Each creates a marker file, so a test can assert that a loader refused the file *and* that no code
ran (the marker is absent).
"""
from __future__ import annotations

import os
import shlex
from pathlib import Path


class SystemPayload:
    """Pickles as ``posix.system('touch <marker>')``."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(self.marker)}",)


class ExecPayload:
    """Pickles as ``builtins.exec("open(<marker>, 'w').close()")``."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').close()",)


PAYLOADS = {"posix.system": SystemPayload, "builtins.exec": ExecPayload}
