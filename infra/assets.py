"""One place that finds, describes and verifies every external file the project needs.

Every licensed or downloaded file (FLAME model, DECA weights, EDTN weights, generator checkpoints,
VGG19, face-alignment, FID Inception and anime-landmark weights, ...) is described once in :data:`ASSETS`. Code never opens such a
file by a hard-coded path: it calls :func:`resolve_asset` with the asset's name and, optionally, a
path from the config. A missing or wrong file raises :class:`AssetError`, whose message names the
file, says what it is and where a user obtains it.

Lookup order for ``resolve_asset(name, path)``:

1. ``path`` when given (from a config). It must exist; no fallback hides a typo in a config.
2. ``$EDTN_HOME/<filename>`` (default ``~/.cache/edtn``).
3. For torchvision / face-alignment / torch-fidelity / anime-face-detector weights: the torch hub cache
   (``$TORCH_HOME/hub/checkpoints``, default ``~/.cache/torch/hub/checkpoints``), where those
   libraries keep them.
"""
from __future__ import annotations

import hashlib
import os
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

__all__ = [
    "AssetError",
    "AssetSpec",
    "AssetStatus",
    "ASSETS",
    "asset_home",
    "torch_hub_dir",
    "resolve_asset",
    "resolve_asset_or_fallback",
    "check_asset",
    "sha256_of",
    "sha256_mismatch",
]

ENV_HOME = "EDTN_HOME"
DEFAULT_HOME = Path("~/.cache/edtn")


class AssetError(FileNotFoundError):
    """A required external file is missing or is not the file it should be."""


@dataclass(frozen=True)
class AssetSpec:
    """Description of one external file.

    Attributes:
        name: key used in code and configs (``flame_model``, ``deca_model``, ...).
        filename: file name on disk (``generic_model.pkl``).
        what: one line saying what the file is.
        obtain: where and how a user gets it (licence/registration notes included).
        url: direct public download address, or ``None`` when a registration or a manual
            download is needed. Used by ``scripts/fetch_assets.py``.
        sha256: expected sha256 hex digest when known (a prefix is accepted), else ``None``.
        in_torch_hub: also look in the torch hub checkpoint cache.
        check: ``check(path) -> str`` that opens the file, raises ``ValueError`` if its content
            is wrong and returns a one-line summary (keys / shapes) when right.
    """

    name: str
    filename: str
    what: str
    obtain: str
    url: Optional[str] = None
    sha256: Optional[str] = None
    in_torch_hub: bool = False
    check: Optional[Callable[[Path], str]] = field(default=None, compare=False, repr=False)


@dataclass
class AssetStatus:
    """Result of :func:`check_asset`: where the file is, its size and its content check.

    ``standin`` is True for a file of the stand-in kit (``scripts/make_standin_assets.py``): valid
    format, filler numbers (see :mod:`infra.standin`); its official sha256 is not expected.
    """

    name: str
    path: Optional[Path]
    present: bool
    size: int = 0
    ok: bool = False
    detail: str = ""
    standin: bool = False


# ----------------------------------------------------------------------------- content checks
def _torch_load_cpu(path: Path):
    from infra.checkpoint import load_torch_file  # imports torch: keep it out of module import

    return load_torch_file(path, map_location="cpu")


def _check_flame(path: Path) -> str:
    from infra.pickle_files import load_flame_model

    model = load_flame_model(path)
    need = {"v_template": (5023, 3), "f": (9976, 3), "weights": (5023, 5)}
    for key, shape in need.items():
        if key not in model:
            raise ValueError(f"key {key!r} missing")
        if tuple(model[key].shape) != shape:
            raise ValueError(f"{key} has shape {tuple(model[key].shape)}, expected {shape}")
    sd = model["shapedirs"].shape
    if sd[:2] != (5023, 3) or sd[2] < 350:
        raise ValueError(f"shapedirs has shape {sd}, expected (5023, 3, >=350)")
    return f"FLAME: {len(model)} keys, shapedirs {sd}"


def _check_landmark_embedding(path: Path) -> str:
    from infra.pickle_files import load_landmark_embedding

    emb = load_landmark_embedding(path)  # checks every key and shape
    return f"landmark embedding: dynamic table {tuple(emb['dynamic_lmk_faces_idx'].shape)}"


