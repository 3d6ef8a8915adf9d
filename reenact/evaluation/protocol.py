"""The evaluation protocol: which driving frames animate which anime character, fixed once in a CSV.

Every method is scored on identical inputs: a protocol pairs VoxCeleb test videos with AnimeCeleb
test identities (the authors' ``test_list.txt``) by a seeded assignment, and lists the sampled
frames of each pair explicitly.

CSV (one row per pair; written atomically by :func:`write_protocol`)::

    pair,video,identity,source,frames
    p00000,id10270#5r0dWxy17C8#00001.mp4,9,basis/m001c/basis.png,0000000 0000004 0000008 ...

* ``pair``: a unique id (the output folder name of the renderer);
* ``video``: a VoxCeleb test video (a folder of the DECA code tree, or a video of a packed file);
* ``identity``: an AnimeCeleb ``org_id``; ``source``: its source image, relative to the
  AnimeCeleb root (the neutral ``basis/<folder>/basis.png``, as EDTN's inference uses);
* ``frames``: the frame stems, space separated, in time order. The first one is the reference of
  KDR's relative features.

Assignment (:func:`make_protocol`): videos sorted by name (optionally a seeded subset of
``max_videos``); identities in a seeded permutation, cycled over the videos so each identity gets
the same number of videos (±1); frames ``uniform`` (``frames_per_pair`` frames evenly spread over
the video, first and last included) or ``window`` (a seeded window of consecutive frames).

Data layout (VoxCeleb as FOMM / the authors prepare it; generator README §8)::

    <vox>/deca/test/<video>/<frame>.mat      DECA codes (or a packed file, scripts/pack_deca_codes.py)
    <vox>/images/test/<video>/<frame>.png    the driving frames (256², face-centred), for KDR
    <anime>/combined_pose.csv, rotation/<cluster>/<folder>/<png>, basis/<folder>/basis.png

The FID real set (:func:`real_image_paths`, :func:`prepare_real_set`): a seeded sample of
``per_identity`` AnimeCeleb images of every test identity, composited over white and resized to
the generator's resolution, written once as PNG.
"""
from __future__ import annotations

import csv
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from infra.files import atomic_path

__all__ = [
    "PROTOCOL_COLUMNS",
    "FRAME_SAMPLINGS",
    "EvalPair",
    "VoxCodes",
    "AnimeCelebTest",
    "make_protocol",
    "write_protocol",
    "read_protocol",
    "protocol_digest",
    "check_protocol",
    "real_image_paths",
    "prepare_real_set",
]

PROTOCOL_COLUMNS = ("pair", "video", "identity", "source", "frames")
FRAME_SAMPLINGS = ("uniform", "window")
FRAME_SEPARATOR = " "
PAIR_ID_DIGITS = 5
MIN_FRAMES = 2                     # KDR needs a reference frame and at least one more
DEFAULT_FRAMES_PER_PAIR = 32
DEFAULT_REAL_PER_IDENTITY = 50
IMAGE_SUFFIX = ".png"
SOURCE_NAME = "basis.png"


@dataclass(frozen=True)
class EvalPair:
    """One row of the protocol (see the module docstring)."""

    pair: str
    video: str
    identity: str
    source: str
    frames: tuple[str, ...]


