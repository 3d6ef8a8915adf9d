"""Metrics of the evaluation: FID, KDR (expression accuracy) and the geometry errors of a mapping.

FID
    torch-fidelity's FID (InceptionV3 pool features, 2048-d) between a real and a fake image set.
    The Inception weights are the asset ``inception_fid`` (torch-fidelity's own file): we load it
    with ``weights_only=True`` and hand torch-fidelity a copy we re-saved from those tensors (it
    unpickles its weights file fully). Images are read as RGB (alpha composited over white); every
    image of both sets must have the same size (the generator's resolution) — a different one is
    reported by name. The real set is AnimeCeleb test images at that resolution
    (:func:`reenact.evaluation.protocol.prepare_real_set`).

KDR (our definition — the paper's exact one is not published)
    Per frame, three openness features on each side:

    * human, from face-alignment's 68 landmarks on the driving frame (0-based iBUG):
      left eye = mean(|p37−p41|, |p38−p40|) / |p36−p39|, right eye = mean(|p43−p47|, |p44−p46|) /
      |p42−p45|, mouth = |p62−p66| / |p60−p64|;
    * anime, from the 28-point anime landmarks on the generated frame (layout in
      :mod:`.anime_landmarks`): eye = |upper-lid middle − lower-lid middle| / |upper-lid ends|
      (left: |p12−p15| / |p11−p13|, right: |p18−p21| / |p17−p19|), mouth = |p25−p27| / |p24−p26|.

    Both sides are made relative to the first frame of their sequence (f_t − f_0), and
    KDR = the mean, over frames t ≥ 1 of every pair and the 3 features, of |Δhuman − Δanime|.
    A driving frame without a detected face is left out (a sequence whose first frame has none
    takes its first frame with a face as reference).

Geometry errors
    EDTN's loss terms between FLAME driven by the DECA codes and FLAME driven by the predicted
    morphs (:class:`edtn.losses.GeometryLoss`): vertex MSE (and its RMSE in mm), landmark,
    eye and lip — for any mapping of :mod:`edtn.mappings`.
"""
from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from infra.image_io import IMAGE_EXTENSIONS, read_image

__all__ = [
    "HUMAN_FEATURES",
    "ANIME_FEATURES",
    "FEATURE_NAMES",
    "FID_FEATURE_LAYERS",
    "list_images",
    "check_image_sizes",
    "ImageSet",
    "FidScorer",
    "compute_fid",
    "openness",
    "human_openness",
    "anime_openness",
    "relative_features",
    "kdr",
    "detect_human_landmarks",
    "vertex_rmse_mm",
    "geometry_errors",
]

METRES_TO_MM = 1000.0
FID_FEATURE_EXTRACTOR = "inception-v3-compat"
FID_FEATURE_LAYER = "2048"      # the standard FID; torch-fidelity also offers 64, 192, 768
FID_FEATURE_LAYERS = ("64", "192", "768", "2048")
DEFAULT_FID_BATCH = 64
WIDTH_FLOOR = 1e-6            # a collapsed eye / mouth width gives a finite (huge) ratio, not inf
FEATURE_NAMES = ("left_eye", "right_eye", "mouth")
# Each feature: (vertical pairs averaged, horizontal pair) of landmark indices.
HUMAN_FEATURES = (
    (((37, 41), (38, 40)), (36, 39)),
    (((43, 47), (44, 46)), (42, 45)),
    (((62, 66),), (60, 64)),
)
ANIME_FEATURES = (
    (((12, 15),), (11, 13)),
    (((18, 21),), (17, 19)),
    (((25, 27),), (24, 26)),
)