def _check_deca(path: Path) -> str:
    ckpt = _torch_load_cpu(path)
    if not isinstance(ckpt, dict) or "E_flame" not in ckpt:
        raise ValueError("no 'E_flame' entry (is this DECA's deca_model.tar?)")
    return f"DECA: entries {sorted(ckpt)}; E_flame has {len(ckpt['E_flame'])} tensors"


def _check_edtn(path: Path) -> str:
    sd = _torch_load_cpu(path)
    sd = sd.get("model", sd) if isinstance(sd, dict) else sd
    w0 = sd.get("main.0.weight") if isinstance(sd, dict) else None
    w6 = sd.get("main.6.weight") if isinstance(sd, dict) else None
    if w0 is None or w6 is None:
        raise ValueError("keys main.0.weight / main.6.weight missing (not an EDTN state dict)")
    if tuple(w0.shape) != (512, 53) or tuple(w6.shape) != (17, 512):
        raise ValueError(f"main.0.weight {tuple(w0.shape)} / main.6.weight {tuple(w6.shape)}, "
                         "expected (512, 53) / (17, 512)")
    return "EDTN: 53 -> 17 MLP"


def _check_basis(path: Path) -> str:
    import numpy as np

    basis = np.load(path)
    if basis.shape != (17, 50):
        raise ValueError(f"shape {basis.shape}, expected (17, 50)")
    return f"basis (17, 50) {basis.dtype}"


def _check_generator(path: Path) -> str:
    ckpt = _torch_load_cpu(path)
    sd = ckpt.get("state_dict", ckpt.get("model", ckpt)) if isinstance(ckpt, dict) else None
    if not isinstance(sd, dict):
        raise ValueError("not a checkpoint dict")
    n_gen = sum(1 for k in sd if "mapping_net." in k)
    if n_gen == 0:
        raise ValueError("no generator (mapping_net.*) weights inside")
    return f"generator checkpoint: {len(sd)} entries"


def _check_vgg19(path: Path) -> str:
    sd = _torch_load_cpu(path)
    if "features.0.weight" not in sd or tuple(sd["features.0.weight"].shape) != (64, 3, 3, 3):
        raise ValueError("features.0.weight missing or wrong shape (not torchvision VGG19)")
    return f"VGG19: {len(sd)} tensors"


def _check_torch_weights(path: Path) -> str:
    sd = _torch_load_cpu(path)
    return f"{len(sd)} tensors"


def _state_dict_of(obj) -> dict:
    """The tensor dict inside a checkpoint: the object itself, or its ``state_dict`` / ``model``."""
    if isinstance(obj, dict):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), dict):
                return obj[key]
        return obj
    raise ValueError(f"not a checkpoint dict ({type(obj).__name__})")


def _require_shapes(sd: dict, shapes: dict[str, tuple[int, ...]], what: str) -> None:
    for key, shape in shapes.items():
        value = sd.get(key)
        if value is None or tuple(getattr(value, "shape", ())) != shape:
            got = "missing" if value is None else tuple(getattr(value, "shape", ()))
            raise ValueError(f"{key} is {got}, expected {shape} (not {what})")


def _check_inception(path: Path) -> str:
    sd = _state_dict_of(_torch_load_cpu(path))
    _require_shapes(sd, {"Conv2d_1a_3x3.conv.weight": (32, 3, 3, 3), "fc.weight": (1008, 2048)},
                    "torch-fidelity's InceptionV3 FID weights")
    return f"InceptionV3 (FID): {len(sd)} tensors"


def _check_anime_landmarker(path: Path) -> str:
    sd = _state_dict_of(_torch_load_cpu(path))
    _require_shapes(sd, {"backbone.conv1.weight": (64, 3, 3, 3),
                         "keypoint_head.final_layer.3.weight": (28, 270, 1, 1)},
                    "anime-face-detector's 28-point HRNetV2-W18")
    return f"anime face landmarks (HRNetV2-W18, 28 points): {len(sd)} tensors"


def _check_zip(path: Path) -> str:
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
    return f"zip with {len(names)} members"


_FLAME_SITE = "https://flame.is.tue.mpg.de (free registration, FLAME 2020 licence)"
_DECA_REPO = "https://github.com/yfeng95/DECA"
_EDTN_REPO = "https://github.com/kangyeolk/AnimeCeleb (EDTN / Animo release)"

