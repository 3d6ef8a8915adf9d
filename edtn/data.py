"""DECA-code datasets for EDTN training: per frame, the EDTN input (53,) and the cached real-side
loss targets (D,).

Sources (both give the same :class:`CodeSource`):

* a packed code file pair ``<prefix>.npy`` / ``<prefix>.json`` (``scripts/pack_deca_codes.py``,
  read with :class:`deca_edit.codes.PackedCodes`) — what training uses;
* a folder of DECA ``.mat`` files: ``<root>/deca/train`` with one sub-folder per video
  (``<video>.mp4/NNNNNNN.mat``), or a flat folder of frames (one video named after the folder).

The split is by video: ``data.train`` / ``data.test`` name two sources, or one source plus
``train_list`` / ``test_list`` text files select videos. :class:`VideoFrameSampler` draws every
frame or ``k`` random frames per video each epoch, shuffled from ``(seed, epoch)`` only, and
shards the order across DDP ranks the way ``DistributedSampler`` does, so a resumed run sees
exactly the batches an uninterrupted run would.

Batches come from :class:`ResidentLoader` (default): the epoch's order cut into batches, each one
gathered by index from the in-memory arrays (optionally kept on the training device). The
per-sample ``torch.utils.data.DataLoader`` (``data.loader=dataloader``) gives the same batches.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence, Union

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from deca_edit.codes import (PackedCodes, code156, edtn_input_from_code156, find_code_videos,
                             read_code_mat)

__all__ = [
    "EDTN_INPUT_DIM",
    "Video",
    "CodeSource",
    "open_code_source",
    "read_video_list",
    "select_videos",
    "CodeFrames",
    "VideoFrameSampler",
    "collate_batch",
    "build_loader",
    "ResidentLoader",
]

EDTN_INPUT_DIM = 53          # DECA exp (50) + jaw axis-angle (3)
MAT_SUFFIX = ".mat"
PACKED_SUFFIXES = (".npy", ".json")
CHUNK_ROWS = 65536           # rows converted / validated at a time from a memmap


@dataclass(frozen=True)
class Video:
    """One video's frames inside a :class:`CodeSource`: rows ``start .. start+count-1``."""

    name: str
    start: int
    count: int
    frames: tuple[str, ...] = ()


@dataclass
class CodeSource:
    """All frames of one code file / folder.

    Attributes:
        path: the packed prefix or the ``.mat`` folder (used in error messages and cache names).
        inputs: (N, 53) float32 EDTN inputs, rows grouped by video.
        videos: the videos, in row order.
        packed: the :class:`PackedCodes` reader when the source is a packed file, else ``None``.
    """

    path: Path
    inputs: np.ndarray
    videos: list[Video]
    packed: Any = None

    def locate(self, row: int) -> str:
        """Human-readable ``video 'x' frame 'stem' (row r)`` for a global row index."""
        for video in self.videos:
            if video.start <= row < video.start + video.count:
                k = row - video.start
                frame = video.frames[k] if len(video.frames) > k else str(k)
                return f"video {video.name!r} frame {frame!r} (row {row})"
        return f"row {row}"


def _packed_prefix(path: Path) -> Optional[Path]:
    """``<prefix>`` if ``path`` names a packed pair (with or without its suffix), else None."""
    prefix = path.with_suffix("") if path.suffix in PACKED_SUFFIXES else path
    if all(Path(f"{prefix}{s}").is_file() for s in PACKED_SUFFIXES):
        return prefix
    return None


def _field(item: Any, key: str) -> Any:
    return item[key] if isinstance(item, dict) else getattr(item, key)


def _validate_rows(inputs: np.ndarray, source: CodeSource) -> None:
    """Raise ``ValueError`` naming the file and the video/frame of the first non-finite row."""
    for lo in range(0, len(inputs), CHUNK_ROWS):
        bad = ~np.isfinite(inputs[lo:lo + CHUNK_ROWS]).all(axis=1)
        if bad.any():
            row = lo + int(np.flatnonzero(bad)[0])
            raise ValueError(f"{source.path}: non-finite (NaN/Inf) DECA code in "
                             f"{source.locate(row)}")


