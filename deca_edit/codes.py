"""DECA per-frame code files (``.mat``) and the packed, memory-mappable code format.

Per-frame files
    One scipy ``savemat`` file per frame with the keys of :data:`CODE_SHAPES` (float32):
    ``shape`` (1,100), ``tex`` (1,50), ``exp`` (1,50), ``pose`` (1,6), ``cam`` (1,3),
    ``light`` (9,3) and, when a detail encoder was run, ``detail`` (1,128). VoxCeleb layout:
    ``<root>/deca/{train,test}/<video>.mp4/NNNNNNN.mat``.

Code 156 and the EDTN input
    ``code156 = shape(100) ⊕ exp(50) ⊕ pose(6)`` (what the original trains on) and the EDTN input is
    ``code156[100:150] ⊕ code156[153:156]`` = expression 50 ⊕ jaw axis-angle 3 (53 numbers).

Packed codes (format ``edtn-packed-codes/1``)
    Reading hundreds of thousands of small ``.mat`` files is slow, so a split is packed once into

    * ``<prefix>.npy``: float32 array (N, C), one row per frame, memory-mappable;
    * ``<prefix>.json``: the index::

        {"format": "edtn-packed-codes/1", "dtype": "float32", "num_frames": N, "num_columns": C,
         "columns": {"shape": [0, 100], "exp": [100, 150], "pose": [150, 156], "cam": [156, 159]},
         "videos": [{"name": ..., "start": row, "count": n, "frames": [stem, ...]}, ...],
         "skipped": [{"path": relative path, "reason": ...}, ...]}

    The columns ``shape``, ``exp``, ``pose`` always come first, so ``codes[:, :156]`` is code156.
    Videos and frames are sorted by name: packing the same tree twice gives byte-identical files.
    Both files are written atomically (the ``.json`` last), so a crashed pack never looks complete.

Use :func:`pack_code_tree` to write and :class:`PackedCodes` to read.
"""
from __future__ import annotations

import json
import os
from itertools import repeat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence

import numpy as np

from infra.files import atomic_path, atomic_save_npy

__all__ = [
    "CODE_SHAPES",
    "COARSE_KEYS",
    "CODE156_KEYS",
    "PACK_FORMAT",
    "DEFAULT_PACK_COLUMNS",
    "CodeFileError",
    "read_code_mat",
    "write_code_mat",
    "code156",
    "edtn_input_from_code156",
    "find_code_videos",
    "PackResult",
    "pack_code_tree",
    "find_code_splits",
    "pack_code_splits",
    "write_packed_codes",
    "PackedVideo",
    "PackedCodes",
    "packed_paths",
    "validate_packed_index",
]

# Shape of every key of a per-frame DECA .mat file (as scipy writes/reads it).
CODE_SHAPES: dict[str, tuple[int, ...]] = {
    "shape": (1, 100),
    "tex": (1, 50),
    "exp": (1, 50),
    "pose": (1, 6),
    "cam": (1, 3),
    "light": (9, 3),
    "detail": (1, 128),
}
# Keys every coarse-encoder code file has (``detail`` needs the detail encoder).
COARSE_KEYS = ("shape", "tex", "exp", "pose", "cam", "light")
# code156 = shape ⊕ exp ⊕ pose.
CODE156_KEYS = ("shape", "exp", "pose")
CODE156_DIM = 156
# Slices of the EDTN input inside code156: expression (50) and jaw axis-angle (3).
EDTN_EXP_SLICE = slice(100, 150)
EDTN_JAW_SLICE = slice(153, 156)
EDTN_INPUT_DIM = 53

PACK_FORMAT = "edtn-packed-codes/1"
DEFAULT_PACK_COLUMNS = ("shape", "exp", "pose", "cam")
PACK_DTYPE = np.float32
MAT_SUFFIX = ".mat"


class CodeFileError(ValueError):
    """A DECA code file (``.mat`` or packed) is unreadable, incomplete, wrong-shaped or not finite.

    The message always starts with the offending path.
    """


def _flat_dim(key: str) -> int:
    return int(np.prod(CODE_SHAPES[key]))


