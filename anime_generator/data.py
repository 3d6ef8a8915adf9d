"""AnimeCeleb training pairs (and the AnimeCeleb + VoxCeleb/DECA variant) for the anime generator.

Folder layout (generator README §8)::

    <root>/combined_pose.csv                       org_id, num_cluster, png_name, 20 pose values
    <root>/cached.json                             index cache, written on first use
    <root>/rotation/<num_cluster>/<folder>/<png>   RGBA frames; <folder> = png.split('_')[0]
    <root>/basis/<folder>/basis.png                (only with return_basis)
    <vox_root>/images/{train,test}/<video>.mp4/NNNNNNN.png
    <vox_root>/deca/{train,test}/<video>.mp4/NNNNNNN.mat

Differences from the original loaders, all deliberate (SPEC §7):

* Every path comes from arguments/config: the identity lists are files given explicitly, never
  probed relative to the working directory.
* The index cache has string keys and the reference ``cached.json`` content; it is written
  atomically (temporary file + rename), so a crash never leaves an empty cache. Its location is
  configurable (``cache_path``; default ``<root>/cached.json``).
* RGBA is composited over ``background`` with rounding (``composite='round'``);
  ``composite='original'`` reproduces the reference's float32 arithmetic and truncation.
* Frames are really resized to ``image_size`` (PIL, antialiased) instead of ``np.resize``.
* Time flip swaps the poses together with the frames.
* Every random choice of an item (frames, flips, jitter, anime partner) comes from a NumPy
  generator seeded by ``(seed, epoch, index)``: items do not depend on worker count, process or
  rank, and a resumed run sees exactly the same data. Call :meth:`set_epoch` every epoch
  (:func:`set_loader_epoch` does it together with the sampler).
* Vox identities and videos are sorted (the original used set order, which changes per process).

Items are CHW float32 in [0, 1] and float32 poses (20,) (DECA codes (156,) on the vox side).
"""
from __future__ import annotations

import json
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from infra.files import atomic_path
from infra.image_io import COMPOSITE_MODES, composite_rgba

__all__ = [
    "POSE_DIM",
    "DECA_CODE_DIM",
    "COMPOSITE_MODES",
    "ColorJitterParams",
    "ClipAugmentation",
    "composite_rgba",
    "load_rgb",
    "to_float_chw",
    "build_anime_index",
    "load_or_build_index",
    "read_id_list",
    "draw_clip_augmentation",
    "apply_clip_augmentation",
    "AnimeCelebDataset",
    "AnimeCelebDecaDataset",
    "build_dataloader",
    "set_loader_epoch",
]

log = logging.getLogger(__name__)

POSE_DIM = 20                       # 17 morphs in [0,1] + 3 angles in degrees
CSV_POSE_START = 3                  # pose columns 3..22 of combined_pose.csv (by position)
DECA_KEYS = ("shape", "exp", "pose")  # concatenated: 100 + 50 + 6
DECA_CODE_DIM = 156
RESIZE_FILTERS = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "lanczos": Image.LANCZOS,
                  "area": Image.BOX, "nearest": Image.NEAREST}
UINT8_MAX = 255
INV_255_F32 = np.float32(1.0 / 255.0)   # skimage img_as_float32 multiplies by this
FLIP_PROBABILITY = 0.5
SPLIT_DIRS = {"train": "train", "valid": "test", "test": "test"}


