"""Readers for the two pickled asset formats of the FLAME head model (only :mod:`infra` imports).

* ``generic_model.pkl`` (FLAME 2020): a Python-2 pickle whose ``shapedirs`` is a chumpy ``Ch``.
  chumpy does not install on current Python / NumPy, so :func:`load_flame_model` reads the file
  without it: chumpy objects become plain float64 arrays taken from their pickled state key ``x``.
* ``landmark_embedding.npy`` (DECA): a dict saved by ``np.save``; some entries are torch tensors.

Neither file is unpickled with the stock unpickler: a pickle can call any importable function
(``posix.system``...). Each reader resolves only the globals of an explicit allow-list
(:data:`FLAME_GLOBALS`, :data:`EMBEDDING_GLOBALS`: NumPy array and dtype reconstruction, SciPy
sparse matrices, chumpy classes mapped to an inert stand-in, and for the embedding the torch
tensor rebuild with its storage read by ``torch.load(weights_only=True)``). Anything else is
refused with :class:`infra.checkpoint.UnsafeFileError` naming the file and the global, unless the
caller passes the explicit opt-in ``trust_checkpoint=True`` (only for files the user created).

They live in the base package because the asset check (:mod:`infra.assets`) opens both files and
the FLAME layer (:mod:`deca_edit.flame`) loads them; neither may import the other.
"""
from __future__ import annotations

import codecs
import collections
import io
import logging
import os
import pickle
import re
from pathlib import Path
from typing import Any, Union

import numpy as np
import scipy.sparse
import torch

from infra.checkpoint import UnsafeFileError

__all__ = ["load_flame_model", "load_landmark_embedding", "EMBEDDING_KEYS", "FLAME_GLOBALS",
           "EMBEDDING_GLOBALS"]

_logger = logging.getLogger(__name__)
_GLOBAL_IN_MESSAGE = re.compile(r"GLOBAL ([\w.]+)")

PathLike = Union[str, os.PathLike]

NUM_CONTOUR_LANDMARKS = 17
NUM_STATIC_LANDMARKS = 51
NUM_LANDMARKS = NUM_CONTOUR_LANDMARKS + NUM_STATIC_LANDMARKS  # 68
CONTOUR_LUT_ROWS = 79  # yaw 0..39 deg, then -1..-39 deg
EMBEDDING_KEYS = ("static_lmk_faces_idx", "static_lmk_bary_coords", "dynamic_lmk_faces_idx",
                  "dynamic_lmk_bary_coords", "full_lmk_faces_idx", "full_lmk_bary_coords")


class _ChumpyStandIn:
    """Takes the place of any ``chumpy.*`` class while unpickling; keeps the pickled state."""

    _state: Any = None  # set by BUILD; NEWOBJ creates the object without calling __init__

    def __setstate__(self, state: Any) -> None:
        self._state = state


def _numpy_core(name: str) -> Any:
    """``numpy.core.multiarray.<name>`` under its NumPy >= 2 home ``numpy._core`` when present."""
    core = getattr(np, "_core", None) or np.core
    return getattr(core.multiarray, name)


def _storage_from_bytes(data: bytes) -> Any:
    """Safe stand-in for ``torch.storage._load_from_bytes`` (which unpickles with
    ``weights_only=False``): the embedded torch blob holds one storage, read with ``weights_only``."""
    try:
        storage = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:  # the embedded blob itself references other globals
        names = sorted(set(_GLOBAL_IN_MESSAGE.findall(str(exc)))) or ["an unsupported construct"]
        raise _EmbeddedRefusal(names) from None
    if not isinstance(storage, (torch.TypedStorage, torch.UntypedStorage)):
        raise pickle.UnpicklingError(f"embedded torch blob holds a {type(storage).__name__}, "
                                     "expected a storage")
    return storage


class _EmbeddedRefusal(Exception):
    """A torch blob inside the pickle was refused by ``weights_only`` (names: its globals)."""

    def __init__(self, names: list[str]):
        super().__init__(", ".join(names))
        self.names = names


def _rebuild_tensor(storage: Any, offset: int, size: Any, stride: Any, requires_grad: Any = False,
                    backward_hooks: Any = None, metadata: Any = None) -> torch.Tensor:
    """``torch._utils._rebuild_tensor_v2`` without hooks or metadata (a landmark table needs none)."""
    if not isinstance(storage, torch.TypedStorage):
        raise pickle.UnpicklingError(f"tensor rebuilt from a {type(storage).__name__}, expected a storage")
    return torch._utils._rebuild_tensor(storage, int(offset), tuple(size), tuple(stride))