def _open_packed(prefix: Path) -> CodeSource:
    packed = PackedCodes(prefix)
    code = packed.code156
    if code.ndim != 2 or code.shape[1] != 156:
        raise ValueError(f"{prefix}: packed codes give code156 of shape {tuple(code.shape)}, "
                         "expected (N, 156)")
    inputs = np.empty((len(code), EDTN_INPUT_DIM), dtype=np.float32)
    for lo in range(0, len(code), CHUNK_ROWS):
        inputs[lo:lo + CHUNK_ROWS] = edtn_input_from_code156(np.asarray(code[lo:lo + CHUNK_ROWS]))
    videos = [Video(str(_field(v, "name")), int(_field(v, "start")), int(_field(v, "count")),
                    tuple(_field(v, "frames"))) for v in packed.videos]
    source = CodeSource(prefix, inputs, videos, packed=packed)
    total = sum(v.count for v in videos)
    if total != len(inputs):
        raise ValueError(f"{prefix}: index lists {total} frames but the array has {len(inputs)} rows")
    _validate_rows(inputs, source)
    return source


def _open_mat_folder(root: Path, progress: bool) -> CodeSource:
    from tqdm import tqdm

    groups = find_code_videos(root)
    if not groups:
        raise ValueError(f"{root}: no {MAT_SUFFIX} files (flat) and no video sub-folders holding them")
    n_total = sum(len(files) for _, files in groups)
    inputs = np.empty((n_total, EDTN_INPUT_DIM), dtype=np.float32)
    videos, row = [], 0
    with tqdm(total=n_total, desc=f"reading {root.name}", unit="frame", disable=not progress) as bar:
        for name, files in groups:
            videos.append(Video(name, row, len(files), tuple(f.stem for f in files)))
            for file in files:
                # read_code_mat raises CodeFileError naming the file (corrupt, NaN, wrong shape).
                inputs[row] = edtn_input_from_code156(code156(read_code_mat(file)))
                row += 1
                bar.update()
    return CodeSource(root, inputs, videos)


def open_code_source(path: Union[str, os.PathLike], progress: bool = False) -> CodeSource:
    """Open a packed prefix (``x`` for ``x.npy`` + ``x.json``) or a folder of ``.mat`` files.

    Every frame is checked: a NaN/Inf or wrongly shaped code raises ``ValueError``
    (``deca_edit.codes.CodeFileError`` for ``.mat`` files) naming the file and, for packed data,
    the video and frame.
    """
    path = Path(path).expanduser()
    prefix = _packed_prefix(path)
    if prefix is not None:
        return _open_packed(prefix)
    if path.is_dir():
        return _open_mat_folder(path, progress)
    raise FileNotFoundError(f"DECA codes not found at {path}: expected a packed pair "
                            f"{path}.npy + {path}.json (scripts/pack_deca_codes.py) or a folder "
                            f"of {MAT_SUFFIX} files")


