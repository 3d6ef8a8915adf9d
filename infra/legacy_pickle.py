"""Write a Python-2 style protocol-2 pickle with the globals of the official FLAME file.

FLAME 2020's ``generic_model.pkl`` was written by Python 2: strings and array buffers are py2
``str`` opcodes (Python 3 reads them with ``encoding='latin1'``) and the only globals are
``numpy.core.multiarray._reconstruct``, ``numpy.ndarray``, ``numpy.dtype``,
``scipy.sparse.csc.csc_matrix``, ``chumpy.ch.Ch`` and ``__builtin__.set``. Python 3's own pickler
cannot name those historical paths (it writes ``numpy._core...`` and ``scipy.sparse._csc...``), so
:func:`dump_py2_pickle` emits the opcodes itself. A file written here therefore goes through
exactly the reader path (:func:`infra.pickle_files.load_flame_model`) that the official file
does, including its allow-list of globals. Used by the stand-in asset kit.

Supported values: ``dict`` (str keys), ``str`` (latin-1), ``bool``, ``int`` (32-bit), ``None``,
``tuple``, ``numpy.ndarray`` (bool / int / uint / float, C order), ``scipy.sparse.csc_matrix`` and
:class:`ChumpyArray` (a leaf ``chumpy.ch.Ch`` wrapping a float64 array, as FLAME's ``shapedirs``).
Output is a pure function of the value: the same object gives the same bytes.
"""
from __future__ import annotations

import io
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import scipy.sparse

__all__ = ["ChumpyArray", "dump_py2_pickle", "write_py2_pickle"]

PROTOCOL = 2
CSC_MAXPRINT = 50          # what scipy stored in the official file's csc_matrix state
_INT32 = (-(2 ** 31), 2 ** 31 - 1)
# numpy dtype.__reduce__ state of the official file: (version, byte order, subarray, names,
# fields, elsize, alignment, flags) with -1 sizes for built-in types
_DTYPE_STATE_VERSION = 3

# protocol-2 opcodes (pickletools names)
PROTO, STOP = b"\x80", b"."
MARK, TUPLE, TUPLE1, TUPLE2, TUPLE3, EMPTY_TUPLE = b"(", b"t", b"\x85", b"\x86", b"\x87", b")"
EMPTY_DICT, SETITEMS, EMPTY_LIST, APPENDS = b"}", b"u", b"]", b"e"
NONE, NEWTRUE, NEWFALSE = b"N", b"\x88", b"\x89"
BININT, BININT1, BININT2 = b"J", b"K", b"M"
SHORT_BINSTRING, BINSTRING = b"U", b"T"
GLOBAL, REDUCE, BUILD, NEWOBJ = b"c", b"R", b"b", b"\x81"


@dataclass(frozen=True)
class ChumpyArray:
    """A leaf ``chumpy.ch.Ch`` object: pickled with its array under state key ``'x'`` (float64)."""

    x: np.ndarray


