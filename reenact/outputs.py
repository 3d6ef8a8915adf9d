"""What a run writes: the animation (single frames or a grid) and the pose files.

Every file is written atomically (:func:`infra.files.atomic_path`, :class:`reenact.video_io.FrameWriter`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import torch

from infra.files import atomic_path, atomic_save_npy, write_output_marker
from reenact.pose import pose_table
from reenact.render import compose_grid
from reenact.video_io import output_kind

__all__ = ["PLOT_SUFFIXES", "check_pose_path", "check_plot_path", "check_frame_count", "write_pose_files",
           "GridFrames"]

PLACEHOLDER_GREY = 128   # driving panel for code inputs, which have no pictures
PLOT_SUFFIXES = (".png", ".svg", ".pdf")


def check_pose_path(value: Optional[str], suffix: str, key: str) -> Optional[Path]:
    """Validate a pose-export path before any work: its suffix and an existing parent folder."""
    if value is None:
        return None
    path = Path(value).expanduser()
    if path.suffix.lower() != suffix:
        raise ValueError(f"config key {key!r} must end in {suffix}, got {path}")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"{key} {path}: directory {path.parent} does not exist (create it first)")
    return path


def check_plot_path(value: Optional[str], key: str) -> Optional[Path]:
    """Validate a figure path before any work: a matplotlib format suffix and an existing parent."""
    if value is None:
        return None
    path = Path(value).expanduser()
    if path.suffix.lower() not in PLOT_SUFFIXES:
        raise ValueError(f"config key {key!r} must end in one of {', '.join(PLOT_SUFFIXES)}, got {path}")
    return check_pose_path(value, path.suffix.lower(), key)


def check_frame_count(out: Optional[Path], frames: int, key: str = "out") -> None:
    """A single-image output (``.png``/``.jpg``) holds one frame: refuse more, before any work."""
    if out is not None and output_kind(out) == "image" and frames > 1:
        raise ValueError(f"{key}={out} is a single image but the driving input has {frames} frames; "
                         "use .mp4 / .gif / a folder, or max_frames=1")


def write_pose_files(poses: torch.Tensor | np.ndarray, csv: Optional[Path], npy: Optional[Path]) -> None:
    """Poses (T,20) → ``csv`` (frame, morph_00…16, angle_0…2) and/or ``npy`` (T,20) float32."""
    if csv is not None:
        with atomic_path(csv) as tmp:
            pose_table(poses).to_csv(tmp, index=False, float_format="%.9g")
        write_output_marker(csv)   # ours: a later run may replace it without overwrite=true
    if npy is not None:
        array = poses.numpy() if isinstance(poses, torch.Tensor) else np.asarray(poses)
        atomic_save_npy(array.astype(np.float32), npy)
        write_output_marker(npy)


class GridFrames:
    """Composes grid frames: driving | [DECA mesh] | anime | [morph chart].

    The chart's solid bars are the morphs that drove the generator (after relative mode, gain and
    smoothing); the raw mapping output is drawn as ghost bars.

    Args:
        driving: the driving pictures in order (``None`` for code inputs: a grey panel).
        poses: (T,20) poses that drove the generator. raw_morphs: (T,17) mapping output.
        show_morphs: add the chart panel.
    """

    def __init__(self, driving: Optional[Iterator[np.ndarray]], poses: torch.Tensor,
                 raw_morphs: torch.Tensor, show_morphs: bool = True) -> None:
        self._driving = driving
        self._poses = poses[:, :raw_morphs.shape[1]].numpy()
        self._raw = raw_morphs.numpy()
        self.show_morphs = show_morphs

    def _next_driving(self, size: int) -> np.ndarray:
        if self._driving is None:
            return np.full((size, size, 3), PLACEHOLDER_GREY, np.uint8)
        return next(self._driving)

    def compose(self, index: int, anime: np.ndarray, mesh: Optional[np.ndarray] = None) -> np.ndarray:
        """Grid frame ``index`` around the generated ``anime`` frame (S,S,3)."""
        morphs = self._poses[index] if self.show_morphs else None
        raw = self._raw[index] if self.show_morphs else None
        return compose_grid(self._next_driving(anime.shape[0]), anime, morphs, mesh, raw_morphs=raw,
                            titles=True)