ASSETS: dict[str, AssetSpec] = {
    spec.name: spec
    for spec in [
        AssetSpec(
            "flame_model", "generic_model.pkl",
            "FLAME 2020 head model (Python-2 pickle; read without chumpy)",
            f"register and download FLAME 2020 from {_FLAME_SITE}; use generic_model.pkl",
            check=_check_flame),
        AssetSpec(
            "landmark_embedding", "landmark_embedding.npy",
            "DECA's FLAME landmark embedding (static / dynamic contour / full 68)",
            f"data/landmark_embedding.npy of the DECA repository, {_DECA_REPO}",
            url="https://github.com/yfeng95/DECA/raw/master/data/landmark_embedding.npy",
            check=_check_landmark_embedding),
        AssetSpec(
            "deca_model", "deca_model.tar",
            "DECA pretrained weights (E_flame coarse encoder, E_detail, D_detail)",
            f"deca_model.tar from the DECA authors, linked in the README of {_DECA_REPO} "
            "(needs the FLAME licence)",
            check=_check_deca),
        AssetSpec(
            "edtn_weights", "EDTN.pt",
            "EDTN expression translation weights of the authors (plain state dict)",
            f"EDTN.pt released by the authors, {_EDTN_REPO}",
            check=_check_edtn),
        AssetSpec(
            "transform_matrix", "transform_matrix_08_30.npy",
            "17x50 anime-morph -> FLAME-expression basis used by the EDTN loss",
            f"transform_matrix_08_30.npy released with EDTN, {_EDTN_REPO}",
            check=_check_basis),
        AssetSpec(
            "generator_default", "generator_default.ckpt",
            "anime generator checkpoint, 'Default' style (authors' Lightning .ckpt)",
            f"the 'Default' anime generator checkpoint released by the authors, {_EDTN_REPO}; "
            "save it as generator_default.ckpt or pass its path",
            check=_check_generator),
        AssetSpec(
            "generator_cartoon", "generator_cartoon.ckpt",
            "anime generator checkpoint, 'Cartoon' style (authors' Lightning .ckpt)",
            f"the 'Cartoon' anime generator checkpoint released by the authors, {_EDTN_REPO}; "
            "save it as generator_cartoon.ckpt or pass its path",
            check=_check_generator),
        AssetSpec(
            "vgg19", "vgg19-dcbb9e9d.pth",
            "torchvision VGG19 ImageNet weights (perceptual loss)",
            "torchvision downloads it on first use of vgg19(weights='IMAGENET1K_V1'), or run "
            "scripts/fetch_assets.py",
            url="https://download.pytorch.org/models/vgg19-dcbb9e9d.pth",
            sha256="dcbb9e9d", in_torch_hub=True, check=_check_vgg19),
        AssetSpec(
            "face_detector", "s3fd-619a316812.pth",
            "face-alignment's SFD face detector weights",
            "face-alignment downloads it on first use, or run scripts/fetch_assets.py",
            url="https://www.adrianbulat.com/downloads/python-fan/s3fd-619a316812.pth",
            sha256="619a316812", in_torch_hub=True, check=_check_torch_weights),
        AssetSpec(
            "face_landmarker", "2DFAN4-11f355bf06.pth.tar",
            "face-alignment's 2D-FAN-4 landmark network (TorchScript archive)",
            "face-alignment downloads it on first use, or run scripts/fetch_assets.py",
            url="https://www.adrianbulat.com/downloads/python-fan/2DFAN4-11f355bf06.pth.tar",
            sha256="11f355bf06", in_torch_hub=True, check=_check_zip),
        AssetSpec(
            "inception_fid", "weights-inception-2015-12-05-6726825d.pth",
            "InceptionV3 weights for FID (the TF 2015-12-05 graph converted by torch-fidelity)",
            "torch-fidelity's release v0.2.0 (https://github.com/toshas/torch-fidelity/releases), "
            "or run scripts/fetch_assets.py",
            url="https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
                "weights-inception-2015-12-05-6726825d.pth",
            in_torch_hub=True, check=_check_inception),
        AssetSpec(
            "anime_landmarker", "mmpose_anime-face_hrnetv2.pth",
            "anime face landmark detector (28 points, HRNetV2-W18, mmpose checkpoint) of "
            "hysts/anime-face-detector",
            "release v0.0.1 of https://github.com/hysts/anime-face-detector, or run "
            "scripts/fetch_assets.py",
            url="https://github.com/hysts/anime-face-detector/releases/download/v0.0.1/"
                "mmpose_anime-face_hrnetv2.pth",
            in_torch_hub=True, check=_check_anime_landmarker),
    ]
}