# ----------------------------------------------------------------------------- pixels
def load_rgb(path: str | os.PathLike, background: Sequence[int] = (255, 255, 255),
             composite: str = "round", size: Optional[int] = None, resize_filter: str = "bilinear") -> np.ndarray:
    """Read an image file as (H,W,3) uint8 RGB: alpha composited, optionally resized to size².

    Raises:
        FileNotFoundError: naming the missing file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    with Image.open(path) as img:
        has_alpha = img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info)
        array = np.asarray(img.convert("RGBA" if has_alpha else "RGB"))
    rgb = composite_rgba(array, background, composite)
    if size is not None and rgb.shape[:2] != (size, size):
        if resize_filter not in RESIZE_FILTERS:
            raise ValueError(f"resize_filter must be one of {list(RESIZE_FILTERS)}, got {resize_filter!r}")
        rgb = np.asarray(Image.fromarray(rgb).resize((size, size), RESIZE_FILTERS[resize_filter]))
    return rgb


def to_float_chw(image: np.ndarray) -> torch.Tensor:
    """(H,W,3) uint8 -> (3,H,W) float32 in [0,1], bit-identical to skimage ``img_as_float32``."""
    return torch.from_numpy(np.ascontiguousarray((image * INV_255_F32).transpose(2, 0, 1)))


# ----------------------------------------------------------------------------- index
def build_anime_index(csv_path: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """Build the ``cached.json`` tree from ``combined_pose.csv`` (columns used by position).

    Returns:
        ``{str(org_id): {num_cluster: str, folder_name: str, img_names: [png, ...],
        pose_information: [[20 floats], ...]}}`` with frames in CSV row order.
    """
    import pandas as pd

    frame = pd.read_csv(csv_path)
    if frame.shape[1] < CSV_POSE_START + POSE_DIM:
        raise ValueError(f"{csv_path}: expected >= {CSV_POSE_START + POSE_DIM} columns "
                         f"(org_id, num_cluster, png_name, 20 pose values), got {frame.shape[1]}")
    tree: dict[str, dict[str, Any]] = {}
    ids = frame.iloc[:, 0].to_numpy()
    clusters = frame.iloc[:, 1].to_numpy()
    names = frame.iloc[:, 2].astype(str).to_numpy()
    poses = frame.iloc[:, CSV_POSE_START:CSV_POSE_START + POSE_DIM].to_numpy(dtype=np.float64)
    for org_id, cluster, name, pose in zip(ids, clusters, names, poses):
        entry = tree.setdefault(str(int(org_id)), {"num_cluster": str(int(cluster)),
                                                   "folder_name": name.split("_")[0],
                                                   "img_names": [], "pose_information": []})
        entry["img_names"].append(str(name))
        entry["pose_information"].append([float(v) for v in pose])
    return tree


def load_or_build_index(root: str | os.PathLike, csv_name: str = "combined_pose.csv",
                        cache_path: str | os.PathLike | None = None,
                        rebuild: bool = False) -> dict[str, dict[str, Any]]:
    """Load the index cache, building and writing it atomically on first use.

    Args:
        root: AnimeCeleb root folder.
        csv_name: pose table inside ``root``.
        cache_path: cache file (default ``<root>/cached.json``).
        rebuild: ignore an existing cache.

    An unreadable cache (e.g. the empty file the original leaves behind) is rebuilt with a warning.
    """
    root = Path(root)
    cache = Path(cache_path) if cache_path else root / "cached.json"
    if cache.is_file() and not rebuild:
        try:
            with open(cache, encoding="utf-8") as handle:
                return json.load(handle)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            warnings.warn(f"index cache {cache} is unreadable ({exc}); rebuilding it")
    csv_path = root / csv_name
    if not csv_path.is_file():
        raise FileNotFoundError(f"AnimeCeleb pose table not found: {csv_path} (data.root / data.csv_name)")
    tree = build_anime_index(csv_path)
    with atomic_path(cache) as tmp:
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump(tree, handle)
    log.info("wrote index cache %s (%d identities)", cache, len(tree))
    return tree


def read_id_list(path: str | os.PathLike) -> list[str]:
    """Identity ids (strings) of a ``train_list.txt``/``test_list.txt``, one per line, file order."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"identity list not found: {path}")
    with open(path, encoding="utf-8") as handle:
        ids = [line.strip() for line in handle if line.strip()]
    if not ids:
        raise ValueError(f"identity list {path} is empty")
    return ids


# ----------------------------------------------------------------------------- augmentation
@dataclass(frozen=True)
class ColorJitterParams:
    """Ranges of the colour jitter (torchvision ColorJitter semantics); 0 disables a component."""

    brightness: float = 0.1
    contrast: float = 0.1
    saturation: float = 0.1
    hue: float = 0.1