def read_video_list(path: Union[str, os.PathLike]) -> list[str]:
    """Video names from a text file, one a line (blank lines and ``#`` comments ignored)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"video list {path} does not exist")
    names = [line.strip() for line in path.read_text().splitlines()]
    return [n for n in names if n and not n.startswith("#")]


def select_videos(source: CodeSource, names: Optional[Sequence[str]], list_path: str = "") -> list[Video]:
    """The videos of ``source`` named in ``names`` (all when ``None``), in the source's order.

    A ``.mp4`` suffix is ignored when matching. Raises ``ValueError`` listing names that are not
    in the source (a typo in a list file must not silently shrink the split).
    """
    if names is None:
        return list(source.videos)

    def key(name: str) -> str:
        return name[:-4] if name.endswith(".mp4") else name

    wanted = {key(n) for n in names}
    chosen = [v for v in source.videos if key(v.name) in wanted]
    missing = wanted - {key(v.name) for v in chosen}
    if missing:
        some = ", ".join(sorted(missing)[:5])
        raise ValueError(f"{list_path or 'video list'}: {len(missing)} video(s) not in "
                         f"{source.path}: {some}{' ...' if len(missing) > 5 else ''}")
    return chosen


class CodeFrames(Dataset):
    """Frames of some videos of a :class:`CodeSource`.

    Item ``i`` is a dict: ``input`` (53,) float32, ``index`` (int64, the row in the source, i.e.
    in the real-target cache) and, when ``targets`` is given, ``target`` (D,) float32. The batched
    ``__getitems__`` (used by ``DataLoader``) returns the stacked dict at once, so a batch of 512
    costs one fancy-indexing op instead of 512 Python calls.

    Args:
        source: the opened codes.
        videos: the subset of ``source.videos`` in this split.
        targets: (N, D) real-side loss targets for every row of ``source`` (or ``None``).
    """

    def __init__(self, source: CodeSource, videos: Sequence[Video],
                 targets: Optional[np.ndarray] = None) -> None:
        if targets is not None and len(targets) != len(source.inputs):
            raise ValueError(f"real-target cache has {len(targets)} rows but {source.path} has "
                             f"{len(source.inputs)} frames (stale cache?)")
        self.source = source
        self.videos = list(videos)
        # a plain ndarray view of a memmap: fancy indexing then skips np.memmap's per-call wrapping
        self.targets = np.asarray(targets) if targets is not None else None
        self.rows = np.concatenate([np.arange(v.start, v.start + v.count) for v in self.videos]
                                   ) if self.videos else np.zeros(0, dtype=np.int64)
        self.rows = self.rows.astype(np.int64)
        # Each video's first position in this dataset, and its frame count (for the sampler).
        self.video_counts = np.array([v.count for v in self.videos], dtype=np.int64)
        self.video_offsets = np.concatenate([[0], np.cumsum(self.video_counts)[:-1]]).astype(np.int64)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitems__(self, positions: Sequence[int]) -> dict[str, torch.Tensor]:
        rows = self.rows[np.asarray(positions, dtype=np.int64)]
        batch = {"input": torch.from_numpy(np.ascontiguousarray(self.source.inputs[rows])),
                 "index": torch.from_numpy(rows)}
        if self.targets is not None:
            batch["target"] = torch.from_numpy(
                np.ascontiguousarray(self.targets[rows], dtype=np.float32))
        return batch

    def __getitem__(self, position: int) -> dict[str, torch.Tensor]:
        return {k: v[0] for k, v in self.__getitems__([position]).items()}


def collate_batch(batch: Any) -> dict[str, torch.Tensor]:
    """``collate_fn`` for :class:`CodeFrames`: passes an already stacked dict through, stacks a
    list of per-item dicts otherwise."""
    if isinstance(batch, dict):
        return batch
    return {k: torch.stack([item[k] for item in batch]) for k in batch[0]}


class VideoFrameSampler(Sampler[int]):
    """Per-epoch frame order for :class:`CodeFrames`, sharded across DDP ranks.

    Each epoch: every frame (``frames_per_video=None``) or ``k`` frames per video drawn without
    replacement (all frames of a shorter video), then shuffled. The order depends only on
    ``(seed, epoch)`` (call :meth:`set_epoch`), never on global RNG state, so resuming at an epoch
    boundary reproduces it exactly. With ``world_size > 1`` the order is padded (``drop_last=False``,
    wrapping round as ``DistributedSampler`` does) or truncated (``drop_last=True``) to a multiple
    of ``world_size`` and rank ``r`` takes positions ``r, r+W, ...``.
    """

    def __init__(self, dataset: CodeFrames, frames_per_video: Optional[int] = None,
                 shuffle: bool = True, seed: int = 0, rank: int = 0, world_size: int = 1,
                 drop_last: bool = False) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world_size {world_size}")
        self.offsets = dataset.video_offsets
        self.counts = dataset.video_counts
        self.frames_per_video = frames_per_video
        self.shuffle, self.seed, self.epoch = shuffle, seed, 0
        self.rank, self.world_size, self.drop_last = rank, world_size, drop_last

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order :meth:`__iter__` yields."""
        self.epoch = int(epoch)

    def _epoch_positions(self) -> np.ndarray:
        rng = np.random.default_rng([self.seed, self.epoch])
        if self.frames_per_video is None:
            positions = np.arange(int(self.counts.sum()), dtype=np.int64)
        else:
            k = self.frames_per_video
            chunks = [off + (rng.choice(n, size=k, replace=False) if n > k else np.arange(n))
                      for off, n in zip(self.offsets, self.counts)]
            positions = np.concatenate(chunks).astype(np.int64) if chunks else np.zeros(0, np.int64)
            positions.sort()  # order then comes from the shuffle alone
        if self.shuffle:
            positions = positions[rng.permutation(len(positions))]
        return positions

    def _total(self, n: int) -> int:
        if self.world_size == 1:
            return n
        return (n // self.world_size if self.drop_last else math.ceil(n / self.world_size)) * self.world_size

    def epoch_order(self) -> np.ndarray:
        """This rank's positions for the current epoch, (len(self),) int64: what iterating yields."""
        positions = self._epoch_positions()
        total = self._total(len(positions))
        if total > len(positions) and len(positions):
            reps = math.ceil(total / len(positions))
            positions = np.tile(positions, reps)
        return positions[:total][self.rank::self.world_size]

    def __iter__(self) -> Iterator[int]:
        return iter(self.epoch_order().tolist())

    def __len__(self) -> int:
        if self.frames_per_video is None:
            n = int(self.counts.sum())
        else:
            n = int(np.minimum(self.counts, self.frames_per_video).sum())
        return self._total(n) // self.world_size


def build_loader(dataset: CodeFrames, batch_size: int, *, train: bool, seed: int = 0,
                 frames_per_video: Optional[int] = None, num_workers: int = 0,
                 device: Union[str, torch.device] = "cpu", rank: int = 0, world_size: int = 1,
                 resident: bool = True, on_device: bool = False,
                 ) -> Union["ResidentLoader", DataLoader]:
    """Batches of ``dataset``: a :class:`ResidentLoader` (default) or a per-sample ``DataLoader``.

    Training: shuffled, ``frames_per_video`` sampling, ``drop_last``; evaluation: every frame in
    order, each rank a disjoint share (no padding, so sums over ranks are exact). ``batch_size`` is
    per process. Both kinds give the same batches in the same order (the order comes from the
    sampler alone) and expose ``sampler`` (``set_epoch``), ``generator`` (seeded; its state is
    saved in checkpoints; it only seeds DataLoader worker processes) and ``len()``.

    Args:
        resident: ``True``: :class:`ResidentLoader`, batches gathered by index from the
            in-memory arrays; ``False``: ``torch.utils.data.DataLoader`` with ``num_workers``
            (memory pinned only for CUDA).
        on_device: (resident only) keep the split's inputs and targets on ``device``.
    """
    if train:
        sampler = VideoFrameSampler(dataset, frames_per_video, shuffle=True, seed=seed,
                                    rank=rank, world_size=world_size, drop_last=True)
    else:
        sampler = _ShardSampler(len(dataset), rank, world_size)
    generator = torch.Generator()
    generator.manual_seed(seed)
    if resident:
        return ResidentLoader(dataset, batch_size, sampler, drop_last=train, device=device,
                              on_device=on_device, generator=generator)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=train,
                      num_workers=num_workers, collate_fn=collate_batch,
                      pin_memory=torch.device(device).type == "cuda",
                      persistent_workers=num_workers > 0, generator=generator)