# ----------------------------------------------------------------------------- .mat files
def read_code_mat(path: str | os.PathLike, keys: Optional[Sequence[str]] = None) -> dict[str, np.ndarray]:
    """Read and validate one per-frame DECA ``.mat`` file.

    Args:
        path: the ``.mat`` file.
        keys: keys that must be present (default: :data:`COARSE_KEYS`). Every known key that is
            present (``detail`` included) is returned and validated.

    Returns:
        ``{key: float32 array}`` with the shapes of :data:`CODE_SHAPES`.

    Raises:
        CodeFileError: unreadable/corrupt file, a missing key, a wrong shape, a non-numeric or
            non-finite (NaN/inf) value. The message names ``path`` and the problem.
    """
    from scipy.io import loadmat

    path = Path(path)
    required = tuple(COARSE_KEYS if keys is None else keys)
    unknown = [k for k in required if k not in CODE_SHAPES]
    if unknown:
        raise ValueError(f"unknown DECA code key(s) {unknown}; known: {list(CODE_SHAPES)}")
    try:
        raw = loadmat(str(path))
    except Exception as exc:  # noqa: BLE001 - scipy raises many types for a corrupt file
        raise CodeFileError(f"{path}: cannot read as a .mat file ({type(exc).__name__}: {exc})") from exc
    missing = [k for k in required if k not in raw]
    if missing:
        raise CodeFileError(f"{path}: missing key(s) {missing} (has {sorted(k for k in raw if not k.startswith('__'))})")
    out: dict[str, np.ndarray] = {}
    for key, expected in CODE_SHAPES.items():
        if key not in raw:
            continue
        value = raw[key]
        if not isinstance(value, np.ndarray) or value.dtype.kind not in "fiu":
            raise CodeFileError(f"{path}: key {key!r} is not a numeric array "
                                f"(got {type(value).__name__} {getattr(value, 'dtype', '')})")
        if value.shape != expected:
            raise CodeFileError(f"{path}: key {key!r} has shape {value.shape}, expected {expected}")
        value = value.astype(np.float32, copy=False)
        if not np.isfinite(value).all():
            raise CodeFileError(f"{path}: key {key!r} contains NaN or inf")
        out[key] = value
    return out


def write_code_mat(path: str | os.PathLike, codes: Mapping[str, Any]) -> Path:
    """Write one frame's codes as a DECA ``.mat`` file, atomically.

    Args:
        path: destination ``.mat`` file (parent folders are created).
        codes: ``{key: array}`` for keys of :data:`CODE_SHAPES`; each value may be a numpy array
            or a torch tensor with any shape of the right size (e.g. ``(100,)`` or ``(1,100)``,
            light ``(27,)`` or ``(9,3)``). Must contain :data:`COARSE_KEYS`.

    Returns:
        ``Path(path)``.
    """
    from scipy.io import savemat

    path = Path(path)
    missing = [k for k in COARSE_KEYS if k not in codes]
    if missing:
        raise ValueError(f"write_code_mat({path}): missing key(s) {missing}")
    data: dict[str, np.ndarray] = {}
    for key, value in codes.items():
        if key not in CODE_SHAPES:
            raise ValueError(f"write_code_mat({path}): unknown key {key!r}; known: {list(CODE_SHAPES)}")
        arr = _to_numpy(value).astype(np.float32)
        if arr.size != _flat_dim(key):
            raise ValueError(f"write_code_mat({path}): key {key!r} has {arr.size} values "
                             f"(shape {arr.shape}), expected {CODE_SHAPES[key]}")
        if not np.isfinite(arr).all():
            raise ValueError(f"write_code_mat({path}): key {key!r} contains NaN or inf")
        data[key] = arr.reshape(CODE_SHAPES[key])
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            savemat(handle, data)
    return path


def _to_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # torch tensor
        value = value.detach().cpu().numpy()
    return np.asarray(value)