@dataclass(frozen=True)
class ClipAugmentation:
    """One random draw shared by every frame of a clip."""

    time_flip: bool = False
    horizontal_flip: bool = False
    jitter: Optional[tuple[tuple[str, float], ...]] = None  # ordered (adjustment, factor) pairs


def draw_clip_augmentation(rng: np.random.Generator, time_flip: bool, horizontal_flip: bool,
                           jitter: Optional[ColorJitterParams]) -> ClipAugmentation:
    """Draw one clip's flips and colour jitter (factors and a random order of the adjustments)."""
    flip_t = bool(time_flip and rng.random() < FLIP_PROBABILITY)
    flip_h = bool(horizontal_flip and rng.random() < FLIP_PROBABILITY)
    ops = None
    if jitter is not None:
        drawn = []
        for name in ("brightness", "contrast", "saturation"):
            r = getattr(jitter, name)
            if r > 0:
                drawn.append((name, float(rng.uniform(max(0.0, 1 - r), 1 + r))))
        if jitter.hue > 0:
            drawn.append(("hue", float(rng.uniform(-jitter.hue, jitter.hue))))
        order = rng.permutation(len(drawn))
        ops = tuple(drawn[i] for i in order)
    return ClipAugmentation(flip_t, flip_h, ops)


def _jitter(image: np.ndarray, ops: tuple[tuple[str, float], ...]) -> np.ndarray:
    import torchvision.transforms.functional as TF

    pil = Image.fromarray(image)
    for name, factor in ops:
        pil = getattr(TF, f"adjust_{name}")(pil, factor)
    return np.asarray(pil)


def apply_clip_augmentation(frames: list[np.ndarray], poses: list[np.ndarray],
                            aug: ClipAugmentation) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Apply one draw to a clip of (H,W,3) uint8 frames and their poses.

    Time flip reverses frames *and* poses (the original reversed only the frames). Horizontal
    flip mirrors every frame; the poses are left unchanged because the mirror mapping of the 17
    morphs is not defined by the data (off in both original configs).
    """
    frames, poses = list(frames), list(poses)
    if aug.time_flip:
        frames, poses = frames[::-1], poses[::-1]
    if aug.horizontal_flip:
        frames = [np.ascontiguousarray(f[:, ::-1]) for f in frames]
    if aug.jitter:
        frames = [_jitter(f, aug.jitter) for f in frames]
    return frames, poses


# ----------------------------------------------------------------------------- datasets
class _EpochSeeded(Dataset):
    """Base: per-item NumPy generator from (seed, epoch, index)."""

    seed: int = 0
    epoch: int = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the random draws of ``epoch`` (call before iterating)."""
        self.epoch = int(epoch)

    def _rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, index])


