"""Reading driving frames (video file, folder of images, single image) and writing results
(``.gif``, ``.mp4``, a single image, or a folder of PNG frames), atomically.

Frames are always RGB uint8 ``(H, W, 3)`` numpy arrays (decoded through
:func:`infra.image_io.to_rgb`). Videos go through imageio-ffmpeg. Every
output is first written to a temporary file (or folder) beside the target and renamed into place
at the end, so a failure never leaves a half-written result. Only regular files and folders are
read (a named pipe would block forever); a truncated video is reported (or refused with
``strict_frames``). :class:`FrameWriter` replaces only outputs it wrote (or with ``overwrite``),
never deletes files it did not write, and holds the output's advisory lock while writing.
"""
from __future__ import annotations

import logging
import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np

from infra.image_io import IMAGE_EXTENSIONS, read_image, to_rgb
from infra.files import (atomic_path, check_input_path, check_replaceable, make_temp, output_lock,
                         owned_files, write_output_marker)

__all__ = [
    "VIDEO_EXTENSIONS",
    "DrivingSource",
    "open_driving",
    "check_output_path",
    "output_kind",
    "FrameWriter",
    "gif_frame_ms",
    "write_frames",
    "expected_frame_count",
    "is_truncated",
]

log = logging.getLogger(__name__)

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".gif", ".mpg", ".mpeg")
WRITE_VIDEO_EXTENSIONS = (".mp4", ".gif")
MP4_CODEC = "libx264"
MP4_PIXEL_FORMAT = "yuv420p"      # widest player support; needs even width and height
MP4_QUALITY_CRF = "18"
GIF_TICK_MS = 10                  # GIF frame delays are stored in 1/100 s
TRUNCATION_SLACK_FRAMES = 2       # duration x fps may round a frame or two away from the true count
TRUNCATION_SLACK_FRACTION = 0.01


@dataclass
class DrivingSource:
    """Driving frames of one input. Iterate to get ``(index, RGB uint8 frame)`` in order.

    Attributes:
        path: the input (video file, folder or image).
        kind: ``video``, ``gif``, ``folder`` or ``image``.
        fps: frame rate read from the video, or ``None`` (folders, images).
        num_frames: number of frames (counted for videos whose header does not say).
        names: per-frame names (file stems for folders, ``frame_%06d`` for videos).
    """

    path: Path
    kind: str
    fps: Optional[float]
    num_frames: int
    names: list[str] = field(default_factory=list)
    _files: list[Path] = field(default_factory=list, repr=False)

    def __len__(self) -> int:
        return self.num_frames

    def __iter__(self) -> Iterator[tuple[int, np.ndarray]]:
        if self.kind == "video":
            yield from self._iter_video()
            return
        if self.kind == "gif":
            for i, frame in enumerate(_read_gif(self.path)[0][: self.num_frames]):
                yield i, frame
            return
        for i, file in enumerate(self._files[: self.num_frames]):
            yield i, read_image(file)

    def _iter_video(self) -> Iterator[tuple[int, np.ndarray]]:
        import imageio.v2 as imageio

        reader = imageio.get_reader(str(self.path), format="FFMPEG")
        try:
            for i, frame in enumerate(reader):
                if i >= self.num_frames:
                    break
                yield i, to_rgb(frame, f"{self.path} frame {i}")
        finally:
            reader.close()


def _read_gif(path: Path) -> tuple[list[np.ndarray], Optional[float]]:
    """All frames of a GIF as RGB uint8, and its frame rate from the first frame's delay."""
    from PIL import Image, ImageSequence

    try:
        with Image.open(path) as gif:
            delay_ms = gif.info.get("duration") or 0
            frames = [to_rgb(np.asarray(f.convert("RGBA")), f"{path} frame {i}")
                      for i, f in enumerate(ImageSequence.Iterator(gif))]
    except Exception as exc:  # noqa: BLE001 - any decoder failure is a bad input file
        raise ValueError(f"cannot read GIF {path}: {exc}") from exc
    if not frames:
        raise ValueError(f"GIF {path} contains no frames")
    return frames, (1000.0 / delay_ms if delay_ms else None)


def expected_frame_count(duration: Optional[float], fps: Optional[float]) -> Optional[int]:
    """Frames a container announces: ``round(duration · fps)``, or ``None`` when it does not say."""
    if not duration or not fps or not (math.isfinite(duration) and math.isfinite(fps)):
        return None
    if duration <= 0 or fps <= 0:
        return None
    return int(round(duration * fps))


