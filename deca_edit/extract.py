"""Batched extraction of DECA codes from videos, image folders and single images.

Library entry points:

* :func:`extract_codes` — frames (an iterable of images, or a video / folder / image path) ->
  :class:`ExtractResult` (codes of the frames where a face was found, kept and missing indices).
  This is what ``infer.py`` calls.
* :func:`plan_jobs` + :func:`run_extraction` — what ``scripts/extract_deca.py`` runs: expand the
  inputs into jobs, keep this shard's share, write one ``.mat`` per frame (or one packed file) and
  a JSON report.

Output layout (mirrors the VoxCeleb tree so :func:`deca_edit.codes.pack_code_tree` reads it):

* a video ``clip.mp4`` -> ``<out>/clip.mp4/0000000.mat``, ``0000001.mat``, ... (frame index, 7 digits);
* an image ``img.png`` -> ``<out>/img.mat``;
* a folder -> the same rules for every video and image below it, under its relative path.

Sharding (``shard=(i, n)``): jobs are sorted; job ``k`` belongs to shard ``k % n``. A video is one
job, every image is one job, so shards ``0..n-1`` cover every input exactly once.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence

import numpy as np
import torch

from deca_edit.codes import (CODE_SHAPES, COARSE_KEYS, DEFAULT_PACK_COLUMNS, write_code_mat,
                             write_packed_codes)
from deca_edit.crop import CROP_SCALE, FaceBox, FaceDetector, crop_face, to_rgb_uint8
from deca_edit.encoder import decompose
from infra.image_io import read_image as _read_image
from infra.files import atomic_path
from infra.runtime import resolve_device

__all__ = [
    "VIDEO_SUFFIXES",
    "IMAGE_SUFFIXES",
    "ExtractResult",
    "ExtractJob",
    "read_image",
    "iter_video_frames",
    "iter_frames",
    "extract_codes",
    "parse_shard",
    "plan_jobs",
    "run_extraction",
]

_logger = logging.getLogger(__name__)

VIDEO_SUFFIXES = frozenset({".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg"})
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"})
FRAME_NAME_DIGITS = 7           # VoxCeleb frame file stems: 0000000, 0000001, ...
DEFAULT_BATCH_SIZE = 16
REPORT_NAME = "extract_report"


# ----------------------------------------------------------------------------- reading inputs
def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read a face photo as ``(H,W,3)`` uint8 RGB, alpha ignored as DECA does
    (:func:`infra.image_io.read_image` with ``composite="drop"``; EXIF rotation applied)."""
    return _read_image(path, composite="drop")


def iter_video_frames(path: str | os.PathLike, max_frames: Optional[int] = None) -> Iterator[np.ndarray]:
    """Yield the frames of a video file as ``(H,W,3)`` uint8 RGB (imageio's ffmpeg plugin).

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file cannot be opened or decoded as a video (message names the path).
    """
    import imageio

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"video {path} does not exist")
    try:
        reader = imageio.get_reader(str(path), "ffmpeg")
    except Exception as exc:  # noqa: BLE001
        raise ValueError(f"{path}: cannot open as a video ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else ''})") from exc
    try:
        for index, frame in enumerate(reader):
            if max_frames is not None and index >= max_frames:
                break
            yield to_rgb_uint8(frame)
    except (OSError, RuntimeError) as exc:
        raise ValueError(f"{path}: video decoding failed ({type(exc).__name__}: {exc})") from exc
    finally:
        reader.close()


def _frame_name(index: int) -> str:
    return f"{index:0{FRAME_NAME_DIGITS}d}"


def _list_media(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES | IMAGE_SUFFIXES)