class _Writer:
    def __init__(self, out: BinaryIO):
        self.out = out

    def write(self, data: bytes) -> None:
        self.out.write(data)

    def global_(self, module: str, name: str) -> None:
        self.write(GLOBAL + f"{module}\n{name}\n".encode("ascii"))

    def py2_str(self, data: bytes) -> None:
        if len(data) < 256:
            self.write(SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(BINSTRING + struct.pack("<i", len(data)) + data)

    def int_(self, value: int) -> None:
        if 0 <= value < 256:
            self.write(BININT1 + bytes([value]))
        elif 0 <= value < 65536:
            self.write(BININT2 + struct.pack("<H", value))
        elif _INT32[0] <= value <= _INT32[1]:
            self.write(BININT + struct.pack("<i", value))
        else:
            raise ValueError(f"integer {value} does not fit the 32-bit opcodes used here")

    def tuple_(self, items: tuple) -> None:
        if not items:
            self.write(EMPTY_TUPLE)
            return
        if len(items) > 3:
            self.write(MARK)
        for item in items:
            self.save(item)
        self.write({1: TUPLE1, 2: TUPLE2, 3: TUPLE3}.get(len(items), TUPLE))

    def dict_(self, value: dict) -> None:
        self.write(EMPTY_DICT)
        if not value:
            return
        self.write(MARK)
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"dict keys must be str, got {type(key).__name__}")
            self.save(key)
            self.save(item)
        self.write(SETITEMS)

    def dtype(self, dtype: np.dtype) -> None:
        if dtype.kind not in "biuf" or dtype.fields is not None:
            raise TypeError(f"unsupported array dtype {dtype}")
        order = "|" if dtype.itemsize == 1 else "<"
        self.global_("numpy", "dtype")
        self.tuple_((f"{dtype.kind}{dtype.itemsize}", False, True))
        self.write(REDUCE)
        self.tuple_((_DTYPE_STATE_VERSION, order, None, None, None, -1, -1, 0))
        self.write(BUILD)

    def ndarray(self, array: np.ndarray) -> None:
        array = np.ascontiguousarray(array)
        little = array.astype(array.dtype.newbyteorder("<"), copy=False)
        self.global_("numpy.core.multiarray", "_reconstruct")
        self.global_("numpy", "ndarray")
        self.tuple_((0,))
        self.py2_str(b"b")
        self.write(TUPLE3 + REDUCE)
        # state: (version, shape, dtype, is_fortran, raw bytes as a py2 str)
        self.write(MARK)
        self.int_(1)
        self.tuple_(tuple(int(n) for n in array.shape))
        self.dtype(little.dtype)
        self.write(NEWFALSE)
        self.py2_str(little.tobytes())
        self.write(TUPLE + BUILD)

    def csc(self, matrix: scipy.sparse.csc_matrix) -> None:
        matrix = scipy.sparse.csc_matrix(matrix)
        matrix.sort_indices()
        self.global_("scipy.sparse.csc", "csc_matrix")
        self.write(EMPTY_TUPLE + NEWOBJ)
        self.dict_({"_shape": tuple(int(n) for n in matrix.shape), "maxprint": CSC_MAXPRINT,
                    "indptr": matrix.indptr.astype(np.int32), "indices": matrix.indices.astype(np.int32),
                    "data": matrix.data, "format": "csc"})
        self.write(BUILD)

    def save(self, value: Any) -> None:
        if value is None:
            self.write(NONE)
        elif isinstance(value, bool):
            self.write(NEWTRUE if value else NEWFALSE)
        elif isinstance(value, (int, np.integer)):
            self.int_(int(value))
        elif isinstance(value, str):
            self.py2_str(value.encode("latin-1"))
        elif isinstance(value, bytes):
            self.py2_str(value)
        elif isinstance(value, tuple):
            self.tuple_(value)
        elif isinstance(value, dict):
            self.dict_(value)
        elif isinstance(value, ChumpyArray):
            self._chumpy(value)
        elif scipy.sparse.issparse(value):
            if value.format != "csc":
                raise TypeError(f"only csc sparse matrices are supported, got {value.format}")
            self.csc(value)
        elif isinstance(value, np.ndarray):
            self.ndarray(value)
        else:
            raise TypeError(f"cannot write {type(value).__name__} into a py2 FLAME-style pickle")

    def _chumpy(self, value: ChumpyArray) -> None:
        """``chumpy.ch.Ch`` built by NEWOBJ, then BUILD with its ``__dict__`` (as chumpy pickles)."""
        self.global_("chumpy.ch", "Ch")
        self.write(EMPTY_TUPLE + NEWOBJ)
        self.write(EMPTY_DICT + MARK)
        self.save("_dirty_vars")
        self.global_("__builtin__", "set")   # set(['x'])
        self.write(EMPTY_LIST)
        self.save("x")
        self.write(b"a" + TUPLE1 + REDUCE)    # APPEND, then set((list,))
        for key, item in (("_itr", None), ("_make_dense", False), ("_make_sparse", False),
                          ("_depends_on_deps", {})):
            self.save(key)
            self.save(item)
        self.save("x")
        self.ndarray(np.asarray(value.x, dtype=np.float64))
        self.write(SETITEMS + BUILD)


def dump_py2_pickle(value: Any) -> bytes:
    """The protocol-2, Python-2 style pickle of ``value`` (see the module docstring) as bytes."""
    buffer = io.BytesIO()
    writer = _Writer(buffer)
    writer.write(PROTO + bytes([PROTOCOL]))
    writer.save(value)
    writer.write(STOP)
    return buffer.getvalue()


def write_py2_pickle(value: Any, path: str | os.PathLike) -> Path:
    """Write :func:`dump_py2_pickle` of ``value`` to ``path`` atomically; returns the path."""
    from infra.files import atomic_path

    path = Path(path)
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(dump_py2_pickle(value))
    return path