def is_truncated(decoded: int, expected: Optional[int]) -> bool:
    """``decoded`` frames fall short of the container's ``expected`` count by more than the
    rounding of its duration allows (:data:`TRUNCATION_SLACK_FRAMES` frames or
    :data:`TRUNCATION_SLACK_FRACTION` of them, whichever is larger)."""
    if expected is None:
        return False
    return decoded < expected - max(TRUNCATION_SLACK_FRAMES, TRUNCATION_SLACK_FRACTION * expected)


def _probe_video(path: Path) -> tuple[Optional[float], int, Optional[int]]:
    """``(fps or None, decodable frame count, frame count announced by the container or None)``."""
    import imageio.v2 as imageio

    try:
        reader = imageio.get_reader(str(path), format="FFMPEG")
        try:
            meta = reader.get_meta_data()
            count = reader.count_frames()
            first = reader.get_data(0) if count else None
        finally:
            reader.close()
    except Exception as exc:  # noqa: BLE001 - ffmpeg raises many kinds of errors on bad files
        raise ValueError(f"cannot read video {path}: {str(exc).splitlines()[0] if str(exc) else exc!r}") from exc
    if not count or first is None:
        raise ValueError(f"video {path} contains no frames")
    fps = float(meta.get("fps") or 0.0)
    fps = fps if fps > 0 and math.isfinite(fps) else None
    return fps, int(count), expected_frame_count(meta.get("duration"), fps)


