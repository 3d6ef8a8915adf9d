"""Readers for the two pickled asset formats of the FLAME head model (imports nothing of ours).

* ``generic_model.pkl`` (FLAME 2020): a Python-2 pickle whose ``shapedirs`` is a chumpy ``Ch``.
  chumpy does not install on current Python / NumPy, so :func:`load_flame_model` reads the file
  without it: chumpy objects become plain float64 arrays taken from their pickled state key ``x``.
* ``landmark_embedding.npy`` (DECA): a dict saved by ``np.save``; some entries are torch tensors.

They live in the base package because the asset check (:mod:`infra.assets`) opens both files and
the FLAME layer (:mod:`deca_edit.flame`) loads them; neither may import the other.
"""
from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any, Union

import numpy as np
import scipy.sparse
import torch

__all__ = ["load_flame_model", "load_landmark_embedding", "EMBEDDING_KEYS"]

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


class _FlameUnpickler(pickle.Unpickler):
    """Unpickler for the Python-2 FLAME file that needs neither chumpy nor deprecated paths.

    * ``chumpy.*`` -> :class:`_ChumpyStandIn` (its array is taken from state key ``'x'`` later);
    * ``scipy.sparse.csc.csc_matrix`` (deprecated module, warns under SciPy 1.17) ->
      ``scipy.sparse.csc_matrix``;
    * ``numpy.core.*`` -> ``numpy._core.*`` where that exists (NumPy >= 2 renamed the package).
    """

    def find_class(self, module: str, name: str) -> Any:
        if module == "chumpy" or module.startswith("chumpy."):
            return _ChumpyStandIn
        if module.startswith("scipy.sparse"):
            if hasattr(scipy.sparse, name):
                return getattr(scipy.sparse, name)
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


def load_flame_model(path: PathLike) -> dict[str, Any]:
    """Read a FLAME ``generic_model.pkl`` (Python-2 pickle) without chumpy.

    Args:
        path: the pickle file.

    Returns:
        The file's dict. Chumpy arrays (``shapedirs`` in FLAME 2020) come back as float64
        ``np.ndarray``; other arrays keep their stored dtype; ``J_regressor`` is a
        ``scipy.sparse.csc_matrix``; ``bs_style``/``bs_type`` are ``str``.

    Raises:
        ValueError: the file is not a dict, or a chumpy object carries no ``'x'`` array.
    """
    path = Path(path)
    with open(path, "rb") as handle:
        data = _FlameUnpickler(handle, encoding="latin1").load()
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a pickled dict (FLAME model), "
                         f"got {type(data).__name__}")
    return _unwrap_chumpy(data, "", path)


def load_landmark_embedding(path: PathLike) -> dict[str, np.ndarray]:
    """Read DECA's ``landmark_embedding.npy`` (a pickled dict; some entries are torch tensors).

    The file is a trusted pickle (it needs ``allow_pickle``, and torch to rebuild its tensors).

    Returns:
        dict of numpy arrays: ``static_lmk_faces_idx`` (51,), ``static_lmk_bary_coords`` (51,3),
        ``dynamic_lmk_faces_idx`` (79,17), ``dynamic_lmk_bary_coords`` (79,17,3),
        ``full_lmk_faces_idx`` (68,), ``full_lmk_bary_coords`` (68,3).

    Raises:
        ValueError: a key is missing or has an unexpected shape.
    """
    path = Path(path)
    raw = np.load(path, allow_pickle=True, encoding="latin1")
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