# ----------------------------------------------------------------------------- data readers
class VoxCodes:
    """DECA code156 of VoxCeleb test videos, from a packed file or a folder of video folders.

    Args:
        path: a packed prefix (``x`` for ``x.npy`` + ``x.json``) or ``<vox>/deca/test`` holding
            ``<video>/<frame>.mat``.
    Raises:
        FileNotFoundError: nothing at ``path``. ValueError: a folder without video folders.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        from deca_edit.codes import PackedCodes, find_code_videos

        self.path = Path(path).expanduser()
        prefix = self.path.with_suffix("") if self.path.suffix in (".npy", ".json") else self.path
        self.packed = None
        if Path(f"{prefix}.npy").is_file() and Path(f"{prefix}.json").is_file():
            self.path = prefix
            self.packed = PackedCodes(prefix)
            self.videos = {v.name: list(v.frames) for v in self.packed.videos}
        elif self.path.is_dir():
            groups = find_code_videos(self.path)
            if not groups or groups[0][0] == self.path.name and all(p.parent == self.path for p in groups[0][1]):
                raise ValueError(f"{self.path}: expected one folder per video holding <frame>.mat files "
                                 "(VoxCeleb layout <vox>/deca/test/<video>/<frame>.mat) or a packed file")
            self.videos = {name: [f.stem for f in files] for name, files in groups}
        else:
            raise FileNotFoundError(f"VoxCeleb DECA codes not found at {self.path}: expected "
                                    f"<vox>/deca/test (folders of .mat files) or a packed {self.path}.npy/.json")

    def code156(self, video: str, frames: Sequence[str]) -> np.ndarray:
        """(len(frames), 156) float32 codes; ``ValueError`` naming the video / frame and the source."""
        from deca_edit.codes import code156, read_code_mat

        if video not in self.videos:
            raise ValueError(f"video {video!r} is not in the DECA codes at {self.path}")
        have = set(self.videos[video])
        missing = [f for f in frames if f not in have]
        if missing:
            raise ValueError(f"frame {missing[0]!r} of video {video!r} is not in the DECA codes at "
                             f"{self.path} ({len(missing)} missing)")
        if self.packed is not None:
            rows = [self.packed.row_of(video, f) for f in frames]
            return np.asarray(self.packed.code156[rows], dtype=np.float32)
        return np.stack([code156(read_code_mat(self.path / video / f"{f}.mat")) for f in frames]).astype(np.float32)


class AnimeCelebTest:
    """AnimeCeleb identities (from a list file, or given), with their image folders.

    Args:
        root: AnimeCeleb root (``combined_pose.csv``, ``rotation/``, ``basis/``).
        id_list: ``test_list.txt`` (one ``org_id`` a line); or
        ids: the identities themselves.
        image_folder: the frames folder inside ``root``.
    """

    def __init__(self, root: str | os.PathLike, id_list: Optional[str | os.PathLike] = None, *,
                 ids: Optional[Sequence[str]] = None, image_folder: str = "rotation") -> None:
        from anime_generator.data import load_or_build_index, read_id_list

        if (id_list is None) == (ids is None):
            raise ValueError("give the AnimeCeleb identities as a list file or as ids (one of them)")
        self.root = Path(root).expanduser()
        self.image_dir = self.root / image_folder
        self.index = load_or_build_index(self.root)
        where = Path(id_list).expanduser() if id_list is not None else "the identities"
        self.ids = read_id_list(where) if id_list is not None else [str(i) for i in ids]
        missing = [i for i in self.ids if i not in self.index]
        if missing:
            raise ValueError(f"{where}: identity {missing[0]!r} is not in "
                             f"{self.root / 'combined_pose.csv'} ({len(missing)} missing)")

    def source(self, identity: str) -> str:
        """The identity's source image, relative to the root (``basis/<folder>/basis.png``)."""
        return f"basis/{self.index[identity]['folder_name']}/{SOURCE_NAME}"

    def images(self, identity: str) -> list[Path]:
        """Every frame image of the identity, in the pose table's order."""
        entry = self.index[identity]
        folder = self.image_dir / entry["num_cluster"] / entry["folder_name"]
        return [folder / name for name in entry["img_names"]]


# ----------------------------------------------------------------------------- making the protocol
def _sample_frames(frames: Sequence[str], count: int, sampling: str, rng: np.random.Generator) -> tuple[str, ...]:
    n = len(frames)
    if n <= count:
        return tuple(frames)
    if sampling == "uniform":
        picks = np.unique(np.round(np.linspace(0, n - 1, count)).astype(int))
    else:  # window
        start = int(rng.integers(0, n - count + 1))
        picks = np.arange(start, start + count)
    return tuple(frames[i] for i in picks)