class AnimeCelebDataset(_EpochSeeded):
    """AnimeCeleb source/driving pairs of one identity.

    Args:
        root: AnimeCeleb root (holds ``combined_pose.csv`` and ``rotation/``).
        id_list: identity list file (``train_list.txt`` / ``test_list.txt``).
        image_size: output side in px (frames are resized when different); ``None`` keeps native.
        train: enable augmentation (flips / jitter).
        csv_name, image_folder, cache_path: layout overrides.
        background, composite, resize_filter: pixel handling (see :func:`load_rgb`).
        time_flip, horizontal_flip, color_jitter: augmentation (train only); ``None`` jitter = off.
        num_repeats: the identity list is repeated this many times per epoch.
        return_basis: also return ``basis`` (the identity's neutral ``basis.png``).
        seed: base seed of the per-item generators.

    Item: ``source``, ``driving`` (3,S,S) float32 [0,1]; ``source_pose``, ``driving_pose`` (20,)
    float32; ``name`` (id string); ``basis`` when requested. Source is the earlier frame of two
    drawn with replacement (before a time flip), as in the original.
    """

    def __init__(self, root: str | os.PathLike, id_list: str | os.PathLike, image_size: Optional[int] = 256,
                 train: bool = True, csv_name: str = "combined_pose.csv", image_folder: str = "rotation",
                 cache_path: str | os.PathLike | None = None, background: Sequence[int] = (255, 255, 255),
                 composite: str = "round", resize_filter: str = "bilinear", time_flip: bool = True,
                 horizontal_flip: bool = False, color_jitter: Optional[ColorJitterParams] = ColorJitterParams(),
                 num_repeats: int = 1, return_basis: bool = False, seed: int = 0):
        if num_repeats < 1:
            raise ValueError(f"num_repeats must be >= 1, got {num_repeats}")
        if composite not in COMPOSITE_MODES:
            raise ValueError(f"composite must be one of {COMPOSITE_MODES}, got {composite!r}")
        self.root = Path(root)
        self.image_dir = self.root / image_folder
        self.index = load_or_build_index(self.root, csv_name, cache_path)
        self.ids = read_id_list(id_list)
        missing = [i for i in self.ids if i not in self.index]
        if missing:
            raise ValueError(f"identity list {id_list}: ids {missing[:5]} are not in {self.root / csv_name}")
        self.image_size, self.train = image_size, train
        self.background, self.composite, self.resize_filter = tuple(background), composite, resize_filter
        self.time_flip, self.horizontal_flip = time_flip, horizontal_flip
        self.color_jitter = color_jitter
        self.num_repeats, self.return_basis, self.seed = int(num_repeats), return_basis, int(seed)

    def __len__(self) -> int:
        return len(self.ids) * self.num_repeats

    def _load(self, path: Path) -> np.ndarray:
        return load_rgb(path, self.background, self.composite, self.image_size, self.resize_filter)

    def sample_identity(self, identity: str, rng: np.random.Generator) -> dict[str, Any]:
        """One augmented pair of ``identity`` drawn with ``rng``."""
        entry = self.index[identity]
        n_frames = len(entry["img_names"])
        pick = np.sort(rng.choice(n_frames, 2, replace=True))
        folder = self.image_dir / entry["num_cluster"] / entry["folder_name"]
        frames = [self._load(folder / entry["img_names"][i]) for i in pick]
        poses = [np.asarray(entry["pose_information"][i], dtype=np.float32) for i in pick]
        if self.train:
            aug = draw_clip_augmentation(rng, self.time_flip, self.horizontal_flip, self.color_jitter)
            frames, poses = apply_clip_augmentation(frames, poses, aug)
        item: dict[str, Any] = {
            "source": to_float_chw(frames[0]), "driving": to_float_chw(frames[1]),
            "source_pose": torch.from_numpy(poses[0]), "driving_pose": torch.from_numpy(poses[1]),
            "name": identity,
        }
        if self.return_basis:
            basis = self.root / "basis" / entry["folder_name"] / "basis.png"
            item["basis"] = to_float_chw(self._load(basis))
        return item

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        return self.sample_identity(self.ids[index % len(self.ids)], self._rng(index))