# ----------------------------------------------------------------------------- code156 / EDTN input
def code156(codes: Mapping[str, Any], batched: bool = False) -> np.ndarray:
    """``shape ⊕ exp ⊕ pose`` as float32.

    Args:
        codes: a per-frame dict (as :func:`read_code_mat` returns: ``(1,100)``, ``(1,50)``,
            ``(1,6)``) or, with ``batched=True``, batched arrays ``(B,100)``, ``(B,50)``, ``(B,6)``.
        batched: keep the batch axis.

    Returns:
        ``(156,)`` for one frame, ``(B,156)`` when ``batched``.
    """
    parts = [_to_numpy(codes[k]).astype(np.float32).reshape(-1, _flat_dim(k)) for k in CODE156_KEYS]
    rows = {p.shape[0] for p in parts}
    if len(rows) != 1:
        raise ValueError(f"code156: shape/exp/pose have different batch sizes {sorted(rows)}")
    out = np.concatenate(parts, axis=1)
    if batched:
        return out
    if out.shape[0] != 1:
        raise ValueError(f"code156: got {out.shape[0]} rows for one frame; pass batched=True")
    return out[0]


def edtn_input_from_code156(code):
    """EDTN input ``code[..., 100:150] ⊕ code[..., 153:156]`` (expression 50 ⊕ jaw pose 3).

    Args:
        code: numpy array or torch tensor ``(..., 156)``.

    Returns:
        the same type, ``(..., 53)`` (a new array/tensor; gradients flow through for tensors).
    """
    shape = tuple(code.shape)
    if len(shape) == 0 or shape[-1] != CODE156_DIM:
        raise ValueError(f"edtn_input_from_code156: expected (..., {CODE156_DIM}), got {shape}")
    exp, jaw = code[..., EDTN_EXP_SLICE], code[..., EDTN_JAW_SLICE]
    if isinstance(code, np.ndarray):
        return np.concatenate([exp, jaw], axis=-1)
    import torch

    if isinstance(code, torch.Tensor):
        return torch.cat([exp, jaw], dim=-1)
    raise TypeError(f"edtn_input_from_code156: expected a numpy array or torch tensor, got {type(code).__name__}")


# ----------------------------------------------------------------------------- packing
def find_code_videos(source: str | os.PathLike) -> list[tuple[str, list[Path]]]:
    """List the videos of a code folder, sorted by name, each with its sorted ``.mat`` files.

    ``source`` is either a flat folder of ``.mat`` files (one video, named after the folder) or a
    folder of video sub-folders (``<video>/*.mat``; sub-folders without ``.mat`` files are ignored).
    Frames are sorted by file name.
    """
    source = Path(source)
    if not source.is_dir():
        raise FileNotFoundError(f"code folder {source} does not exist or is not a folder")
    direct = sorted(p for p in source.iterdir() if p.suffix == MAT_SUFFIX and p.is_file())
    if direct:
        return [(source.name, direct)]
    videos = []
    for sub in sorted(p for p in source.iterdir() if p.is_dir()):
        files = sorted(p for p in sub.iterdir() if p.suffix == MAT_SUFFIX and p.is_file())
        if files:
            videos.append((sub.name, files))
    return videos


def _check_columns(columns: Sequence[str]) -> tuple[str, ...]:
    columns = tuple(columns)
    if columns[: len(CODE156_KEYS)] != CODE156_KEYS:
        raise ValueError(f"packed columns must start with {list(CODE156_KEYS)} (so that [:, :156] is "
                         f"code156), got {list(columns)}")
    bad = [c for c in columns if c not in CODE_SHAPES]
    if bad or len(set(columns)) != len(columns):
        raise ValueError(f"packed columns {list(columns)}: unknown or repeated names; known: {list(CODE_SHAPES)}")
    return columns


def _column_index(columns: Sequence[str]) -> dict[str, list[int]]:
    index, start = {}, 0
    for name in columns:
        index[name] = [start, start + _flat_dim(name)]
        start += _flat_dim(name)
    return index


