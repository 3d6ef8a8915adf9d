"""Stage progress for the pipeline: a tqdm bar per stage (counting frames) and an optional callback
``callback(stage, done, total)`` for user interfaces (the web demo's progress bar)."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator, Optional

__all__ = ["ProgressCallback", "StageProgress"]

ProgressCallback = Callable[[str, int, Optional[int]], None]


class StageProgress:
    """Reports how many frames each stage has done.

    Args:
        bars: show a tqdm bar per stage (on stderr; each bar stays as one finished line, so a
            summary printed afterwards starts on its own line even when stderr is redirected).
        callback: called as ``callback(stage, frames_done, frames_total)`` on every update.
    """

    def __init__(self, bars: bool = True, callback: Optional[ProgressCallback] = None) -> None:
        self.bars = bars
        self.callback = callback

    @contextmanager
    def stage(self, name: str, total: Optional[int]) -> Iterator[Callable[[int], None]]:
        """Context for one stage; yields ``advance(n_frames)``."""
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc=name, unit="frame", disable=not self.bars, leave=True,
                   dynamic_ncols=True)
        done = 0

        def advance(n: int) -> None:
            nonlocal done
            done += n
            bar.update(n)
            if self.callback is not None:
                self.callback(name, done, total)

        if self.callback is not None:
            self.callback(name, 0, total)
        try:
            yield advance
        finally:
            bar.close()