def iter_frames(source: str | os.PathLike, max_frames: Optional[int] = None) -> Iterator[tuple[str, np.ndarray]]:
    """``(name, image)`` for a video (names ``0000000``...), an image folder (sorted file stems,
    not recursive) or a single image (its stem)."""
    source = Path(source)
    if source.is_dir():
        files = sorted(p for p in source.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise ValueError(f"{source}: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in this folder")
        for path in files[:max_frames]:
            yield path.stem, read_image(path)
    elif source.suffix.lower() in VIDEO_SUFFIXES:
        for index, frame in enumerate(iter_video_frames(source, max_frames)):
            yield _frame_name(index), frame
    elif source.suffix.lower() in IMAGE_SUFFIXES:
        yield source.stem, read_image(source)
    elif not source.exists():
        raise FileNotFoundError(f"input {source} does not exist")
    else:
        raise ValueError(f"{source}: not a video ({', '.join(sorted(VIDEO_SUFFIXES))}), an image or a folder")


# ----------------------------------------------------------------------------- batched extraction
@dataclass
class ExtractResult:
    """Codes of the frames where a face was found.

    Attributes:
        codes: ``{"shape": (K,100), "tex": (K,50), "exp": (K,50), "pose": (K,6), "cam": (K,3),
            "light": (K,9,3)}`` float32 (plus ``"detail": (K,128)`` with a detail encoder), one row
            per kept frame.
        kept: indices (in input order) of the K frames with a face.
        missing: indices of the frames without a face (skipped).
        names: frame names of the kept frames (when the input gave names, else ``str(index)``).
        missing_names: names of the missing frames.
        boxes: face box of each kept frame (the full frame in aligned mode).
    """

    codes: dict[str, np.ndarray]
    kept: list[int] = field(default_factory=list)
    missing: list[int] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    missing_names: list[str] = field(default_factory=list)
    boxes: list[FaceBox] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.kept)


# Per-frame shapes of the returned code arrays (the .mat shapes without their leading 1).
_ROW_SHAPES = {k: (s[1:] if s[0] == 1 else s) for k, s in CODE_SHAPES.items()}


def extract_codes(frames: Iterable[Any] | str | os.PathLike, encoder: torch.nn.Module,
                  detector: Optional[FaceDetector] = None, batch_size: int = DEFAULT_BATCH_SIZE,
                  device: str | torch.device = "cpu", detail_encoder: Optional[torch.nn.Module] = None,
                  scale: float = CROP_SCALE, max_frames: Optional[int] = None,
                  progress: bool = True, desc: str = "extract") -> ExtractResult:
    """Crop faces and run the DECA encoder in batches.

    Args:
        frames: iterable of images (``(H,W[,C])`` arrays, any form :func:`~deca_edit.crop.to_rgb_uint8`
            takes) or of ``(name, image)`` pairs; or a path (video, image folder, image), read with
            :func:`iter_frames`.
        encoder: module ``(B,3,224,224) -> (B,236)`` (a :class:`~deca_edit.encoder.DecaEncoder`);
            put it on ``device`` and in eval mode beforehand.
        detector: face detector; ``None`` = frames are face-centred (aligned resize, no detection).
        batch_size: crops per encoder call.
        device: device of the encoder.
        detail_encoder: optional ``E_detail`` (adds ``"detail"`` (K,128)).
        scale: face square enlargement (detected mode).
        max_frames: stop after this many frames.
        progress: tqdm bar.

    Returns:
        :class:`ExtractResult`. Frames without a face are listed (and logged), never fatal.
    """
    from tqdm.auto import tqdm

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = resolve_device(device)
    if isinstance(frames, (str, os.PathLike)):
        frames = iter_frames(frames, max_frames)
    result = ExtractResult(codes={})
    chunks: dict[str, list[np.ndarray]] = {}
    batch: list[np.ndarray] = []

    def flush() -> None:
        if not batch:
            return
        images = torch.from_numpy(np.stack(batch)).to(device=device, dtype=torch.float32)
        with torch.no_grad():
            codes = {k: v.float().cpu().numpy() for k, v in decompose(encoder(images)).items()}
            if detail_encoder is not None:
                codes["detail"] = detail_encoder(images).float().cpu().numpy()
        for key, value in codes.items():
            chunks.setdefault(key, []).append(value)
        batch.clear()

    with tqdm(desc=desc, unit="frame", disable=not progress) as bar:
        for index, item in enumerate(frames):
            if max_frames is not None and index >= max_frames:
                break
            name, image = item if isinstance(item, tuple) else (str(index), item)
            crop, box = crop_face(image, detector, scale=scale)
            bar.update(1)
            if crop is None:
                # callers report frames without a face once, in their summary
                _logger.debug("no face found in frame %s (%s); skipped", index, name)
                result.missing.append(index)
                result.missing_names.append(name)
                continue
            batch.append(crop)
            result.kept.append(index)
            result.names.append(name)
            result.boxes.append(box)
            if len(batch) >= batch_size:
                flush()
        flush()
    if chunks:
        result.codes = {k: np.concatenate(v, axis=0) for k, v in chunks.items()}
    else:
        keys = COARSE_KEYS + (("detail",) if detail_encoder is not None else ())
        result.codes = {k: np.zeros((0,) + _ROW_SHAPES[k], np.float32) for k in keys}
    return result