class ResidentLoader:
    """Batches of a :class:`CodeFrames` gathered by index from memory-resident arrays.

    No per-sample ``Dataset`` calls and no collation: each epoch the sampler's order (one numpy
    array, :meth:`VideoFrameSampler.epoch_order`) is cut into consecutive batches and every batch
    is one gather per array, so the batches, their order and their values are exactly those of the
    ``DataLoader`` of :func:`build_loader` (``resident=False``).

    * ``on_device=False``: the arrays stay on the host (the source's inputs, the real-target
      cache as memory-mapped / page-cached) and each batch is gathered there (pinned for CUDA;
      the caller copies it with ``non_blocking=True``).
    * ``on_device=True``: the split's inputs (N, 53) and targets (N, 161) are copied once to
      ``device`` (in chunks, so the host never holds a second copy) and batches are gathered
      there: a CUDA step then does no host transfer. VoxCeleb's ≈5.5M frames take ≈4.7 GB.

    Items of a batch: ``input`` (B, 53) float32, ``index`` (B,) int64 (the source rows) and,
    with targets, ``target`` (B, 161) float32.

    Args:
        dataset: the split. batch_size: per process. sampler: :class:`VideoFrameSampler` (train)
        or the evaluation shard sampler (anything with ``epoch_order()`` and ``len()``).
        drop_last: drop the incomplete last batch. device: the training device.
        on_device: see above. generator: kept for the checkpoint format (seeded like the
        ``DataLoader``'s).
    """

    def __init__(self, dataset: CodeFrames, batch_size: int, sampler: Any, *, drop_last: bool,
                 device: Union[str, torch.device] = "cpu", on_device: bool = False,
                 generator: Optional[torch.Generator] = None) -> None:
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.dataset, self.batch_size, self.sampler = dataset, batch_size, sampler
        self.drop_last = drop_last
        self.device = torch.device(device)
        self.on_device = on_device
        self.generator = generator if generator is not None else torch.Generator()
        self._tables: dict[str, torch.Tensor] = {}
        if on_device:
            self._tables["input"] = _to_device_rows(dataset.source.inputs, dataset.rows, self.device)
            if dataset.targets is not None:
                self._tables["target"] = _to_device_rows(dataset.targets, dataset.rows, self.device)
            self._tables["index"] = torch.from_numpy(dataset.rows).to(self.device)
        self._pin = self.device.type == "cuda" and not on_device

    def __len__(self) -> int:
        n = len(self.sampler)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        return self.batches(0)

    def batches(self, start: int = 0) -> Iterator[dict[str, torch.Tensor]]:
        """The current epoch's batches from batch ``start`` on (resume inside an epoch: the
        batches before ``start`` are not gathered)."""
        order = self.sampler.epoch_order()
        if self.on_device:
            order = torch.from_numpy(np.ascontiguousarray(order)).to(self.device)
        size = self.batch_size
        for i in range(start, len(self)):
            positions = order[i * size:(i + 1) * size]
            if self.on_device:
                yield {k: table.index_select(0, positions) for k, table in self._tables.items()}
                continue
            batch = self.dataset.__getitems__(positions)
            yield {k: v.pin_memory() for k, v in batch.items()} if self._pin else batch