class AnimeCelebDecaDataset(_EpochSeeded):
    """AnimeCeleb pairs combined with VoxCeleb frames and their DECA codes (``animeceleb_deca``).

    Item ``idx`` is vox identity ``idx`` (sorted; part of the video name before the first ``#``)
    with one of its videos drawn at random, paired with a random anime identity drawn uniformly
    from all of them (the original never drew the last one). Length:
    ``min(#anime ids, #vox ids) * num_repeats``. Flips and jitter are drawn independently for the
    two clips.

    Args:
        anime: an :class:`AnimeCelebDataset` providing anime pairs (its ``train`` flag applies).
        vox_root: VoxCeleb root holding ``images/`` and ``deca/``.
        split: ``train`` or ``valid`` (folder ``test``).
        images_dir, deca_dir: sub-folder names under ``vox_root``.

    Item: ``{'anime': {source, driving, source_pose, driving_pose, name}, 'vox': {source,
    driving, source_pose (156,), driving_pose (156,), name}}``; vox codes are DECA
    ``concat(shape 100, exp 50, pose 6)`` float32.
    """

    def __init__(self, anime: AnimeCelebDataset, vox_root: str | os.PathLike, split: str = "train",
                 images_dir: str = "images", deca_dir: str = "deca", num_repeats: int = 1, seed: int = 0):
        if split not in SPLIT_DIRS:
            raise ValueError(f"split must be one of {list(SPLIT_DIRS)}, got {split!r}")
        self.anime = anime
        self.image_root = Path(vox_root) / images_dir / SPLIT_DIRS[split]
        self.deca_root = Path(vox_root) / deca_dir / SPLIT_DIRS[split]
        if not self.deca_root.is_dir():
            raise FileNotFoundError(f"DECA code folder not found: {self.deca_root} (data.vox_root)")
        videos = sorted(p.name for p in self.deca_root.iterdir() if p.is_dir())
        self.videos_by_id: dict[str, list[str]] = {}
        for video in videos:
            self.videos_by_id.setdefault(video.split("#")[0], []).append(video)
        self.vox_ids = sorted(self.videos_by_id)
        if not self.vox_ids:
            raise ValueError(f"no video folders in {self.deca_root}")
        self.num_repeats, self.seed = int(num_repeats), int(seed)

    def __len__(self) -> int:
        return min(len(self.anime.ids), len(self.vox_ids)) * self.num_repeats

    @staticmethod
    def read_deca_code(path: Path) -> np.ndarray:
        """(156,) float32 ``concat(shape, exp, pose)`` of one DECA ``.mat`` file."""
        from scipy.io import loadmat

        mat = loadmat(path)
        missing = [k for k in DECA_KEYS if k not in mat]
        if missing:
            raise ValueError(f"{path}: DECA keys {missing} missing")
        code = np.concatenate([np.asarray(mat[k], dtype=np.float32).reshape(-1) for k in DECA_KEYS])
        if code.shape != (DECA_CODE_DIM,):
            raise ValueError(f"{path}: DECA code has {code.shape[0]} values, expected {DECA_CODE_DIM}")
        return code

    def _vox_pair(self, identity: str, rng: np.random.Generator) -> dict[str, Any]:
        videos = self.videos_by_id[identity]
        video = videos[int(rng.integers(len(videos)))]
        stems = sorted(p.stem for p in (self.deca_root / video).glob("*.mat"))
        if not stems:
            raise ValueError(f"no .mat files in {self.deca_root / video}")
        pick = np.sort(rng.choice(len(stems), 2, replace=True))
        a = self.anime
        frames = [load_rgb(self.image_root / video / f"{stems[i]}.png", a.background, a.composite,
                           a.image_size, a.resize_filter) for i in pick]
        codes = [self.read_deca_code(self.deca_root / video / f"{stems[i]}.mat") for i in pick]
        if a.train:
            aug = draw_clip_augmentation(rng, a.time_flip, a.horizontal_flip, a.color_jitter)
            frames, codes = apply_clip_augmentation(frames, codes, aug)
        return {"source": to_float_chw(frames[0]), "driving": to_float_chw(frames[1]),
                "source_pose": torch.from_numpy(codes[0]), "driving_pose": torch.from_numpy(codes[1]),
                "name": video}

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        rng = self._rng(index)
        vox_id = self.vox_ids[index % min(len(self.anime.ids), len(self.vox_ids))]
        anime_id = self.anime.ids[int(rng.integers(len(self.anime.ids)))]
        return {"anime": self.anime.sample_identity(anime_id, rng), "vox": self._vox_pair(vox_id, rng)}


# ----------------------------------------------------------------------------- loaders
def build_dataloader(dataset: Dataset, batch_size: int, train: bool, num_workers: int = 0,
                     rank: int = 0, world_size: int = 1, seed: int = 0,
                     pin_memory: bool = False) -> DataLoader:
    """DataLoader over ``dataset`` with a :class:`DistributedSampler` (also for one process).

    The sampler shuffles (train) with ``seed + epoch`` and shards across ``world_size`` ranks;
    training drops the last incomplete batch. Call :func:`set_loader_epoch` before each epoch.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=train,
                                 seed=seed, drop_last=train)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                      drop_last=train, pin_memory=pin_memory, persistent_workers=False)


def set_loader_epoch(loader: DataLoader, epoch: int) -> None:
    """Set the epoch of the loader's sampler and dataset (shuffling and per-item draws)."""
    if hasattr(loader.sampler, "set_epoch"):
        loader.sampler.set_epoch(epoch)
    if hasattr(loader.dataset, "set_epoch"):
        loader.dataset.set_epoch(epoch)