@dataclass
class PackResult:
    """What :func:`pack_code_tree` wrote.

    Attributes:
        prefix: output prefix (``<prefix>.npy`` / ``<prefix>.json``).
        num_frames: rows written.
        num_videos: videos written.
        skipped: ``[(path, reason)]`` of bad files left out (only with ``skip_bad``).
    """

    prefix: Path
    num_frames: int
    num_videos: int
    skipped: list[tuple[Path, str]] = field(default_factory=list)


def packed_paths(prefix: str | os.PathLike) -> tuple[Path, Path]:
    """``(<prefix>.npy, <prefix>.json)`` of a packed code file (a ``.npy``/``.json`` suffix is dropped)."""
    prefix = Path(prefix)
    if prefix.suffix in (".npy", ".json"):
        prefix = prefix.with_suffix("")
    return prefix.with_name(prefix.name + ".npy"), prefix.with_name(prefix.name + ".json")


def _write_index(json_path: Path, columns: Sequence[str], videos: list[dict], num_frames: int,
                 skipped: list[dict], extra: Optional[Mapping[str, Any]] = None) -> None:
    index = {
        "format": PACK_FORMAT,
        "dtype": np.dtype(PACK_DTYPE).name,
        "num_frames": num_frames,
        "num_columns": sum(_flat_dim(c) for c in columns),
        "columns": _column_index(columns),
        "videos": videos,
        "skipped": skipped,
    }
    if extra:
        index.update(extra)
    with atomic_path(json_path) as tmp:
        tmp.write_text(_format_index(index), encoding="utf-8")


def _format_index(index: Mapping[str, Any]) -> str:
    """JSON text with one video (one skipped file) per line: readable yet compact for 10^4 videos."""
    lines = []
    for key, value in index.items():
        if isinstance(value, list) and value:
            body = ",\n  ".join(json.dumps(item) for item in value)
            lines.append(f" {json.dumps(key)}: [\n  {body}\n ]")
        else:
            lines.append(f" {json.dumps(key)}: {json.dumps(value)}")
    return "{\n" + ",\n".join(lines) + "\n}\n"


def pack_code_tree(source: str | os.PathLike, prefix: str | os.PathLike, *,
                   columns: Sequence[str] = DEFAULT_PACK_COLUMNS, skip_bad: bool = False,
                   workers: int = 0, progress: bool = True) -> PackResult:
    """Pack a folder of per-frame ``.mat`` codes into ``<prefix>.npy`` + ``<prefix>.json``.

    Args:
        source: one split's code folder: ``<root>/deca/train`` (sub-folder per video) or a flat
            folder of ``.mat`` files (one video named after the folder), see :func:`find_code_videos`.
        prefix: output prefix; ``out/train`` writes ``out/train.npy`` and ``out/train.json``.
        columns: keys to store, in order; must start with ``shape, exp, pose``. Default adds
            ``cam`` (needed to project the mesh). Any of ``tex``, ``light``, ``detail`` may follow.
        skip_bad: leave out corrupt / wrong-shaped / non-finite files and list them in the result
            and in the index (``"skipped"``); otherwise the first bad file raises.
        workers: read videos in this many processes (0 = in this process); the output does not
            depend on it.
        progress: show a tqdm bar.

    Returns:
        :class:`PackResult`.

    Raises:
        CodeFileError: a bad file (without ``skip_bad``), naming its path.
        ValueError: no ``.mat`` files under ``source`` or bad ``columns``.
    """
    from tqdm.auto import tqdm

    columns = _check_columns(columns)
    source = Path(source)
    videos = find_code_videos(source)
    total = sum(len(files) for _, files in videos)
    if total == 0:
        raise ValueError(f"no {MAT_SUFFIX} files found in {source} (expected <video>/*.mat or *.mat)")
    npy_path, json_path = packed_paths(prefix)
    width = sum(_flat_dim(c) for c in columns)

    index_videos: list[dict] = []
    skipped: list[tuple[Path, str]] = []
    row = 0
    with atomic_path(npy_path) as tmp:
        # Rows are written straight to a memory map so a large split never sits in RAM.
        table = np.lib.format.open_memmap(tmp, mode="w+", dtype=PACK_DTYPE, shape=(total, width))
        with tqdm(total=total, desc=f"pack {source.name}", unit="frame", disable=not progress) as bar:
            for (name, files), (rows, stems, bad) in zip(videos, _read_videos(videos, columns, skip_bad, workers)):
                bar.update(len(files))
                skipped.extend(bad)
                if stems:
                    table[row:row + len(stems)] = rows
                    index_videos.append({"name": name, "start": row, "count": len(stems), "frames": stems})
                    row += len(stems)
        table.flush()
        del table
        if row == 0:
            raise ValueError(f"every {MAT_SUFFIX} file in {source} is bad; nothing to pack")
        if row < total:  # bad files were skipped: keep only the filled rows
            _truncate_npy_rows(tmp, row)
    skipped_index = [{"path": _relative(p, source), "reason": r} for p, r in skipped]
    _write_index(json_path, columns, index_videos, row, skipped_index)
    return PackResult(prefix=npy_path.with_suffix(""), num_frames=row, num_videos=len(index_videos),
                      skipped=skipped)