def make_protocol(codes: VoxCodes, anime: AnimeCelebTest, *, seed: int = 0,
                  frames_per_pair: int = DEFAULT_FRAMES_PER_PAIR, max_videos: Optional[int] = None,
                  pairs_per_video: int = 1, sampling: str = "uniform") -> list[EvalPair]:
    """The evaluation pairs (see the module docstring for the rules).

    Raises:
        ValueError: a bad count / sampling, no usable video (each needs >= 2 frames), or a test
        identity whose source image is missing (the message names the file).
    """
    if sampling not in FRAME_SAMPLINGS:
        raise ValueError(f"frame sampling must be one of {FRAME_SAMPLINGS}, got {sampling!r}")
    if frames_per_pair < MIN_FRAMES:
        raise ValueError(f"frames_per_pair must be >= {MIN_FRAMES} (KDR compares with the first frame)")
    if pairs_per_video < 1:
        raise ValueError(f"pairs_per_video must be >= 1, got {pairs_per_video}")
    rng = np.random.default_rng(seed)
    videos = sorted(v for v, frames in codes.videos.items() if len(frames) >= MIN_FRAMES)
    if not videos:
        raise ValueError(f"{codes.path}: no video with at least {MIN_FRAMES} frames")
    if max_videos is not None and max_videos < len(videos):
        videos = sorted(rng.choice(videos, size=max_videos, replace=False).tolist())
    for identity in anime.ids:
        source = anime.root / anime.source(identity)
        if not source.is_file():
            raise ValueError(f"source image of AnimeCeleb identity {identity!r} not found: {source}")
    order = [anime.ids[i] for i in rng.permutation(len(anime.ids))]
    pairs = []
    for k, video in enumerate(videos):
        for j in range(pairs_per_video):
            identity = order[(k * pairs_per_video + j) % len(order)]
            frames = _sample_frames(codes.videos[video], frames_per_pair, sampling, rng)
            pairs.append(EvalPair(f"p{len(pairs):0{PAIR_ID_DIGITS}d}", video, identity,
                                  anime.source(identity), frames))
    return pairs


# ----------------------------------------------------------------------------- CSV
def write_protocol(path: str | os.PathLike, pairs: Sequence[EvalPair]) -> Path:
    """Write the protocol CSV atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(PROTOCOL_COLUMNS)
            for p in pairs:
                writer.writerow([p.pair, p.video, p.identity, p.source, FRAME_SEPARATOR.join(p.frames)])
    return path


def read_protocol(path: str | os.PathLike) -> list[EvalPair]:
    """Read and check a protocol CSV.

    Raises:
        FileNotFoundError: no file. ValueError: wrong header, an empty protocol, a duplicate pair
        id, or a pair with fewer than 2 frames (the message names the file and the line).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"protocol file not found: {path} (make one with scripts/make_protocol.py)")
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    if not rows or tuple(rows[0]) != PROTOCOL_COLUMNS:
        raise ValueError(f"{path}: header must be {','.join(PROTOCOL_COLUMNS)}, got "
                         f"{','.join(rows[0]) if rows else 'an empty file'}")
    pairs, seen = [], set()
    for line, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        if len(row) != len(PROTOCOL_COLUMNS):
            raise ValueError(f"{path}, line {line}: expected {len(PROTOCOL_COLUMNS)} columns, got {len(row)}")
        pair, video, identity, source, frames = row
        frames = tuple(frames.split())
        if pair in seen:
            raise ValueError(f"{path}, line {line}: pair id {pair!r} appears twice")
        if len(frames) < MIN_FRAMES:
            raise ValueError(f"{path}, line {line}: pair {pair!r} has {len(frames)} frame(s); KDR "
                             f"needs at least {MIN_FRAMES}")
        seen.add(pair)
        pairs.append(EvalPair(pair, video, identity, source, frames))
    if not pairs:
        raise ValueError(f"{path}: the protocol holds no pairs")
    return pairs