# Globals the official files reference (checked with pickletools on the kit's files), each mapped
# to what rebuilds it here. Anything else is refused (see _RestrictedUnpickler).
_NUMPY_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): lambda: _numpy_core("_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"): lambda: _numpy_core("_reconstruct"),
    ("numpy.core.multiarray", "scalar"): lambda: _numpy_core("scalar"),
    ("numpy._core.multiarray", "scalar"): lambda: _numpy_core("scalar"),
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: np.dtype,
    ("_codecs", "encode"): lambda: codecs.encode,  # bytes in protocol-2 pickles written by Python 3
}
_SPARSE_CLASSES = ("csc_matrix", "csr_matrix", "coo_matrix")
FLAME_GLOBALS = {
    **_NUMPY_GLOBALS,
    ("__builtin__", "set"): lambda: set,         # chumpy's _dirty_vars (Python-2 name)
    ("builtins", "set"): lambda: set,
    **{(module, name): (lambda name=name: getattr(scipy.sparse, name))
       for module in ("scipy.sparse.csc", "scipy.sparse._csc", "scipy.sparse.csr",
                      "scipy.sparse._csr", "scipy.sparse.coo", "scipy.sparse._coo", "scipy.sparse")
       for name in _SPARSE_CLASSES},
}
EMBEDDING_GLOBALS = {
    **_NUMPY_GLOBALS,
    ("collections", "OrderedDict"): lambda: collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): lambda: _rebuild_tensor,
    ("torch.storage", "_load_from_bytes"): lambda: _storage_from_bytes,
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals of an allow-list; anything else raises
    :class:`~infra.checkpoint.UnsafeFileError` naming the file and the global, unless ``trust`` is
    set (then it is resolved normally, with a logged warning).

    Args:
        handle: binary file positioned at the pickle.
        path: the file (for messages).
        allowed: ``{(module, name): factory}``; the factory returns the object to use.
        what: what the file is (for messages).
        chumpy: map every ``chumpy.*`` class to an inert stand-in (FLAME pickles).
        trust: the explicit opt-in to resolve any global.
    """

    def __init__(self, handle, path: Path, allowed: dict, what: str, chumpy: bool = False,
                 trust: bool = False):
        super().__init__(handle, encoding="latin1")
        self._path, self._allowed, self._what = path, allowed, what
        self._chumpy, self._trust = chumpy, trust

    def load(self) -> Any:
        """Unpickle; a corrupt or truncated pickle raises ``ValueError`` naming the file."""
        try:
            return super().load()
        except UnsafeFileError:
            raise
        except _EmbeddedRefusal as exc:
            raise UnsafeFileError(self._path, [f"{n} (inside an embedded torch blob)" for n in exc.names],
                                  self._what) from None
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError,
                IndexError, KeyError, UnicodeDecodeError) as exc:
            raise ValueError(f"{self._path}: cannot be read as a {self._what} (truncated or not "
                             f"this kind of file): {type(exc).__name__}: {exc}") from exc

    def find_class(self, module: str, name: str) -> Any:
        if self._chumpy and (module == "chumpy" or module.startswith("chumpy.")):
            return _ChumpyStandIn
        factory = self._allowed.get((module, name))
        if factory is not None:
            return factory()
        if not self._trust:
            raise UnsafeFileError(self._path, [f"{module}.{name}"], self._what)
        _logger.warning("%s: resolving pickle global %s.%s (trust_checkpoint is set)",
                        self._path, module, name)
        if module.startswith("numpy.core") and hasattr(np, "_core"):
            module = "numpy._core" + module[len("numpy.core"):]
        return super().find_class(module, name)


def _unwrap_chumpy(value: Any, where: str, path: Path) -> Any:
    """Replace chumpy stand-ins (recursively in dicts/lists/tuples) by float64 ndarrays."""
    if isinstance(value, _ChumpyStandIn):
        state = value._state
        if isinstance(state, tuple) and len(state) == 2 and isinstance(state[0], dict):
            state = state[0]  # (dict state, slot state) form
        if not isinstance(state, dict) or "x" not in state:
            keys = sorted(state) if isinstance(state, dict) else type(state).__name__
            raise ValueError(
                f"{path}: entry {where!r} is a chumpy object without the array key 'x' "
                f"(state keys: {keys}); only leaf chumpy.Ch objects can be read without chumpy")
        return np.asarray(state["x"], dtype=np.float64)
    if isinstance(value, dict):
        return {k: _unwrap_chumpy(v, f"{where}.{k}" if where else str(k), path)
                for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_unwrap_chumpy(v, f"{where}[{i}]", path) for i, v in enumerate(value))
    return value


def load_flame_model(path: PathLike, trust_checkpoint: bool = False) -> dict[str, Any]:
    """Read a FLAME ``generic_model.pkl`` (Python-2 pickle) without chumpy, with an allow-list.

    Args:
        path: the pickle file.
        trust_checkpoint: resolve globals outside :data:`FLAME_GLOBALS` too (a full unpickle; can
            run code; only for files the user created).

    Returns:
        The file's dict. Chumpy arrays (``shapedirs`` in FLAME 2020) come back as float64
        ``np.ndarray``; other arrays keep their stored dtype; ``J_regressor`` is a
        ``scipy.sparse.csc_matrix``; ``bs_style``/``bs_type`` are ``str``.

    Raises:
        UnsafeFileError: the pickle references a global outside the allow-list.
        ValueError: the file is not a dict, or a chumpy object carries no ``'x'`` array.
    """
    path = Path(path)
    with open(path, "rb") as handle:
        data = _RestrictedUnpickler(handle, path, FLAME_GLOBALS, "FLAME model pickle", chumpy=True,
                                    trust=trust_checkpoint).load()
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a pickled dict (FLAME model), "
                         f"got {type(data).__name__}")
    return _unwrap_chumpy(data, "", path)


def _read_npy_object(path: Path, trust: bool) -> Any:
    """The object stored in a ``.npy`` file: a plain array is read with ``allow_pickle=False``; an
    object array (a pickle after the header) with the allow-list :data:`EMBEDDING_GLOBALS`."""
    with open(path, "rb") as handle:
        try:
            version = np.lib.format.read_magic(handle)
            read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                           (2, 0): np.lib.format.read_array_header_2_0}.get(version)
            if read_header is None:
                raise ValueError(f"unsupported .npy version {version}")
            _, _, dtype = read_header(handle)
        except ValueError as exc:
            raise ValueError(f"{path}: not a .npy file ({exc})") from exc
        if not dtype.hasobject:
            return np.load(path, allow_pickle=False)
        return _RestrictedUnpickler(handle, path, EMBEDDING_GLOBALS, "landmark embedding",
                                    trust=trust).load()


def load_landmark_embedding(path: PathLike, trust_checkpoint: bool = False) -> dict[str, np.ndarray]:
    """Read DECA's ``landmark_embedding.npy`` (a pickled dict; some entries are torch tensors).

    The pickle is read with an allow-list (NumPy arrays, ``OrderedDict``, torch tensors whose
    storage is read with ``weights_only``); ``trust_checkpoint`` is the explicit opt-in to a full
    unpickle (only for files the user created).

    Returns:
        dict of numpy arrays: ``static_lmk_faces_idx`` (51,), ``static_lmk_bary_coords`` (51,3),
        ``dynamic_lmk_faces_idx`` (79,17), ``dynamic_lmk_bary_coords`` (79,17,3),
        ``full_lmk_faces_idx`` (68,), ``full_lmk_bary_coords`` (68,3).

    Raises:
        UnsafeFileError: the pickle references a global outside the allow-list.
        ValueError: not a .npy dict, or a key is missing or has an unexpected shape.
    """
    path = Path(path)
    raw = _read_npy_object(path, trust_checkpoint)
    raw = raw.item() if isinstance(raw, np.ndarray) and raw.dtype == object else raw
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a pickled dict (landmark embedding)")
    missing = [k for k in EMBEDDING_KEYS if k not in raw]
    if missing:
        raise ValueError(f"{path}: landmark embedding lacks keys {missing}")
    out = {}
    for key in EMBEDDING_KEYS:
        value = raw[key]
        if isinstance(value, torch.Tensor):
            value = value.detach().cpu().numpy()
        out[key] = np.asarray(value)
    out["full_lmk_faces_idx"] = out["full_lmk_faces_idx"].reshape(-1)
    out["full_lmk_bary_coords"] = out["full_lmk_bary_coords"].reshape(-1, 3)
    expected = {
        "static_lmk_faces_idx": (NUM_STATIC_LANDMARKS,),
        "static_lmk_bary_coords": (NUM_STATIC_LANDMARKS, 3),
        "dynamic_lmk_faces_idx": (CONTOUR_LUT_ROWS, NUM_CONTOUR_LANDMARKS),
        "dynamic_lmk_bary_coords": (CONTOUR_LUT_ROWS, NUM_CONTOUR_LANDMARKS, 3),
        "full_lmk_faces_idx": (NUM_LANDMARKS,),
        "full_lmk_bary_coords": (NUM_LANDMARKS, 3),
    }
    for key, shape in expected.items():
        if out[key].shape != shape:
            raise ValueError(f"{path}: {key} has shape {out[key].shape}, expected {shape}")
    return out