def _read_video_rows(files: Sequence[Path], columns: Sequence[str], skip_bad: bool):
    """Rows ``(k, C)``, their stems and ``[(path, reason)]`` of skipped files for one video."""
    rows, stems, bad = [], [], []
    for path in files:
        try:
            codes = read_code_mat(path, keys=columns)
        except CodeFileError as exc:
            if not skip_bad:
                raise
            bad.append((path, str(exc)))
            continue
        rows.append(np.concatenate([codes[c].reshape(-1) for c in columns]))
        stems.append(path.stem)
    width = sum(_flat_dim(c) for c in columns)
    return (np.stack(rows) if rows else np.zeros((0, width), PACK_DTYPE)), stems, bad


def _read_videos(videos, columns, skip_bad: bool, workers: int):
    """Yield :func:`_read_video_rows` per video, in order (in ``workers`` processes if > 0)."""
    if workers <= 0:
        for _, files in videos:
            yield _read_video_rows(files, columns, skip_bad)
        return
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=workers) as pool:
        # map() keeps the input order, so the output is identical to the serial path.
        yield from pool.map(_read_video_rows, [f for _, f in videos], repeat(tuple(columns)),
                            repeat(skip_bad), chunksize=8)


def _truncate_npy_rows(path: Path, rows: int, chunk: int = 65536) -> None:
    """Replace the 2-D ``.npy`` at ``path`` by its first ``rows`` rows (chunked copy, no big RAM)."""
    full = np.load(path, mmap_mode="r")
    with atomic_path(path) as staging:
        small = np.lib.format.open_memmap(staging, mode="w+", dtype=full.dtype, shape=(rows,) + full.shape[1:])
        for begin in range(0, rows, chunk):
            small[begin:begin + chunk] = full[begin:min(begin + chunk, rows)]
        small.flush()
        del small, full


def _relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


def find_code_splits(root: str | os.PathLike, splits: Sequence[str] = ("train", "test")) -> dict[str, Path]:
    """Code folders of the ``splits`` present under ``root``: ``<root>/deca/<split>`` or ``<root>/<split>``.

    Returns ``{split: folder}`` (empty when ``root`` has no split folder, i.e. it is itself one
    code folder).
    """
    root = Path(root)
    found = {}
    for split in splits:
        folder = next((p for p in (root / "deca" / split, root / split) if p.is_dir()), None)
        if folder is not None:
            found[split] = folder
    return found


def pack_code_splits(root: str | os.PathLike, out_dir: str | os.PathLike,
                     splits: Sequence[str] = ("train", "test"), **kwargs) -> dict[str, PackResult]:
    """Pack each split of a VoxCeleb-style tree to ``<out_dir>/<split>.{npy,json}``.

    Looks for ``<root>/deca/<split>`` first, then ``<root>/<split>``; a requested split found in
    neither is an error. ``kwargs`` go to :func:`pack_code_tree`.
    """
    root, out_dir = Path(root), Path(out_dir)
    found = find_code_splits(root, splits)
    absent = [s for s in splits if s not in found]
    if absent:
        raise FileNotFoundError(f"split(s) {absent} not found: looked for {root}/deca/<split> and {root}/<split>")
    return {split: pack_code_tree(found[split], out_dir / split, **kwargs) for split in splits}