def open_driving(path: str | os.PathLike, max_frames: Optional[int] = None,
                 strict_frames: bool = False) -> DrivingSource:
    """Open a driving input: video file, folder of images (sorted by name) or one image.

    A video that decodes to fewer frames than its container announces (duration × fps; a
    truncated download or copy) is logged as a warning giving both numbers, or, with
    ``strict_frames``, refused. Only the frames that are needed count (``max_frames``).

    Raises ``FileNotFoundError`` for a missing path and ``ValueError`` for something that is not a
    regular file or folder (a named pipe would block forever), an unreadable or (strict) truncated
    video, an unknown file type or a folder without images.
    """
    path = check_input_path(path, "driving input")
    limit = None if max_frames in (None, 0) else int(max_frames)
    if path.is_dir():
        files = sorted(p for p in path.iterdir()
                       if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        if not files:
            raise ValueError(f"driving folder {path} contains no images "
                             f"(looked for {', '.join(IMAGE_EXTENSIONS)})")
        files = files[:limit] if limit else files
        return DrivingSource(path, "folder", None, len(files), [p.stem for p in files], files)
    suffix = path.suffix.lower()
    if suffix in IMAGE_EXTENSIONS:
        read_image(path)  # fail now, not in the middle of the pipeline
        return DrivingSource(path, "image", None, 1, [path.stem], [path])
    if suffix == ".gif":
        frames, fps = _read_gif(path)
        count = min(len(frames), limit) if limit else len(frames)
        return DrivingSource(path, "gif", fps, count, [f"frame_{i:06d}" for i in range(count)])
    if suffix in VIDEO_EXTENSIONS:
        fps, count, expected = _probe_video(path)
        if is_truncated(count, expected) and not (limit and limit <= count):
            message = (f"driving video {path} decodes to {count} frames but its container announces "
                       f"{expected} (duration x fps): the file looks truncated")
            if strict_frames:
                raise ValueError(f"{message} (strict_frames=true)")
            log.warning("%s; using the %d decodable frames (strict_frames=true makes this an error)",
                        message, count)
        count = min(count, limit) if limit else count
        return DrivingSource(path, "video", fps, count, [f"frame_{i:06d}" for i in range(count)])
    raise ValueError(f"driving input {path}: unknown file type {suffix!r} "
                     f"(video {VIDEO_EXTENSIONS} or image {IMAGE_EXTENSIONS} or a folder)")


# ----------------------------------------------------------------------------- writing
def output_kind(path: str | os.PathLike) -> str:
    """``mp4`` / ``gif`` / ``image`` (png, jpg...) / ``folder`` (no suffix) for an output path."""
    suffix = Path(path).suffix.lower()
    if suffix == ".mp4":
        return "mp4"
    if suffix == ".gif":
        return "gif"
    if suffix in IMAGE_EXTENSIONS:
        return "image"
    if suffix == "":
        return "folder"
    raise ValueError(f"output {path}: unsupported suffix {suffix!r}; use .mp4, .gif, an image "
                     "suffix (one frame) or a folder name without suffix")


def check_output_path(path: str | os.PathLike, what: str = "output") -> Path:
    """Validate an output path before any work: known suffix and an existing parent directory.

    Raises ``FileNotFoundError`` naming the missing directory (we do not create directories the
    user may have mistyped) and ``ValueError`` for an unsupported suffix or a path that is a folder
    where a file is expected.
    """
    path = Path(path).expanduser()
    kind = output_kind(path)
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise FileNotFoundError(f"{what} {path}: directory {parent} does not exist "
                                "(create it first)")
    if kind != "folder" and path.is_dir():
        raise ValueError(f"{what} {path} is an existing directory, expected a file path")
    if kind == "folder" and path.exists() and not path.is_dir():
        raise ValueError(f"{what} {path} exists and is not a directory")
    return path


def gif_frame_ms(fps: float) -> int:
    """GIF frame delay in ms for ``fps``, rounded to the format's 10 ms resolution (min 20 ms)."""
    return max(2 * GIF_TICK_MS, int(round(1000.0 / fps / GIF_TICK_MS)) * GIF_TICK_MS)


def _even_pad(frame: np.ndarray) -> np.ndarray:
    h, w = frame.shape[:2]
    ph, pw = h % 2, w % 2
    if ph or pw:
        frame = np.pad(frame, ((0, ph), (0, pw), (0, 0)), mode="edge")
    return frame


class FrameWriter:
    """Write RGB uint8 frames to ``.mp4`` / ``.gif`` / one image / a PNG folder, atomically.

    Use as a context manager; ``write(frame)`` per frame. On a clean exit the temporary result is
    renamed onto ``path``; on an exception it is deleted and ``path`` is untouched. MP4 uses
    libx264 yuv420p; odd sizes are padded by one edge pixel (yuv420p needs even sizes). GIF
    frame delays are rounded to 10 ms (see :func:`gif_frame_ms`); identical consecutive frames
    may be merged by the GIF encoder into one longer frame (total duration unchanged).

    Safety (checked in the constructor, before any work):

    * an existing ``path`` is replaced only when this program wrote it (its ownership marker
      ``.<name>.edtn-output.json`` matches, see :func:`infra.files.read_output_marker`) or
      ``overwrite`` is set; otherwise ``ValueError``;
    * a folder output never deletes files it did not write: when the existing folder holds other
      files, the new frames are moved in beside them and only our previous frames are removed;
    * while writing, the advisory lock of ``path`` is held (:func:`infra.files.output_lock`):
      a second writer of the same path fails at once naming this process.

    Results get the mode the umask gives (0644 files / 0755 folders under umask 022).

    Args:
        path: output path (its parent directory must exist).
        fps: frame rate (Hz) of the result.
        overwrite: replace an existing output this program did not write.
    """

    def __init__(self, path: str | os.PathLike, fps: float, overwrite: bool = False):
        self.path = check_output_path(path)
        if not (fps > 0 and math.isfinite(fps)):
            raise ValueError(f"output frame rate must be > 0, got {fps}")
        self.overwrite = bool(overwrite)
        check_replaceable(self.path, self.overwrite)
        self.fps = float(fps)
        self.kind = output_kind(self.path)
        self.count = 0
        self._ctx = None
        self._lock = None
        self._tmp: Optional[Path] = None
        self._tmp_fd: Optional[int] = None
        self._encoder = None
        self._gif_frames: list[np.ndarray] = []
        self._size: Optional[tuple[int, int]] = None

    # -- context
    def __enter__(self) -> "FrameWriter":
        self._lock = output_lock(self.path)
        self._lock.__enter__()
        try:
            check_replaceable(self.path, self.overwrite)  # again: it may have changed meanwhile
            if self.kind == "folder":
                self._tmp, self._tmp_fd = make_temp(self.path, directory=True)
            else:
                self._ctx = atomic_path(self.path)
                self._tmp = self._ctx.__enter__()
        except BaseException:
            self._release()
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        try:
            try:
                if exc_type is None:
                    self._finish()
            except BaseException:
                self._abort()
                raise
            if exc_type is not None:
                self._abort()
        finally:
            self._release()
        return False

    def _release(self) -> None:
        if self._tmp_fd is not None:
            os.close(self._tmp_fd)
            self._tmp_fd = None
        if self._lock is not None:
            lock, self._lock = self._lock, None
            lock.__exit__(None, None, None)

    # -- frames
    def write(self, frame: np.ndarray) -> None:
        """Append one RGB uint8 (H,W,3) frame; all frames must have the same size."""
        frame = to_rgb(frame, f"output frame {self.count}")
        if self._size is None:
            self._size = frame.shape[:2]
        elif frame.shape[:2] != self._size:
            raise ValueError(f"output frame {self.count} has size {frame.shape[:2]}, "
                             f"expected {self._size}")
        if self.kind == "mp4":
            self._write_mp4(frame)
        elif self.kind == "gif":
            self._gif_frames.append(frame)
        elif self.kind == "image":
            if self.count >= 1:
                raise ValueError(f"output {self.path} is a single image but the result has more "
                                 "than one frame; use .mp4, .gif or a folder")
            self._single = frame
        else:
            import imageio.v3 as iio
            iio.imwrite(self._tmp / self._frame_name(self.count), frame)
        self.count += 1

    @staticmethod
    def _frame_name(index: int) -> str:
        return f"{index:06d}.png"

    def _write_mp4(self, frame: np.ndarray) -> None:
        import imageio_ffmpeg

        frame = _even_pad(frame)
        if self._encoder is None:
            h, w = frame.shape[:2]
            self._encoder = imageio_ffmpeg.write_frames(
                str(self._tmp), (w, h), fps=self.fps, codec=MP4_CODEC,
                pix_fmt_out=MP4_PIXEL_FORMAT, macro_block_size=1, quality=None,
                output_params=["-crf", MP4_QUALITY_CRF, "-f", "mp4"], ffmpeg_log_level="error")
            self._encoder.send(None)
        self._encoder.send(np.ascontiguousarray(frame))

    def _finish(self) -> None:
        if self.count == 0:
            raise ValueError(f"no frames to write to {self.path}")
        if self.kind == "mp4":
            self._encoder.close()
            self._encoder = None
        elif self.kind == "gif":
            from PIL import Image

            images = [Image.fromarray(f) for f in self._gif_frames]
            images[0].save(self._tmp, format="GIF", save_all=True, append_images=images[1:],
                           duration=gif_frame_ms(self.fps), loop=0)
        elif self.kind == "image":
            import imageio.v3 as iio
            iio.imwrite(self._tmp, self._single, extension=self.path.suffix.lower())
        if self.kind == "folder":
            self._commit_folder()
        else:
            self._ctx.__exit__(None, None, None)
            write_output_marker(self.path)

    def _commit_folder(self) -> None:
        """Put the new frames in place, deleting only files this program wrote before."""
        new = [self._frame_name(i) for i in range(self.count)]
        if not self.path.exists():
            os.replace(self._tmp, self.path)
        else:
            ours = owned_files(self.path)
            foreign = sorted(p.name for p in self.path.iterdir() if p.name not in ours)
            if not foreign:  # only our previous frames: swap the folders atomically
                trash, trash_fd = make_temp(self.path, directory=True)
                try:
                    os.replace(self.path, trash)
                    os.replace(self._tmp, self.path)
                    shutil.rmtree(trash, ignore_errors=True)
                finally:
                    os.close(trash_fd)
            else:  # the folder holds files we did not write: keep every one of them
                for name in new:
                    os.replace(self._tmp / name, self.path / name)
                for name in sorted(ours - set(new)):
                    (self.path / name).unlink(missing_ok=True)
                shutil.rmtree(self._tmp, ignore_errors=True)
                log.warning("output folder %s holds %d file(s) this program did not write "
                            "(e.g. %s); they were kept, the %d frames were written beside them",
                            self.path, len(foreign), foreign[0], len(new))
        write_output_marker(self.path, new)

    def _abort(self) -> None:
        if self._encoder is not None:
            try:
                self._encoder.close()
            except Exception:  # noqa: BLE001 - cleaning up after a failure already raised
                pass
            self._encoder = None
        if self.kind == "folder":
            if self._tmp is not None and self._tmp.exists():
                shutil.rmtree(self._tmp, ignore_errors=True)
        elif self._ctx is not None:
            try:
                self._ctx.__exit__(RuntimeError, RuntimeError("aborted"), None)
            except RuntimeError:
                pass


def write_frames(path: str | os.PathLike, frames: Sequence[np.ndarray], fps: float,
                 overwrite: bool = False) -> Path:
    """Write a list of RGB uint8 frames to ``path`` (see :class:`FrameWriter`)."""
    with FrameWriter(path, fps, overwrite=overwrite) as writer:
        for frame in frames:
            writer.write(frame)
    return Path(path)
