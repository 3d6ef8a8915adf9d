"""The stand-in asset kit: every licensed / released file in its official format, filled with
deterministic numbers, so that ``infer.py``, the training scripts and the demo run end to end
without the real files. Output made with it is noise. ``scripts/make_standin_assets.py`` is the
command; markers and detection are in :mod:`infra.standin`.

Files (names as the asset cache expects them, see :data:`infra.assets.ASSETS`):

=============================  =====================================================================
``generic_model.pkl``          FLAME-format Python-2 pickle (the official globals, ``shapedirs`` a
                               chumpy ``Ch``) on the topology of DECA's public ``head_template.obj``:
                               smooth random shape / expression fields, a jaw bound below the mouth
``landmark_embedding.npy``     DECA's public file, copied unchanged (not a stand-in)
``deca_model.tar``             ``{'E_flame': ResNet-50 encoder state dict}`` (kit splitmix fill);
                               ``E_detail`` / ``D_detail`` are left out (no program here needs them
                               for inference; ``extract_deca.py --with-detail`` reports it)
``EDTN.pt``                    a given ``EDTN.pt`` copied unchanged, else ``{'model': filled state
                               dict}`` (our checkpoint layout, which every EDTN loader accepts)
``transform_matrix_08_30.npy`` a given file copied, else a filled (17, 50) float64 basis
``generator_{default,cartoon}.ckpt``  the authors' Lightning layout (``state_dict`` with the 304
                               ``generator.*`` and 304 ``generator_ema.*`` entries, ``epoch``,
                               ``global_step``, ...) with the kit's sine fill; the EMA entries share
                               the same storage and the frozen VGG copies and optimiser state are
                               left out, so each file is the generator's 88 MB
``vgg19-dcbb9e9d.pth``         torchvision's ``features.*`` entries (kit sine fill, keyed like the
                               kit's VGG vectors); the unused classifier is left out (80 MB, not 548)
=============================  =====================================================================

Every byte is a function of the inputs: two runs give identical files (checked by a test).
"""
from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable

import numpy as np
import scipy.sparse
import torch

from infra.legacy_pickle import ChumpyArray, write_py2_pickle
from infra.files import atomic_path, atomic_save_npy
from infra.standin import NOTE_FORMAT, STANDIN_KEY, STANDIN_NOTE, STANDIN_WARNING
from infra.weight_fill import fill_module, fill_state_dict, sine_fill

__all__ = [
    "HEAD_TEMPLATE_URL",
    "LANDMARK_EMBEDDING_URL",
    "DEFAULT_GENERATOR_SIZE",
    "read_obj_mesh",
    "standin_flame_model",
    "standin_deca_checkpoint",
    "standin_edtn_checkpoint",
    "standin_transform_matrix",
    "standin_generator_checkpoint",
    "standin_vgg19",
    "fetch_template_files",
    "write_note",
    "make_standin_kit",
]

HEAD_TEMPLATE_URL = "https://github.com/yfeng95/DECA/raw/master/data/head_template.obj"
LANDMARK_EMBEDDING_URL = "https://github.com/yfeng95/DECA/raw/master/data/landmark_embedding.npy"
MADE_BY = "scripts/make_standin_assets.py"
DEFAULT_GENERATOR_SIZE = 256          # the authors' resolution; smaller sizes make faster stand-ins
LIGHTNING_VERSION = "1.5.8"           # what the authors pinned (generator README §6)
GENERATOR_STYLES = ("default", "cartoon")

# FLAME stand-in geometry (metres): the obj sits 1.5 m up; FLAME's head is near the origin
TEMPLATE_OFFSET = np.array([0.0, 1.5, 0.0])
N_SHAPE_DIRS, N_EXP_DIRS = 300, 100   # FLAME 2020 layout: shapedirs[..., :300] shape, [300:400] expression
FIELD_FEATURES = 48                   # random Fourier features of the smooth displacement fields
FIELD_LENGTH_M = 0.06                 # their length scale
SHAPE_MAX_M, EXP_MAX_M, POSE_MAX_M = 0.005, 0.004, 0.001
EYEBALLS = ((3931, 4477), (4477, 5023))  # vertex ranges of the left / right eyeball (FLAME topology)
JAW_BAND_M = 0.015                    # jaw weight ramps from the mouth corners down over this height
FLAME_SEED = 2020
IBUG_CHIN, IBUG_MOUTH_LEFT, IBUG_MOUTH_RIGHT = 8, 48, 54
N_JOINTS = 5                          # root, neck, jaw, left eye, right eye
ROOT_PARENT = 4294967295              # uint32 max, as in SMPL / FLAME files