def write_packed_codes(prefix: str | os.PathLike, videos: Iterable[tuple[str, Sequence[str], Mapping[str, Any]]],
                       columns: Sequence[str] = DEFAULT_PACK_COLUMNS) -> Path:
    """Write codes held in memory (e.g. from extraction) in the packed format.

    Args:
        prefix: output prefix.
        videos: ``(name, frame_stems, codes)`` per video, where ``codes[key]`` is ``(n, ...)`` with
            ``n = len(frame_stems)`` rows. Videos and frames are written in the given order.
        columns: as in :func:`pack_code_tree`.

    Returns:
        the prefix path.
    """
    columns = _check_columns(columns)
    npy_path, json_path = packed_paths(prefix)
    blocks, index_videos, row = [], [], 0
    for name, frames, codes in videos:
        n = len(frames)
        if n == 0:
            continue
        missing = [c for c in columns if c not in codes]
        if missing:
            raise ValueError(f"write_packed_codes: video {name!r} lacks column(s) {missing}")
        parts = []
        for c in columns:
            arr = _to_numpy(codes[c]).astype(PACK_DTYPE).reshape(n, -1)
            if arr.shape[1] != _flat_dim(c):
                raise ValueError(f"write_packed_codes: video {name!r} column {c!r} has {arr.shape[1]} "
                                 f"values per frame, expected {_flat_dim(c)}")
            parts.append(arr)
        blocks.append(np.concatenate(parts, axis=1))
        index_videos.append({"name": name, "start": row, "count": n, "frames": [str(f) for f in frames]})
        row += n
    width = sum(_flat_dim(c) for c in columns)
    table = np.concatenate(blocks, axis=0) if blocks else np.zeros((0, width), PACK_DTYPE)
    atomic_save_npy(table, npy_path)
    _write_index(json_path, columns, index_videos, row, [])
    return npy_path.with_suffix("")


# ----------------------------------------------------------------------------- reading packed codes
@dataclass(frozen=True)
class PackedVideo:
    """One video of a packed file: rows ``start : start + count`` hold ``frames`` (file stems)."""

    name: str
    start: int
    count: int
    frames: tuple[str, ...]

    @property
    def rows(self) -> slice:
        return slice(self.start, self.start + self.count)


def _field(index: Mapping[str, Any], key: str, kind: type | tuple, where: str) -> Any:
    if key not in index:
        raise CodeFileError(f"{where}: missing field {key!r}")
    value = index[key]
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        names = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
        raise CodeFileError(f"{where}: field {key!r} must be {names}, got {value!r:.80}")
    return value