# ----------------------------------------------------------------------------- lookup
def asset_home() -> Path:
    """Cache directory for assets: ``$EDTN_HOME`` or ``~/.cache/edtn``."""
    return Path(os.environ.get(ENV_HOME, str(DEFAULT_HOME))).expanduser()


def torch_hub_dir() -> Path:
    """torch hub checkpoint cache (``$TORCH_HOME/hub/checkpoints``)."""
    torch_home = os.environ.get("TORCH_HOME",
                                os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "torch"))
    return Path(torch_home).expanduser() / "hub" / "checkpoints"


def _spec(name: str) -> AssetSpec:
    try:
        return ASSETS[name]
    except KeyError:
        raise KeyError(f"unknown asset {name!r}; known: {', '.join(ASSETS)}") from None


def _candidates(spec: AssetSpec) -> list[Path]:
    paths = [asset_home() / spec.filename]
    if spec.in_torch_hub:
        paths.append(torch_hub_dir() / spec.filename)
    return paths


def _missing_message(spec: AssetSpec, looked: list[Path], reason: str = "not found") -> str:
    where = "\n".join(f"    {p}" for p in looked)
    return (f"{spec.filename} ({spec.what}) {reason}.\n"
            f"  Looked in:\n{where}\n"
            f"  Get it: {spec.obtain}.\n"
            f"  Then put it in {asset_home()} (set ${ENV_HOME} to change that folder) or pass its "
            f"path in the config.")


def resolve_asset(name: str, path: str | os.PathLike | None = None, verify: bool = False) -> Path:
    """Return the path of asset ``name``; raise :class:`AssetError` if it cannot be found.

    Args:
        name: a key of :data:`ASSETS`.
        path: explicit location from a config; ``None``/empty means "use the cache".
        verify: also run the asset's content check (opens the file; slower).
    """
    spec = _spec(name)
    if path not in (None, ""):
        looked = [Path(path).expanduser()]
    else:
        looked = _candidates(spec)
    found = next((p for p in looked if p.is_file()), None)
    if found is None:
        raise AssetError(_missing_message(spec, looked))
    if verify and spec.check is not None:
        try:
            spec.check(found)
        except Exception as exc:  # noqa: BLE001 - any failure to parse means a wrong file
            raise AssetError(_missing_message(spec, [found], f"at {found} is not valid: {exc}")) from exc
    return found


def resolve_asset_or_fallback(name: str, path: str | os.PathLike | None,
                              fallback: Path) -> tuple[Path, str]:
    """For scripts that can run on stand-in data (benchmarks): the explicit ``path``, else the
    asset cache, else ``fallback`` (e.g. the conformance kit's synthetic FLAME model).

    Returns ``(path, source)`` with ``source`` one of ``argument``, ``asset cache``,
    ``fallback``; raises :class:`AssetError` when none exists.
    """
    if path not in (None, ""):
        return resolve_asset(name, path), "argument"
    try:
        return resolve_asset(name), "asset cache"
    except AssetError:
        if Path(fallback).is_file():
            return Path(fallback), "fallback"
        raise


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 digest of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_mismatch(name: str, path: str | os.PathLike) -> Optional[str]:
    """``None`` when the file's sha256 starts with the asset's published digest (or none is
    published), else a one-line reason (``sha256 1a2b3c4d5e6f... does not start with 11f355bf06``)."""
    expected = _spec(name).sha256
    if not expected:
        return None
    digest = sha256_of(Path(path))
    return None if digest.startswith(expected) else f"sha256 {digest[:12]}... does not start with {expected}"


def check_asset(name: str, path: str | os.PathLike | None = None) -> AssetStatus:
    """Locate asset ``name`` and run its content check; never raises for a missing/bad file."""
    spec = _spec(name)
    try:
        found = resolve_asset(name, path)
    except AssetError:
        return AssetStatus(name, None, present=False, detail="missing")
    from infra.standin import is_standin_file

    status = AssetStatus(name, found, present=True, size=found.stat().st_size,
                         standin=is_standin_file(found, sha256_of))
    try:
        status.detail = spec.check(found) if spec.check else "present"
        mismatch = None if status.standin else sha256_mismatch(name, found)
        if mismatch:
            raise ValueError(mismatch)
        status.ok = True
    except (Exception, pickle.UnpicklingError) as exc:  # noqa: BLE001
        status.detail = f"INVALID: {exc}"
    return status