# ============================================================================ FLAME
def read_obj_mesh(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Vertices (V,3) float64 and 0-based triangle vertex indices (F,3) uint32 of an ``.obj`` file
    (texture / normal indices after ``/`` are dropped)."""
    verts, faces = [], []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if line.startswith("v "):
                verts.append([float(x) for x in line.split()[1:4]])
            elif line.startswith("f "):
                idx = [int(tok.split("/")[0]) - 1 for tok in line.split()[1:]]
                if len(idx) != 3:
                    raise ValueError(f"{path}: only triangles are supported, got a {len(idx)}-gon")
                faces.append(idx)
    if not verts or not faces:
        raise ValueError(f"{path}: no vertices / faces (is this an .obj mesh?)")
    return np.asarray(verts, np.float64), np.asarray(faces, np.uint32)


def _smooth_fields(points: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` smooth random displacement fields on ``points`` (V,3) → (V,3,n), each max |d| = 1."""
    freq = rng.normal(size=(3, FIELD_FEATURES)) / FIELD_LENGTH_M
    phase = rng.uniform(0, 2 * np.pi, size=FIELD_FEATURES)
    basis = np.sin(points @ freq + phase)                          # (V, K)
    coeff = rng.normal(size=(FIELD_FEATURES, 3 * n)) / np.sqrt(FIELD_FEATURES)
    fields = (basis @ coeff).reshape(len(points), n, 3).transpose(0, 2, 1)
    peak = np.abs(fields).max(axis=(0, 1), keepdims=True)
    return fields / np.where(peak > 0, peak, 1.0)


def _landmarks(verts: np.ndarray, faces: np.ndarray, embedding: dict[str, np.ndarray]) -> np.ndarray:
    """The 68 fixed landmarks (iBUG order) of the mesh, from DECA's ``full_lmk_*`` embedding."""
    tri = verts[faces[embedding["full_lmk_faces_idx"].astype(np.int64)].astype(np.int64)]  # (68,3,3)
    return np.einsum("lk,lkc->lc", embedding["full_lmk_bary_coords"].astype(np.float64), tri)


def standin_flame_model(template_obj: str | os.PathLike, landmark_embedding: str | os.PathLike
                        ) -> dict[str, Any]:
    """A FLAME 2020-format model dict on the template's topology (see the module docstring).

    Shape directions are smooth random fields (max 5 mm/(1+k/20)); expression directions are the
    same on the face (vertices in front of the ears), max 4 mm/(1+k/10); pose correctives max 1 mm,
    each joint's only where it has LBS weight.
    LBS: eyeballs follow their eye joint; the jaw joint takes the vertices below the mouth corners
    (weight ramping over 15 mm), the root the rest. Joints are vertex means (J_regressor rows).
    """
    from infra.pickle_files import load_landmark_embedding

    verts, faces = read_obj_mesh(template_obj)
    verts = verts - TEMPLATE_OFFSET
    n_verts = len(verts)
    if n_verts < EYEBALLS[1][1]:
        raise ValueError(f"{template_obj}: {n_verts} vertices; the FLAME topology has 5023")
    embedding = load_landmark_embedding(landmark_embedding)
    lmk = _landmarks(verts, faces, embedding)
    rng = np.random.default_rng(FLAME_SEED)

    head = np.ones(n_verts, bool)
    for start, stop in EYEBALLS:
        head[start:stop] = False
    mouth_y = lmk[[IBUG_MOUTH_LEFT, IBUG_MOUTH_RIGHT], 1].mean()
    chin = lmk[IBUG_CHIN]
    ramp = np.clip((mouth_y - verts[:, 1]) / JAW_BAND_M, 0.0, 1.0)
    ramp = ramp * ramp * (3 - 2 * ramp)                           # smoothstep
    front = verts[:, 2] > chin[2] - 0.05                          # in front of the jaw angle
    above_neck = verts[:, 1] > chin[1] - 0.01
    jaw = np.where(head & front & above_neck, ramp, 0.0)
    weights = np.zeros((n_verts, N_JOINTS))
    weights[:, 0] = np.where(head, 1.0 - jaw, 0.0)
    weights[:, 2] = jaw
    for joint, (start, stop) in zip((3, 4), EYEBALLS):
        weights[start:stop, joint] = 1.0

    groups = [head, head & (verts[:, 1] < chin[1] + 0.02), jaw > 0.5,
              np.arange(n_verts) < 0, np.arange(n_verts) < 0]
    for joint, (start, stop) in zip((3, 4), EYEBALLS):
        groups[joint] = (np.arange(n_verts) >= start) & (np.arange(n_verts) < stop)
    rows, cols, vals = [], [], []
    for joint, mask in enumerate(groups):
        idx = np.nonzero(mask)[0]
        rows += [joint] * len(idx)
        cols += idx.tolist()
        vals += [1.0 / len(idx)] * len(idx)
    j_regressor = scipy.sparse.csc_matrix((vals, (rows, cols)), shape=(N_JOINTS, n_verts))

    shape_dirs = _smooth_fields(verts, N_SHAPE_DIRS, rng) * (
        SHAPE_MAX_M / (1 + np.arange(N_SHAPE_DIRS) / 20))
    face = (verts[:, 2] > chin[2] - 0.02).astype(np.float64)[:, None, None]
    exp_dirs = _smooth_fields(verts, N_EXP_DIRS, rng) * face * (EXP_MAX_M / (1 + np.arange(N_EXP_DIRS) / 10))
    shapedirs = np.concatenate([shape_dirs, exp_dirs], axis=2)
    # correctives of joint j (features 9(j-1) .. 9j-1) only where that joint has weight
    posedirs = _smooth_fields(verts, 9 * (N_JOINTS - 1), rng) * POSE_MAX_M
    posedirs *= np.repeat(weights[:, 1:], 9, axis=1)[:, None, :]

    return OrderedDict([
        ("f", faces),
        ("J_regressor", j_regressor),
        ("kintree_table", np.array([[ROOT_PARENT, 0, 1, 1, 1], [0, 1, 2, 3, 4]], np.int64)),
        ("J", np.asarray(j_regressor @ verts)),
        ("weights", weights),
        ("posedirs", posedirs),
        ("v_template", verts),
        ("shapedirs", ChumpyArray(shapedirs)),   # a chumpy Ch (float64), as in FLAME 2020
        ("bs_style", "lbs"),
        ("bs_type", "lrotmin"),
        (STANDIN_KEY, _describe("FLAME model (generic_model.pkl)")),
    ])


# ============================================================================ networks
def _describe(what: str) -> str:
    return f"stand-in {what} made by {MADE_BY}: filler numbers, not the real weights; output is noise"


def _sine_filled(state: dict[str, torch.Tensor], key_prefix: str = "") -> "OrderedDict[str, torch.Tensor]":
    """The kit's sine rule, with ``key_prefix`` mixed into the seed (distinct files per style)."""
    return OrderedDict((k, torch.from_numpy(sine_fill(key_prefix + k, tuple(v.shape))).to(v.dtype))
                       for k, v in state.items())


def standin_deca_checkpoint() -> dict[str, Any]:
    """``deca_model.tar`` layout with a filled ``E_flame`` (the kit's splitmix rule)."""
    from deca_edit.encoder import FLAME_ENTRY, DecaEncoder

    encoder = fill_module(DecaEncoder(), "splitmix")
    return {FLAME_ENTRY: encoder.state_dict(), STANDIN_KEY: _describe("DECA encoder (deca_model.tar)")}


def standin_edtn_checkpoint() -> dict[str, Any]:
    """``{'model': filled EDTN state dict}`` (sine rule), which ``edtn.model.load_edtn`` accepts."""
    from edtn.model import EDTN

    return {"model": fill_module(EDTN(), "sine").state_dict(), STANDIN_KEY: _describe("EDTN weights")}


def standin_transform_matrix() -> np.ndarray:
    """A filled (17, 50) float64 morph → FLAME-expression basis (sine rule, scaled to O(1))."""
    return sine_fill("transform_matrix", (17, 50)).astype(np.float64) * np.sqrt(50.0)


def standin_generator_checkpoint(style: str = "default", image_size: int = DEFAULT_GENERATOR_SIZE
                                 ) -> dict[str, Any]:
    """The authors' Lightning ``.ckpt`` layout (``pirender_mlp``, as their ``infer.py`` loads) with
    the 304 ``generator.*`` entries filled and ``generator_ema.*`` equal to them.

    ``style='default'`` uses the kit's sine rule exactly (the conformance tests' generator); other
    styles mix the style name into the seed. ``image_size`` other than 256 adds our
    ``generator_config`` entry (read by :func:`anime_generator.checkpoint.load_generator`; the
    weights do not depend on the resolution), which makes a faster stand-in.
    """
    from anime_generator.checkpoint import EMA_PREFIX, GENERATOR_PREFIX
    from anime_generator.config import GeneratorConfig
    from anime_generator.model import AnimeGenerator

    if style not in GENERATOR_STYLES:
        raise ValueError(f"style must be one of {GENERATOR_STYLES}, got {style!r}")
    config = GeneratorConfig(image_size=image_size)  # validates the size
    state = _sine_filled(AnimeGenerator(config).state_dict(), "" if style == "default" else f"{style}/")
    ckpt: dict[str, Any] = {
        "epoch": 0,
        "global_step": 0,
        "pytorch-lightning_version": LIGHTNING_VERSION,
        # the EMA entries are the same tensor objects: torch.save stores their storage once
        "state_dict": OrderedDict([*((GENERATOR_PREFIX + k, v) for k, v in state.items()),
                                   *((EMA_PREFIX + k, v) for k, v in state.items())]),
        "callbacks": {},
        "optimizer_states": [],
        "lr_schedulers": [],
        STANDIN_KEY: _describe(f"anime generator, '{style}' style"),
    }
    if image_size != DEFAULT_GENERATOR_SIZE:
        ckpt["generator_config"] = config.to_dict()
    return ckpt


def standin_vgg19() -> dict[str, Any]:
    """torchvision VGG19 ``features.*`` entries, sine-filled under the kit's short keys (``0.weight``)."""
    from anime_generator.perceptual import TORCHVISION_PREFIX, build_vgg19_features

    filled = fill_state_dict(build_vgg19_features().state_dict(), sine_fill)
    out: dict[str, Any] = OrderedDict((TORCHVISION_PREFIX + k, v) for k, v in filled.items())
    out[STANDIN_KEY] = _describe("VGG19 ImageNet weights")
    return out


# ============================================================================ the kit
def write_note(folder: str | os.PathLike, files: dict[str, dict[str, Any]]) -> Path:
    """Write ``folder/STANDIN`` (see :mod:`infra.standin`); sorted, no time stamps, so its bytes
    depend on ``files`` only."""
    note = Path(folder) / STANDIN_NOTE
    body = {
        "format": NOTE_FORMAT,
        "warning": (f"{STANDIN_WARNING}. The files marked standin=true in this folder are NOT the "
                    "FLAME / DECA / EDTN / generator / VGG19 weights: they have the official formats "
                    "and deterministic filler numbers, so the programs run end to end."),
        "made_by": MADE_BY,
        "files": {name: dict(entry) for name, entry in sorted(files.items())},
    }
    with atomic_path(note) as tmp:
        Path(tmp).write_text(json.dumps(body, indent=2) + "\n", encoding="utf-8")
    return note


def fetch_template_files(folder: str | os.PathLike, timeout: float = 10.0) -> tuple[Path, Path]:
    """Download DECA's public ``head_template.obj`` and ``landmark_embedding.npy`` into ``folder``.

    Raises:
        infra.download.DownloadError: offline or unreachable, with a message saying to pass
            ``--head-template`` / ``--landmark-embedding`` instead.
    """
    from infra.download import DownloadError, download

    folder = Path(folder)
    out = []
    for url, name in ((HEAD_TEMPLATE_URL, "head_template.obj"),
                      (LANDMARK_EMBEDDING_URL, "landmark_embedding.npy")):
        try:
            out.append(download(url, folder / name, timeout=timeout, progress=False))
        except DownloadError as exc:
            reason = exc.__cause__ if exc.__cause__ is not None else exc
            raise DownloadError(
                f"cannot download DECA's public {name} from {url} "
                f"({getattr(reason, 'reason', reason)}); offline? Pass --head-template and "
                "--landmark-embedding with local copies (both are in the DECA repository, data/)"
            ) from exc
    return out[0], out[1]


def _torch_save(obj: Any, path: Path) -> None:
    # through memory: torch.save names the zip's root folder after the file, and the temporary
    # file name of the atomic write is random; a buffer's root is always "archive"
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(buffer.getvalue())


def _copy(src: str | os.PathLike, path: Path) -> None:
    with atomic_path(path) as tmp:
        shutil.copyfile(src, tmp)


def make_standin_kit(out: str | os.PathLike, head_template: str | os.PathLike | None = None,
                     landmark_embedding: str | os.PathLike | None = None,
                     edtn: str | os.PathLike | None = None,
                     transform_matrix: str | os.PathLike | None = None,
                     generator_size: int = DEFAULT_GENERATOR_SIZE, progress: bool = True,
                     timeout: float = 10.0) -> dict[str, dict[str, Any]]:
    """Write the whole kit into ``out`` (created) and its ``STANDIN`` note; returns the note's table.

    Args:
        out: asset folder (use it as ``$EDTN_HOME``).
        head_template, landmark_embedding: DECA's public files; ``None`` downloads them
            (:func:`fetch_template_files`).
        edtn, transform_matrix: real files to copy in instead of stand-ins (both are public in
            the authors' release).
        generator_size: resolution of the stand-in generators (256 = the authors').
        progress: a tqdm bar over the files.
    """
    from tqdm.auto import tqdm

    from infra.assets import ASSETS, sha256_of

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="standin_fetch_") as tmp:
        if head_template is None or landmark_embedding is None:
            got_template, got_embedding = fetch_template_files(tmp, timeout)
            head_template = head_template or got_template
            landmark_embedding = landmark_embedding or got_embedding
        for path in (head_template, landmark_embedding, edtn, transform_matrix):
            if path is not None and not Path(path).is_file():
                raise FileNotFoundError(f"input file not found: {path}")

        # asset name -> (write it to a path, is it a stand-in); copies keep the given bytes
        def copy_of(src) -> Callable[[Path], None]:
            return lambda path: _copy(src, path)

        jobs: dict[str, tuple[Callable[[Path], None], bool]] = {
            "flame_model": (lambda path: write_py2_pickle(
                standin_flame_model(head_template, landmark_embedding), path), True),
            "landmark_embedding": (copy_of(landmark_embedding), False),
            "deca_model": (lambda path: _torch_save(standin_deca_checkpoint(), path), True),
            "edtn_weights": ((copy_of(edtn), False) if edtn else
                             (lambda path: _torch_save(standin_edtn_checkpoint(), path), True)),
            "transform_matrix": ((copy_of(transform_matrix), False) if transform_matrix else
                                 (lambda path: atomic_save_npy(standin_transform_matrix(), path), True)),
            **{f"generator_{style}": (lambda path, s=style: _torch_save(
                standin_generator_checkpoint(s, generator_size), path), True) for style in GENERATOR_STYLES},
            "vgg19": (lambda path: _torch_save(standin_vgg19(), path), True),
        }
        for name, (write, standin) in tqdm(jobs.items(), desc="stand-in assets", unit="file",
                                           disable=not progress):
            path = out / ASSETS[name].filename
            write(path)
            files[path.name] = {"what": ASSETS[name].what, "standin": standin, "size": path.stat().st_size,
                                "sha256": sha256_of(path)}
    write_note(out, files)
    return files