def validate_packed_index(index: Any, shape: tuple[int, ...], json_path: str | os.PathLike
                          ) -> tuple[dict[str, tuple[int, int]], list["PackedVideo"]]:
    """Check every field of a packed-code JSON index against its array; return the columns and
    videos.

    Rules: ``format`` is :data:`PACK_FORMAT`; ``num_frames`` × ``num_columns`` is the array shape;
    ``columns`` are known keys with their exact widths, starting with shape, exp, pose, laid out
    contiguously without gaps or overlaps over all ``num_columns``; every video has a unique
    ``name``, integer ``start``/``count`` with its rows inside the array, ``count`` frame names, and
    the videos tile the rows without overlap (their counts add up to ``num_frames``).

    Raises:
        CodeFileError: naming the file, the field (and the video) and what is wrong.
    """
    where = str(json_path)
    if not isinstance(index, dict):
        raise CodeFileError(f"{where}: the index must be a JSON object, got {type(index).__name__}")
    fmt = index.get("format")
    if fmt != PACK_FORMAT:
        raise CodeFileError(f"{where}: format is {fmt!r}, expected {PACK_FORMAT!r}")
    num_frames = _field(index, "num_frames", int, where)
    num_columns = _field(index, "num_columns", int, where)
    if tuple(shape) != (num_frames, num_columns):
        raise CodeFileError(f"{where}: the array's shape {tuple(shape)} does not match num_frames x "
                            f"num_columns = ({num_frames}, {num_columns}) of the index")
    raw_columns = _field(index, "columns", dict, where)
    columns: dict[str, tuple[int, int]] = {}
    for name, span in raw_columns.items():
        if name not in CODE_SHAPES:
            raise CodeFileError(f"{where}: columns: unknown key {name!r} (known: {list(CODE_SHAPES)})")
        if (not isinstance(span, list) or len(span) != 2
                or not all(isinstance(v, int) and not isinstance(v, bool) for v in span)):
            raise CodeFileError(f"{where}: columns[{name!r}] must be [start, stop] integers, got {span!r}")
        start, stop = span
        if stop - start != _flat_dim(name):
            raise CodeFileError(f"{where}: columns[{name!r}] = [{start}, {stop}] spans {stop - start} "
                                f"values, {name!r} has {_flat_dim(name)}")
        columns[name] = (start, stop)
    order = sorted(columns.items(), key=lambda item: item[1][0])
    if [n for n, _ in order][: len(CODE156_KEYS)] != list(CODE156_KEYS):
        raise CodeFileError(f"{where}: columns must start with {list(CODE156_KEYS)} (got "
                            f"{[n for n, _ in order]})")
    position = 0
    for name, (start, stop) in order:
        if start != position:
            problem = "overlaps the previous column" if start < position else f"leaves a gap at {position}"
            raise CodeFileError(f"{where}: columns[{name!r}] = [{start}, {stop}] {problem}")
        position = stop
    if position != num_columns:
        raise CodeFileError(f"{where}: columns cover {position} of the {num_columns} array columns "
                            "(columns incomplete)")
    raw_videos = _field(index, "videos", list, where)
    videos, names = [], set()
    for i, entry in enumerate(raw_videos):
        label = f"{where}: videos[{i}]"
        if not isinstance(entry, dict):
            raise CodeFileError(f"{label} must be an object, got {entry!r:.80}")
        name = _field(entry, "name", str, label)
        label = f"{label} ({name!r})"
        start = _field(entry, "start", int, label)
        count = _field(entry, "count", int, label)
        frames = _field(entry, "frames", list, label)
        if name in names:
            raise CodeFileError(f"{label}: the name appears twice")
        if start < 0 or count < 1 or start + count > num_frames:
            raise CodeFileError(f"{label}: rows [{start}, {start + count}) are not inside the "
                                f"{num_frames} rows of the array")
        if len(frames) != count or not all(isinstance(f, str) for f in frames):
            raise CodeFileError(f"{label}: count is {count} but {len(frames)} frame names are listed")
        names.add(name)
        videos.append(PackedVideo(name, start, count, tuple(frames)))
    position = 0
    for video in sorted(videos, key=lambda v: v.start):
        if video.start != position:
            problem = ("overlaps the previous video" if video.start < position
                       else f"leaves rows {position}..{video.start - 1} to no video")
            raise CodeFileError(f"{where}: video {video.name!r} rows [{video.start}, "
                                f"{video.start + video.count}) {problem}")
        position = video.start + video.count
    if position != num_frames:
        raise CodeFileError(f"{where}: the videos' counts add up to {position}, num_frames is {num_frames}")
    return columns, videos


