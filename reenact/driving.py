"""Driving input → DECA codes per frame: code inputs are read, frames are encoded later.

Driving inputs: a video file, a folder of frames (sorted by name), one image, a folder of DECA
``.mat`` code files (one per frame, sorted; the encoder is skipped) or a packed code file
(``<prefix>.npy`` / ``.json``, see :mod:`deca_edit.codes`; pick a video with ``driving_video``).
Frames where no face is found take the previous frame's code (:func:`hold_missing`).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from reenact.video_io import DrivingSource

__all__ = ["DrivingCodes", "driving_kind", "read_code_input", "hold_missing"]

CODE_DIM = 156                     # DECA code156 = shape 100 | exp 50 | pose 6
CODE156_GLOBAL = slice(150, 153)   # DECA global head rotation (axis-angle) inside code156


def hold_missing(found: np.ndarray) -> np.ndarray:
    """For each frame, the index of the frame whose code it uses.

    Args:
        found: (T,) bool, True where a face / code is available.
    Returns:
        (T,) int64: ``t`` where found, else the last found frame before ``t``, or the first found
        frame for leading gaps. Raises ``ValueError`` when nothing is found.
    """
    found = np.asarray(found, dtype=bool)
    if not found.any():
        raise ValueError("no face was found in any driving frame")
    idx = np.where(found, np.arange(len(found)), -1)
    idx = np.maximum.accumulate(idx)
    idx[idx < 0] = int(np.argmax(found))
    return idx


@dataclass
class DrivingCodes:
    """DECA codes of every driving frame (after holding frames without a face).

    Attributes:
        code156: (T,156) float32 shape ⊕ exp ⊕ pose. cam: (T,3) or None.
        names: per-frame names. missing: indices of frames without a face / code (held).
        fps: frame rate of the input or None. frames: the frame source (None for code inputs).
    """

    code156: np.ndarray
    cam: Optional[np.ndarray]
    names: list[str]
    missing: list[int]
    fps: Optional[float]
    frames: Optional[DrivingSource] = None


def _is_packed(path: Path) -> bool:
    if path.suffix in (".npy", ".json"):
        return path.with_suffix(".json").is_file() and path.with_suffix(".npy").is_file()
    return (path.parent / f"{path.name}.npy").is_file() and (path.parent / f"{path.name}.json").is_file()


def _is_code_folder(path: Path) -> bool:
    return path.is_dir() and any(p.suffix == ".mat" for p in path.iterdir())


def driving_kind(path: str | Path) -> str:
    """``packed`` / ``mat`` (DECA code inputs) or ``frames`` (video, image folder, image)."""
    path = Path(path).expanduser()
    if _is_packed(path):
        return "packed"
    if not path.exists():
        raise FileNotFoundError(f"driving input not found: {path}")
    if _is_code_folder(path):
        return "mat"
    return "frames"


def _read_code_folder(path: Path, max_frames: Optional[int]) -> DrivingCodes:
    from deca_edit.codes import code156, read_code_mat

    files = sorted(p for p in path.iterdir() if p.suffix == ".mat" and p.is_file())
    files = files[:max_frames] if max_frames else files
    codes, cams = [], []
    for file in files:
        mat = read_code_mat(file, keys=("shape", "exp", "pose"))
        codes.append(code156(mat))
        cams.append(mat["cam"].reshape(3) if "cam" in mat else None)
    cam = np.stack(cams).astype(np.float32) if all(c is not None for c in cams) else None
    return DrivingCodes(np.stack(codes).astype(np.float32), cam, [f.stem for f in files], [], None)


def _read_packed(path: Path, video: Any, max_frames: Optional[int]) -> DrivingCodes:
    from deca_edit.codes import PackedCodes

    packed = PackedCodes(path)
    if video in (None, ""):
        if len(packed.videos) != 1:
            shown = ", ".join(packed.video_names[:5])
            raise ValueError(f"driving {path} holds {len(packed.videos)} videos ({shown}...); "
                             "choose one with driving_video=<name or index>")
        video = 0
    if isinstance(video, str) and video.isdigit() and video not in packed.video_names:
        video = int(video)
    try:
        info = packed.video_info(video)
    except (KeyError, IndexError):
        raise ValueError(f"driving_video={video!r} is not in {path} "
                         f"(videos: {', '.join(packed.video_names[:5])}...)") from None
    rows = np.asarray(packed.video(info.name, check_finite=True, limit=max_frames or None),
                      dtype=np.float32)
    cam = None
    if "cam" in packed.columns:
        a, b = packed.columns["cam"]
        cam = rows[:, a:b].copy()
    return DrivingCodes(rows[:, :156].copy(), cam, list(info.frames[: len(rows)]), [], None)


def read_code_input(path: Path, kind: str, driving_video: Any = None,
                    max_frames: Optional[int] = None) -> DrivingCodes:
    """Read a ``packed`` or ``mat`` driving input (see :func:`driving_kind`)."""
    if kind == "packed":
        return _read_packed(path, driving_video, max_frames)
    if kind == "mat":
        return _read_code_folder(path, max_frames)
    raise ValueError(f"{path} is not a DECA code input (kind {kind!r})")
