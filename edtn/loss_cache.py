"""Per-dataset cache of the real-side loss targets of the fast EDTN loss.

The real mesh of the EDTN loss depends only on the driving code, so
:meth:`edtn.losses.GeometryLoss.real_targets` is computed once per dataset, in batches, and stored
as a float32 ``.npy`` array (N, :data:`~edtn.losses.REAL_TARGET_DIM`) that training memory-maps.
``real_targets`` evaluates the exact polynomial of the real side (no FLAME forward, tens of
thousands of samples/s on a CPU; ``scripts/bench_edtn_loss.py`` measures it), so the cache of
VoxCeleb's ≈5.5M frames takes minutes.

The file name carries a content hash::

    <cache_dir>/<name>.real_targets.<hash16>.npy

over everything the values depend on: every FLAME buffer (model data and landmark embedding, as
loaded), the kinematic tree, the morph basis, the target layout, the FLAME dtype, and the bytes of
the EDTN inputs (float32 (N, 53)). A matching file is reused; a change of the FLAME model, the
basis or the data gives a new hash and a rebuild (older files of the same ``name`` are removed).
The file is written through :func:`infra.files.atomic_path`, so a crash never leaves a file that
looks complete. In multi-process training build it on one rank first, then let the others call
this function (they find the file and only hash the data).
"""
from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch

from deca_edit.codes import edtn_input_from_code156
from edtn.losses import REAL_TARGET_DIM, GeometryLoss
from infra.files import atomic_path

__all__ = ["CACHE_FORMAT", "cache_key", "real_target_cache_path", "build_real_target_cache",
           "as_edtn_inputs"]

_log = logging.getLogger(__name__)

CACHE_FORMAT = "edtn-real-targets/2"  # /2: values from the polynomial real side
CACHE_SUFFIX = ".real_targets"
HASH_CHARS = 16
HASH_CHUNK_ROWS = 1 << 16
DEFAULT_BATCH_SIZE = 2048  # the polynomial real side needs ≈ 25 MB per 2048 samples
EDTN_INPUT_DIM = 53
CODE156_DIM = 156

CodesLike = Union[np.ndarray, torch.Tensor, Any]  # Any: an object with .code156 (PackedCodes)


def as_edtn_inputs(codes: CodesLike) -> np.ndarray:
    """A (N, 53) or (N, 156) array view of ``codes`` (numpy, torch, or ``PackedCodes``)."""
    if hasattr(codes, "code156") and not isinstance(codes, (np.ndarray, torch.Tensor)):
        codes = codes.code156
    if isinstance(codes, torch.Tensor):
        codes = codes.detach().cpu().numpy()
    codes = np.asarray(codes) if not isinstance(codes, np.ndarray) else codes
    if codes.ndim != 2 or codes.shape[1] not in (EDTN_INPUT_DIM, CODE156_DIM):
        raise ValueError(f"codes must have shape (N, {EDTN_INPUT_DIM}) or (N, {CODE156_DIM}), "
                         f"got {codes.shape}")
    return codes


def _input_chunk(codes: np.ndarray, start: int, stop: int) -> np.ndarray:
    chunk = np.asarray(codes[start:stop], dtype=np.float32)
    if chunk.shape[1] == CODE156_DIM:
        chunk = edtn_input_from_code156(chunk)
    return np.ascontiguousarray(chunk, dtype=np.float32)


def _update_tensor(digest, name: str, tensor: torch.Tensor) -> None:
    array = tensor.detach().cpu().contiguous().numpy()
    digest.update(f"{name}|{array.dtype.str}|{array.shape}|".encode())
    digest.update(array.tobytes())