class PackedCodes:
    """Read-only view of a packed code file (``<prefix>.npy`` + ``<prefix>.json``).

    Example::

        packed = PackedCodes("data/codes/train")      # or ".../train.npy" / ".../train.json"
        len(packed)                                    # N frames
        packed.code156                                 # (N, 156) memmap view: shape ⊕ exp ⊕ pose
        packed.column("exp")                           # (N, 50) view
        packed.column("light")                         # (N, 9, 3) view (if packed)
        for video in packed.videos:                    # PackedVideo(name, start, count, frames)
            clip = packed.video(video.name)            # (count, C) rows of that video
        packed.row_of("id00001#...mp4", "0000003")     # global row index of one frame

    Args:
        prefix: path prefix (a ``.npy`` / ``.json`` suffix is accepted and dropped).
        mmap: memory-map the array (default) instead of reading it into RAM.

    Raises:
        CodeFileError: missing files, unknown format, or an index that disagrees with the array.
    """

    def __init__(self, prefix: str | os.PathLike, mmap: bool = True):
        self.npy_path, self.json_path = packed_paths(prefix)
        for path in (self.npy_path, self.json_path):
            if not path.is_file():
                raise CodeFileError(f"{path}: packed code file missing (write it with scripts/pack_deca_codes.py)")
        try:
            index = json.loads(self.json_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise CodeFileError(f"{self.json_path}: unreadable index ({exc})") from exc
        try:
            self.codes: np.ndarray = np.load(self.npy_path, mmap_mode="r" if mmap else None)
        except (OSError, ValueError) as exc:
            raise CodeFileError(f"{self.npy_path}: unreadable array ({exc})") from exc
        if self.codes.ndim != 2 or self.codes.dtype != PACK_DTYPE:
            raise CodeFileError(f"{self.npy_path}: array {self.codes.dtype} {tuple(self.codes.shape)}, "
                                "expected a 2-D float32 table")
        self.index = index
        self.columns, self.videos = validate_packed_index(index, self.codes.shape, self.json_path)
        self._by_name = {v.name: v for v in self.videos}

    def __len__(self) -> int:
        return int(self.codes.shape[0])

    def __getitem__(self, item):
        """Rows of the array (``packed[i]`` is one frame's C values)."""
        return self.codes[item]

    def __repr__(self) -> str:
        return (f"PackedCodes({str(self.npy_path.with_suffix(''))!r}, frames={len(self)}, "
                f"videos={len(self.videos)}, columns={list(self.columns)})")

    @property
    def code156(self) -> np.ndarray:
        """``(N, 156)`` view: shape ⊕ exp ⊕ pose."""
        return self.codes[:, :CODE156_DIM]

    @property
    def video_names(self) -> list[str]:
        return [v.name for v in self.videos]

    def column(self, name: str) -> np.ndarray:
        """``(N, dim)`` view of one key (``light`` comes back as ``(N, 9, 3)``)."""
        if name not in self.columns:
            raise KeyError(f"column {name!r} not in {self.json_path} (has {list(self.columns)})")
        start, stop = self.columns[name]
        view = self.codes[:, start:stop]
        return view.reshape(-1, *CODE_SHAPES[name]) if CODE_SHAPES[name][0] != 1 else view

    def video_info(self, video: str | int) -> PackedVideo:
        """:class:`PackedVideo` by name or by position in :attr:`videos`."""
        if isinstance(video, (int, np.integer)):
            return self.videos[int(video)]
        try:
            return self._by_name[video]
        except KeyError:
            raise KeyError(f"video {video!r} not in {self.json_path}") from None

    def video(self, video: str | int, check_finite: bool = False,
              limit: Optional[int] = None) -> np.ndarray:
        """``(count, C)`` rows of one video (by name or position); only the first ``limit`` when set.

        With ``check_finite`` a NaN/inf in those rows raises :class:`CodeFileError` naming the
        file, the row, the video, the frame and the column.
        """
        info = self.video_info(video)
        rows = self.codes[info.rows][:limit]
        if check_finite:
            bad = ~np.isfinite(rows)
            if bad.any():
                local, col = (int(v) for v in np.argwhere(bad)[0])
                column = next((n for n, (a, b) in self.columns.items() if a <= col < b), "?")
                raise CodeFileError(
                    f"{self.npy_path}: row {info.start + local} (video {info.name!r}, frame "
                    f"{info.frames[local]!r}) has NaN or inf in column {column!r}; "
                    f"{int(bad.any(axis=1).sum())} of the {len(rows)} rows read are affected")
        return rows

    def row_of(self, video: str | int, frame: str) -> int:
        """Global row index of ``frame`` (file stem) in ``video``."""
        info = self.video_info(video)
        try:
            return info.start + info.frames.index(frame)
        except ValueError:
            raise KeyError(f"frame {frame!r} not in video {info.name!r} of {self.json_path}") from None