def _to_device_rows(array: np.ndarray, rows: np.ndarray, device: torch.device) -> torch.Tensor:
    """``array[rows]`` (N, D) as a float32 tensor on ``device``, copied in chunks of rows."""
    out = torch.empty((len(rows), array.shape[1]), dtype=torch.float32, device=device)
    for lo in range(0, len(rows), CHUNK_ROWS):
        chunk = np.ascontiguousarray(array[rows[lo:lo + CHUNK_ROWS]], dtype=np.float32)
        out[lo:lo + len(chunk)] = torch.from_numpy(chunk).to(device)
    return out


class _ShardSampler(Sampler[int]):
    """Positions ``rank, rank+W, ...`` of ``range(n)`` in order (evaluation sharding)."""

    def __init__(self, n: int, rank: int, world_size: int) -> None:
        self.n, self.rank, self.world_size = n, rank, world_size

    def set_epoch(self, epoch: int) -> None:  # same order every epoch
        pass

    def epoch_order(self) -> np.ndarray:
        return np.arange(self.rank, self.n, self.world_size, dtype=np.int64)

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.n, self.world_size))

    def __len__(self) -> int:
        return len(range(self.rank, self.n, self.world_size))


# ----------------------------------------------------------------------------- split + targets
def open_split(path: Union[str, os.PathLike, CodeSource], list_path: Optional[str] = None,
               progress: bool = False) -> tuple[CodeSource, list[Video]]:
    """Open a code source (or take an opened one) and pick a split's videos: all, or those named
    in the text file ``list_path``."""
    source = path if isinstance(path, CodeSource) else open_code_source(path, progress=progress)
    names = read_video_list(list_path) if list_path else None
    videos = select_videos(source, names, list_path or "")
    if not videos or sum(v.count for v in videos) == 0:
        raise ValueError(f"{source.path}: the split selected by {list_path or 'all videos'} has no frames")
    return source, videos


def real_targets_for(source: CodeSource, loss: Any, cache_dir: Optional[str] = None,
                     progress: bool = False) -> np.ndarray:
    """Real-side loss targets (N, REAL_TARGET_DIM) for every row of ``source`` (the fast loss path).

    Uses the content-hashed cache of :func:`edtn.loss_cache.build_real_target_cache`, stored in
    ``cache_dir`` or, by default, next to the packed file (``<prefix>.real_targets.<hash>.npy``);
    a ``.mat`` folder needs ``cache_dir``. Returns a read-only memmap.
    """
    from edtn.loss_cache import build_real_target_cache

    if cache_dir is None and source.packed is None:
        raise ValueError(f"{source.path} is a .mat folder: give data.cache_dir for its real-target "
                         "cache (or pack it with scripts/pack_deca_codes.py)")
    folder = Path(cache_dir) if cache_dir else source.path.parent
    return build_real_target_cache(source.inputs, loss, folder, name=source.path.name,
                                   progress=progress)