# ----------------------------------------------------------------------------- jobs and sharding
def parse_shard(text: str | tuple[int, int] | None) -> tuple[int, int]:
    """``"i/n"`` (0 <= i < n) -> ``(i, n)``; ``None`` -> ``(0, 1)``."""
    if text is None:
        return 0, 1
    if isinstance(text, tuple):
        index, count = text
    else:
        try:
            index, count = (int(part) for part in str(text).split("/"))
        except ValueError:
            raise ValueError(f"shard must look like i/n (e.g. 0/4), got {text!r}") from None
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"shard {index}/{count}: need 0 <= i < n")
    return index, count


@dataclass(frozen=True)
class ExtractJob:
    """One unit of work: a whole video, or one image.

    Attributes:
        source: the video / image file.
        kind: ``"video"`` or ``"image"``.
        group: output sub-folder relative to the output root (``"."`` for the root). A video's
            group is its own folder (``<rel>/clip.mp4``); an image's is the folder it is written in.
    """

    source: Path
    kind: str
    group: str

    def mat_path(self, out_root: Path, frame_name: str) -> Path:
        return out_root / self.group / f"{frame_name}.mat"


def _job_for_file(path: Path, rel_parent: Path) -> ExtractJob:
    suffix = path.suffix.lower()
    if suffix in VIDEO_SUFFIXES:
        return ExtractJob(path, "video", (rel_parent / path.name).as_posix())
    if suffix in IMAGE_SUFFIXES:
        return ExtractJob(path, "image", rel_parent.as_posix())
    raise ValueError(f"{path}: not a video ({', '.join(sorted(VIDEO_SUFFIXES))}) or an image "
                     f"({', '.join(sorted(IMAGE_SUFFIXES))})")


def plan_jobs(inputs: Sequence[str | os.PathLike], shard: tuple[int, int] | str | None = None) -> list[ExtractJob]:
    """Expand inputs into sorted jobs and keep shard ``i`` of ``n`` (job ``k`` goes to ``k % n``).

    Args:
        inputs: video files, image files and folders (searched recursively; their relative layout
            is kept in the output).
        shard: ``"i/n"`` or ``(i, n)``; ``None`` = everything.

    Raises:
        FileNotFoundError: an input does not exist. ValueError: an input file of unknown type, or
            a folder with no videos/images.
    """
    index, count = parse_shard(shard)
    jobs: list[ExtractJob] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            media = _list_media(path)
            if not media:
                raise ValueError(f"{path}: no videos or images found in this folder")
            jobs.extend(_job_for_file(p, p.parent.relative_to(path)) for p in media)
        elif path.is_file():
            jobs.append(_job_for_file(path, Path(".")))
        else:
            raise FileNotFoundError(f"input {path} does not exist")
    jobs = sorted(set(jobs), key=lambda j: (j.group, j.source.as_posix()))
    seen: dict[tuple[str, str], Path] = {}
    for job in jobs:
        if job.kind == "image":
            other = seen.setdefault((job.group, job.source.stem), job.source)
            if other != job.source:
                raise ValueError(f"{other} and {job.source} would both be written to "
                                 f"{job.group}/{job.source.stem}.mat; rename one")
    return [job for k, job in enumerate(jobs) if k % count == index]