# ----------------------------------------------------------------------------- image sets / FID
def list_images(folder: str | os.PathLike, what: str = "image folder") -> list[Path]:
    """Every image below ``folder`` (recursive, sorted).

    Raises:
        FileNotFoundError: no such folder. ValueError: no image in it (the message names it).
    """
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"{what} not found: {folder}")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise ValueError(f"{what} {folder} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
    return files


def check_image_sizes(paths: Sequence[Path], expected: Optional[tuple[int, int]] = None,
                      reference: Optional[Path] = None) -> tuple[int, int]:
    """(width, height) shared by every image (read from the headers).

    Raises:
        ValueError: naming the first image whose size differs, its size and the expected one.
    """
    from PIL import Image

    for path in paths:
        try:
            with Image.open(path) as img:
                size = img.size
        except Exception as exc:  # noqa: BLE001 - any decoder failure is a bad input file
            raise ValueError(f"cannot read image {path}: {exc}") from exc
        if expected is None:
            expected, reference = size, path
        elif size != expected:
            raise ValueError(f"image {path} is {size[0]}x{size[1]}, but {reference} is "
                             f"{expected[0]}x{expected[1]}: every real and generated image must have "
                             "the generator's resolution")
    if expected is None:
        raise ValueError("no images")
    return expected


class ImageSet(torch.utils.data.Dataset):
    """Images as uint8 tensors (3, H, W), RGB with alpha composited over white (what torch-fidelity
    takes)."""

    def __init__(self, paths: Sequence[Path]) -> None:
        self.paths = list(paths)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.from_numpy(read_image(self.paths[index])).permute(2, 0, 1).contiguous()


def _safe_inception_copy(inception_path: Optional[str | os.PathLike], folder: Path) -> Path:
    """Load the Inception weights with ``weights_only=True``, check keys and shapes, and re-save
    the tensors (the copy torch-fidelity unpickles)."""
    from infra.assets import ASSETS, resolve_asset
    from infra.checkpoint import load_torch_file

    file = resolve_asset("inception_fid", inception_path)
    state = load_torch_file(file, map_location="cpu")  # weights_only; anything else is refused
    try:
        ASSETS["inception_fid"].check(file)
    except ValueError as exc:
        raise ValueError(f"{file}: {exc}") from exc
    copy = folder / "inception.pth"
    torch.save({k: v for k, v in state.items() if isinstance(v, torch.Tensor)}, copy)
    return copy


def _image_paths(images: str | os.PathLike | Sequence[Path], name: str) -> list[Path]:
    if isinstance(images, (str, os.PathLike)):
        return list_images(images, f"{name} image folder")
    paths = [Path(p) for p in images]
    if not paths:
        raise ValueError(f"the {name} image set is empty")
    return paths


class FidScorer:
    """torch-fidelity's FID with one Inception network for many image sets (the real set's
    statistics are computed once and reused for every method).

    Args:
        inception_path: the Inception weights (asset ``inception_fid``; ``None`` = the cache).
        device: ``auto`` uses CUDA when present. batch_size: images per Inception call.
        loader_workers: decode images in torch-fidelity's worker processes (default: on CUDA).
        progress: torch-fidelity's progress messages.
        feature_layer: Inception features used (``2048``: the standard FID; the smaller layers
            are for quick checks only, their values are not comparable).
    """

    def __init__(self, inception_path: Optional[str | os.PathLike] = None, *, device: str | torch.device = "auto",
                 batch_size: int = DEFAULT_FID_BATCH, loader_workers: Optional[bool] = None,
                 progress: bool = False, feature_layer: str = FID_FEATURE_LAYER) -> None:
        from torch_fidelity.utils import create_feature_extractor

        from infra.runtime import resolve_device

        if str(feature_layer) not in FID_FEATURE_LAYERS:
            raise ValueError(f"FID feature layer must be one of {FID_FEATURE_LAYERS}, got {feature_layer!r}")
        self.layer = str(feature_layer)
        self.cuda = resolve_device(device).type == "cuda"
        self.batch_size = int(batch_size)
        self.save_cpu_ram = not (self.cuda if loader_workers is None else loader_workers)
        self.progress = progress
        with tempfile.TemporaryDirectory(prefix="fid_") as tmp:
            weights = _safe_inception_copy(inception_path, Path(tmp))
            self.extractor = create_feature_extractor(FID_FEATURE_EXTRACTOR, [self.layer], cuda=self.cuda,
                                                      feature_extractor_weights_path=str(weights),
                                                      verbose=progress)

    def statistics(self, images: str | os.PathLike | Sequence[Path], name: str = "image",
                   size: Optional[tuple[int, int]] = None, reference: Optional[Path] = None) -> dict:
        """FID statistics (``mu``, ``sigma``) of an image set plus ``count``, ``size``, ``first``.

        Raises:
            FileNotFoundError / ValueError: a missing or empty folder, or an image whose size
            differs from the others (or from ``size``), named.
        """
        from torch_fidelity.metric_fid import fid_featuresdict_to_statistics
        from torch_fidelity.utils import get_featuresdict_from_dataset

        paths = _image_paths(images, name)
        size = check_image_sizes(paths, size, reference)
        features = get_featuresdict_from_dataset(ImageSet(paths), self.extractor, self.batch_size, self.cuda,
                                                 self.save_cpu_ram, self.progress)
        stats = fid_featuresdict_to_statistics(features, self.layer)
        return {**stats, "count": len(paths), "size": size, "first": paths[0]}

    def fid(self, real: dict, fake: dict) -> float:
        """FID between two :meth:`statistics` results."""
        from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_statistics_to_metric

        return float(fid_statistics_to_metric(real, fake, self.progress)[KEY_METRIC_FID])

    def compare(self, real: dict, fake_images: str | os.PathLike | Sequence[Path]) -> dict:
        """``{"fid", "real_images", "fake_images", "image_size", "feature_layer"}`` of fake images
        against real statistics
        (the fake images must have the real ones' size)."""
        fake = self.statistics(fake_images, "fake", real["size"], real["first"])
        return {"fid": self.fid(real, fake), "real_images": real["count"], "fake_images": fake["count"],
                "image_size": list(real["size"]), "feature_layer": self.layer}


def compute_fid(real: str | os.PathLike | Sequence[Path], fake: str | os.PathLike | Sequence[Path],
                inception_path: Optional[str | os.PathLike] = None, *, batch_size: int = DEFAULT_FID_BATCH,
                device: str | torch.device = "auto", progress: bool = False,
                loader_workers: Optional[bool] = None, feature_layer: str = FID_FEATURE_LAYER) -> dict:
    """FID between two image sets (folders searched recursively, or lists of files) with
    torch-fidelity; see :class:`FidScorer`. Returns ``{"fid", "real_images", "fake_images",
    "image_size"}``; AssetError without Inception weights."""
    real_paths, fake_paths = _image_paths(real, "real"), _image_paths(fake, "fake")
    check_image_sizes(fake_paths, check_image_sizes(real_paths), real_paths[0])  # before any work
    scorer = FidScorer(inception_path, device=device, batch_size=batch_size, loader_workers=loader_workers,
                       progress=progress, feature_layer=feature_layer)
    return scorer.compare(scorer.statistics(real_paths, "real"), fake_paths)


# ----------------------------------------------------------------------------- KDR
def openness(landmarks: np.ndarray, features=HUMAN_FEATURES) -> np.ndarray:
    """(T, 3) openness ratios of landmarks (T, L, 2) (NaN rows stay NaN); see the module docstring."""
    points = np.asarray(landmarks, dtype=np.float64)
    out = np.empty(points.shape[:1] + (len(features),))
    for k, (verticals, (a, b)) in enumerate(features):
        vertical = np.mean([np.linalg.norm(points[:, i] - points[:, j], axis=-1) for i, j in verticals], axis=0)
        width = np.maximum(np.linalg.norm(points[:, a] - points[:, b], axis=-1), WIDTH_FLOOR)
        out[:, k] = vertical / width
    return out


def human_openness(landmarks68: np.ndarray) -> np.ndarray:
    """KDR's human features (T, 3) from 68 face-alignment landmarks (T, 68, 2)."""
    return openness(landmarks68, HUMAN_FEATURES)


def anime_openness(landmarks28: np.ndarray) -> np.ndarray:
    """KDR's anime features (T, 3) from the 28 anime landmarks (T, 28, 2)."""
    return openness(landmarks28, ANIME_FEATURES)


def relative_features(features: np.ndarray) -> np.ndarray:
    """f_t − f_ref (T, 3): the reference is the first row without NaN; rows up to and including it,
    and NaN rows, are NaN."""
    features = np.asarray(features, dtype=np.float64)
    valid = np.flatnonzero(~np.isnan(features).any(axis=1))
    out = np.full_like(features, np.nan)
    if len(valid):
        ref = valid[0]
        out[ref + 1:] = features[ref + 1:] - features[ref]
    return out


def kdr(human: Sequence[np.ndarray], anime: Sequence[np.ndarray]) -> dict:
    """KDR over sequences: mean |Δhuman − Δanime| over frames t >= 1 and the 3 features.

    Args:
        human, anime: per pair, the (T, 3) features of the driving / generated frames (same T).
    Returns:
        ``{"kdr", "frames", "frames_skipped", "per_pair": [kdr of each pair]}`` (frames counted
        with t >= 1; skipped ones had no face on the human side).
    """
    total, frames, skipped, per_pair = 0.0, 0, 0, []
    for h, a in zip(human, anime, strict=True):
        h, a = np.asarray(h, np.float64), np.asarray(a, np.float64)
        if h.shape != a.shape:
            raise ValueError(f"human features {h.shape} and anime features {a.shape} differ in length")
        diff = np.abs(relative_features(h) - relative_features(a))
        ok = ~np.isnan(diff).any(axis=1)
        skipped += int(len(diff) - 1 - ok.sum())
        per_pair.append(float(diff[ok].mean()) if ok.any() else float("nan"))
        total += float(diff[ok].sum())
        frames += int(ok.sum())
    value = total / (frames * len(FEATURE_NAMES)) if frames else float("nan")
    return {"kdr": value, "frames": frames, "frames_skipped": skipped, "per_pair": per_pair}


def detect_human_landmarks(image: np.ndarray, landmarker, box_detector=None) -> Optional[np.ndarray]:
    """68 landmarks (68, 2) of the face in a driving frame, or ``None`` when no face is found.

    Args:
        image: RGB uint8 (H, W, 3). landmarker: a :class:`deca_edit.crop.FanLandmarker`.
        box_detector: a face detector (its largest box is used); ``None``: the whole frame is the
            face box (face-centred VoxCeleb frames; coarser than a detected box).
    """
    from deca_edit.crop import FaceBox, pick_face

    if box_detector is None:
        h, w = image.shape[:2]
        box = FaceBox(0.0, 0.0, w - 1.0, h - 1.0)
    else:
        box = pick_face(box_detector.detect(image))
        if box is None:
            return None
    return landmarker(image, [box])[0]


# ----------------------------------------------------------------------------- geometry
def vertex_rmse_mm(vertex_mse: float) -> float:
    """Root of the vertex MSE (m²) in millimetres."""
    return math.sqrt(vertex_mse) * METRES_TO_MM


def geometry_errors(mapping, inputs: torch.Tensor, loss_fn, *, batch_size: int = 4096) -> dict:
    """EDTN's geometry terms of a mapping on DECA inputs (N, 53): frame-weighted means of
    ``vertex`` (m²), ``landmark``, ``eye``, ``lip``, ``total`` plus ``vertex_rmse_mm`` and
    ``frames``."""
    from edtn.train_loop import evaluate

    device = loss_fn.basis.device
    batches = ({"input": inputs[i:i + batch_size]} for i in range(0, len(inputs), batch_size))
    metrics = evaluate(mapping, batches, loss_fn, device)
    metrics["vertex_rmse_mm"] = vertex_rmse_mm(metrics["vertex"])
    metrics["frames"] = int(len(inputs))
    return metrics