def cache_key(loss: GeometryLoss, codes: CodesLike) -> str:
    """Hex content hash of (FLAME data, basis, target layout, EDTN inputs) for ``codes``."""
    codes = as_edtn_inputs(codes)
    digest = hashlib.blake2b(digest_size=20)
    digest.update(f"{CACHE_FORMAT}|dim={REAL_TARGET_DIM}|".encode())
    flame = loss.flame
    for name, buffer in sorted(flame.named_buffers(), key=lambda item: item[0]):
        _update_tensor(digest, f"flame.{name}", buffer)
    digest.update(f"parents={getattr(flame, 'parents', None)}|".encode())
    _update_tensor(digest, "basis", loss.basis.to(torch.float32))
    digest.update(f"rows={codes.shape[0]}|".encode())
    for start in range(0, codes.shape[0], HASH_CHUNK_ROWS):
        digest.update(_input_chunk(codes, start, start + HASH_CHUNK_ROWS).tobytes())
    return digest.hexdigest()


def real_target_cache_path(cache_dir: Union[str, os.PathLike], name: str, key: str) -> Path:
    """``<cache_dir>/<name>.real_targets.<key[:16]>.npy``."""
    return Path(cache_dir) / f"{name}{CACHE_SUFFIX}.{key[:HASH_CHARS]}.npy"


def _default_location(codes: Any, cache_dir, name) -> tuple[Path, str]:
    npy_path = getattr(codes, "npy_path", None)  # PackedCodes: store next to the packed file
    if cache_dir is None:
        if npy_path is None:
            raise ValueError("cache_dir is required unless codes is a PackedCodes")
        cache_dir = Path(npy_path).parent
    if name is None:
        name = Path(npy_path).stem if npy_path is not None else "codes"
    return Path(cache_dir), name


def build_real_target_cache(codes: CodesLike, loss: GeometryLoss,
                            cache_dir: Union[str, os.PathLike, None] = None, *,
                            name: Optional[str] = None, batch_size: int = DEFAULT_BATCH_SIZE,
                            progress: bool = True) -> np.ndarray:
    """Return the real-side targets of ``codes`` as a read-only memmap (N, REAL_TARGET_DIM = 161) float32.

    Args:
        codes: ``PackedCodes``, or an array/tensor (N, 53) EDTN inputs or (N, 156) code156.
        loss: the :class:`~edtn.losses.GeometryLoss` whose FLAME and basis define the targets
            (runs on its device).
        cache_dir: folder of the cache file; default: next to the packed codes.
        name: file-name stem; default: the packed file's stem, else ``codes``.
        batch_size: samples per :meth:`~edtn.losses.GeometryLoss.real_targets` call.
        progress: tqdm bar while building.
    Raises:
        ValueError: bad shapes, or non-finite targets (names the first bad row).
    """
    from tqdm.auto import tqdm

    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    cache_dir, name = _default_location(codes, cache_dir, name)
    inputs = as_edtn_inputs(codes)
    path = real_target_cache_path(cache_dir, name, cache_key(loss, inputs))
    total = inputs.shape[0]
    if path.is_file():
        cached = np.load(path, mmap_mode="r")
        if cached.shape == (total, REAL_TARGET_DIM) and cached.dtype == np.float32:
            _log.info("real-target cache hit: %s", path)
            return cached
        _log.warning("real-target cache %s has shape %s %s; rebuilding", path, cached.shape,
                     cached.dtype)
        del cached

    device = loss.flame.v_template.device
    dtype = loss.flame.v_template.dtype
    _log.info("building real-target cache %s (%d samples)", path, total)
    with atomic_path(path) as tmp:
        table = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32,
                                          shape=(total, REAL_TARGET_DIM))
        with tqdm(total=total, desc=f"real targets {name}", unit="sample",
                  disable=not progress) as bar:
            for start in range(0, total, batch_size):
                stop = min(start + batch_size, total)
                x = torch.from_numpy(_input_chunk(inputs, start, stop)).to(device, dtype)
                values = loss.real_targets(x).to("cpu", torch.float32).numpy()
                bad = ~np.isfinite(values).all(axis=1)
                if bad.any():
                    raise ValueError(f"non-finite real targets for code row {start + int(bad.argmax())}")
                table[start:stop] = values
                bar.update(stop - start)
        table.flush()
        del table
    for stale in cache_dir.glob(f"{name}{CACHE_SUFFIX}.*.npy"):
        if stale != path:
            _log.info("removing stale real-target cache %s", stale)
            stale.unlink(missing_ok=True)
    return np.load(path, mmap_mode="r")