def run_extraction(inputs: Sequence[str | os.PathLike], out: str | os.PathLike, encoder: torch.nn.Module,
                   detector: Optional[FaceDetector], *, batch_size: int = DEFAULT_BATCH_SIZE,
                   device: str | torch.device = "cpu", detail_encoder: Optional[torch.nn.Module] = None,
                   shard: tuple[int, int] | str | None = None, packed: Optional[str | os.PathLike] = None,
                   max_frames: Optional[int] = None, scale: float = CROP_SCALE, progress: bool = True,
                   on_job: Optional[Callable[[ExtractJob, ExtractResult], None]] = None) -> dict[str, Any]:
    """Extract codes for this shard's jobs and write them.

    Args:
        inputs, shard: see :func:`plan_jobs`.
        out: output root for ``.mat`` files and the report ``extract_report[.shard-i-of-n].json``.
        encoder, detector, batch_size, device, detail_encoder, scale, max_frames: see
            :func:`extract_codes` (``max_frames`` applies per video).
        packed: write one packed file at this prefix instead of ``.mat`` files (suffix
            ``.shard-i-of-n`` added when n > 1). Groups become the packed "videos".
        progress: tqdm bars.
        on_job: called after each job (e.g. for logging).

    Returns:
        the report dict: counts, ``missing`` ([{"source", "frame"}]) for frames without a face and
        ``failed`` ([{"source", "error"}]) for unreadable inputs (which are skipped, not fatal).
    """
    from tqdm.auto import tqdm

    shard = parse_shard(shard)
    jobs = plan_jobs(inputs, shard)
    out = Path(out)
    suffix = f".shard-{shard[0]}-of-{shard[1]}" if shard[1] > 1 else ""
    report: dict[str, Any] = {"shard": f"{shard[0]}/{shard[1]}", "jobs": len(jobs), "frames_written": 0,
                              "missing": [], "failed": [], "outputs": []}
    packed_groups: dict[str, tuple[list[str], dict[str, list[np.ndarray]]]] = {}

    def record(job: ExtractJob, result: ExtractResult, missing_sources: Sequence[str]) -> None:
        report["missing"].extend({"source": src, "frame": name}
                                 for src, name in zip(missing_sources, result.missing_names))
        report["frames_written"] += len(result)
        if packed is not None:
            names, codes = packed_groups.setdefault(job.group, ([], {}))
            names.extend(result.names)
            for key, value in result.codes.items():
                codes.setdefault(key, []).append(value)
        else:
            for row, name in enumerate(result.names):
                write_code_mat(job.mat_path(out, name), {k: v[row] for k, v in result.codes.items()})
        if on_job is not None:
            on_job(job, result)

    def fail(job: ExtractJob, exc: Exception) -> None:
        _logger.error("%s", exc)
        report["failed"].append({"source": job.source.as_posix(), "error": str(exc)})

    common = dict(encoder=encoder, detector=detector, batch_size=batch_size, device=device,
                  detail_encoder=detail_encoder, scale=scale)
    videos = [j for j in jobs if j.kind == "video"]
    images = [j for j in jobs if j.kind == "image"]
    for job in tqdm(videos, desc="videos", unit="video", disable=not progress or len(videos) < 2):
        frames = ((_frame_name(i), f) for i, f in enumerate(iter_video_frames(job.source, max_frames)))
        try:
            result = extract_codes(frames, progress=progress, desc=job.source.name, **common)
        except (OSError, ValueError) as exc:
            fail(job, exc)
            continue
        record(job, result, [job.source.as_posix()] * len(result.missing))
    # Images: one batched pass per output folder; unreadable files are reported and skipped.
    by_group: dict[str, list[ExtractJob]] = {}
    for job in images:
        by_group.setdefault(job.group, []).append(job)
    for group, group_jobs in by_group.items():
        readable: list[tuple[ExtractJob, np.ndarray]] = []
        for job in group_jobs:
            try:
                readable.append((job, read_image(job.source)))
            except (OSError, ValueError) as exc:
                fail(job, exc)
        result = extract_codes(((j.source.stem, im) for j, im in readable), progress=progress,
                               desc=f"images {group}", **common)
        record(group_jobs[0], result, [readable[i][0].source.as_posix() for i in result.missing])
    if packed is not None:
        prefix = Path(str(packed) + suffix)
        groups = [(g, names, {k: np.concatenate(v) for k, v in codes.items()})
                  for g, (names, codes) in sorted(packed_groups.items())]
        columns = DEFAULT_PACK_COLUMNS + (("tex", "light") + (("detail",) if detail_encoder is not None else ()))
        write_packed_codes(prefix, groups, columns=columns)
        report["outputs"].append(str(prefix))
    else:
        report["outputs"].append(str(out))
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / f"{REPORT_NAME}{suffix}.json") as tmp:
        tmp.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    return report