def protocol_digest(pairs: Sequence[EvalPair]) -> str:
    """A short sha256 of the pairs (renders record it so a changed protocol is not mixed in)."""
    digest = hashlib.sha256()
    for p in pairs:
        digest.update("\x1f".join((p.pair, p.video, p.identity, p.source, *p.frames)).encode())
        digest.update(b"\x1e")
    return digest.hexdigest()[:16]


def check_protocol(pairs: Sequence[EvalPair], protocol_path: str | os.PathLike, *,
                   codes: Optional[VoxCodes] = None, anime_root: Optional[str | os.PathLike] = None,
                   images_root: Optional[str | os.PathLike] = None) -> None:
    """Check, before any work, that everything the protocol names exists.

    Args:
        pairs: the protocol rows. protocol_path: its file (named in messages).
        codes: the DECA codes (every video and frame must be there).
        anime_root: the AnimeCeleb root (every source image must be there).
        images_root: the driving frames ``<images_root>/<video>/<frame>.png`` (KDR's human side).
    Raises:
        ValueError: one message naming the protocol file, the pair and the missing file / video.
    """
    for p in pairs:
        where = f"{protocol_path}: pair {p.pair!r}"
        if codes is not None:
            if p.video not in codes.videos:
                raise ValueError(f"{where} names video {p.video!r}, which is not in the DECA codes at "
                                 f"{codes.path}")
            have = set(codes.videos[p.video])
            missing = [f for f in p.frames if f not in have]
            if missing:
                raise ValueError(f"{where}: frame {missing[0]!r} of video {p.video!r} is not in the DECA "
                                 f"codes at {codes.path}")
        if anime_root is not None:
            source = Path(anime_root).expanduser() / p.source
            if not source.is_file():
                raise ValueError(f"{where} names identity {p.identity!r} whose source image is missing: "
                                 f"{source}")
        if images_root is not None:
            folder = Path(images_root).expanduser() / p.video
            for frame in p.frames:
                image = folder / f"{frame}{IMAGE_SUFFIX}"
                if not image.is_file():
                    raise ValueError(f"{where}: driving frame {image} not found")


# ----------------------------------------------------------------------------- the FID real set
def real_image_paths(anime: AnimeCelebTest, identities: Optional[Sequence[str]] = None, *,
                     per_identity: Optional[int] = DEFAULT_REAL_PER_IDENTITY, seed: int = 0) -> list[Path]:
    """A seeded sample of ``per_identity`` images (all when ``None``) of each identity (default:
    the whole list), in identity-list order."""
    rng = np.random.default_rng(seed)
    paths = []
    for identity in (anime.ids if identities is None else identities):
        images = anime.images(identity)
        if per_identity is not None and per_identity < len(images):
            picks = np.sort(rng.choice(len(images), size=per_identity, replace=False))
            images = [images[i] for i in picks]
        paths.extend(images)
    return paths


def prepare_real_set(paths: Sequence[Path], size: int, out_dir: str | os.PathLike, *,
                     progress: bool = True) -> Path:
    """Write the FID real set: each image composited over white (rounded), resized to ``size``²
    (antialiased) and saved as PNG ``<out_dir>/<index>_<stem>.png``. Idempotent (existing files are
    kept) and atomic per file. Returns ``out_dir``."""
    from PIL import Image
    from tqdm.auto import tqdm

    from anime_generator.data import load_rgb

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for k, path in enumerate(tqdm(paths, desc="real set", unit="image", disable=not progress)):
        target = out_dir / f"{k:06d}_{Path(path).stem}{IMAGE_SUFFIX}"
        if target.is_file():
            continue
        rgb = load_rgb(path, size=size, resize_filter="area")
        with atomic_path(target) as tmp:
            Image.fromarray(rgb).save(tmp, format="PNG")
    return out_dir
