"""Face detection and the 224x224 crops the DECA encoder takes.

Two ways to get a crop (all crops are float32 ``(3,224,224)`` RGB in [0,1]):

* **aligned** (:func:`aligned_resize`): the frame is already face-centred (VoxCeleb 256² frames).
  The whole frame is resized with ``F.interpolate(x_float64, 224, mode='bilinear',
  align_corners=True)`` and cast to float32. This is exactly what DECA's ``TestData`` does with
  ``iscrop=False`` (a similarity warp mapping the corners onto the corners), measured equal.
* **detected** (:func:`crop_face` with a detector): a face box is found, turned into a square
  (:func:`square_from_box`) and the square is warped to 224² by a similarity transform with
  bilinear sampling and zero padding outside the image (:func:`crop_square`; the same sampling as
  skimage's ``warp(order=1)`` that DECA uses).

Square from a detector box (what we do, DECA style): centre = box centre, shifted down by
``center_shift * side`` (DECA's rule for detector boxes uses 0.12 — we keep it for face-alignment's
S3FD boxes, which include the forehead; dlib's HOG boxes start at the eyebrows so we use 0), side =
mean of the box width and height, times ``scale`` = 1.25.

Detectors (:func:`make_detector`): face-alignment's S3FD when its weights are present (asset
``face_detector`` via :func:`infra.assets.resolve_asset`; never downloaded at run time), else dlib's
built-in HOG frontal-face detector (no model file) with a warning. OpenCV 5 has no Haar cascades.
When several faces are found the largest box is used.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional, Protocol, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from infra.assets import AssetError, resolve_asset

__all__ = [
    "CROP_SIZE",
    "CROP_SCALE",
    "FaceBox",
    "FaceDetector",
    "DlibFaceDetector",
    "SfdFaceDetector",
    "make_detector",
    "to_rgb_uint8",
    "image_to_tensor",
    "aligned_resize",
    "square_from_box",
    "crop_square",
    "crop_face",
]

_logger = logging.getLogger(__name__)

CROP_SIZE = 224                 # DECA encoder input
CROP_SCALE = 1.25               # DECA's enlargement of the face square
SFD_CENTER_SHIFT = 0.12         # DECA's downward centre shift for detector boxes (fraction of side)
DLIB_CENTER_SHIFT = 0.0         # dlib HOG boxes already sit low on the face (eyebrows to chin)
DLIB_UPSAMPLE = 1               # dlib pyramid upsampling: finds faces down to ~40 px
DETECT_MAX_SIDE = 640           # frames are shrunk to this longest side for detection (speed)
SFD_SCORE_THRESHOLD = 0.5
UINT8_MAX = 255.0
UINT16_TO_UINT8 = 257.0


# ----------------------------------------------------------------------------- image conversion
def to_rgb_uint8(image: np.ndarray) -> np.ndarray:
    """Any image array -> ``(H,W,3)`` uint8 RGB (C-contiguous).

    Accepts grayscale ``(H,W)`` / ``(H,W,1)``, RGB ``(H,W,3)``, RGBA ``(H,W,4)`` (alpha dropped),
    dtype uint8, uint16 (scaled by 1/257) or float in [0,1].
    """
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4):
        raise ValueError(f"expected an image (H,W), (H,W,1), (H,W,3) or (H,W,4); got shape {image.shape}")
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    elif image.shape[2] == 4:
        image = image[..., :3]
    if image.dtype == np.uint8:
        pass
    elif image.dtype == np.uint16:
        image = np.round(image / UINT16_TO_UINT8).astype(np.uint8)
    elif image.dtype.kind == "f":
        if not np.isfinite(image).all():
            raise ValueError("image contains NaN or inf")
        image = np.round(np.clip(image, 0.0, 1.0) * UINT8_MAX).astype(np.uint8)
    elif image.dtype == np.bool_:
        image = image.astype(np.uint8) * np.uint8(UINT8_MAX)
    else:
        raise ValueError(f"unsupported image dtype {image.dtype} (use uint8, uint16 or float in [0,1])")
    return np.ascontiguousarray(image)


def image_to_tensor(image: np.ndarray, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """``(H,W,3)`` uint8 -> ``(1,3,H,W)`` tensor in [0,1] of ``dtype``."""
    image = to_rgb_uint8(image)
    if not image.flags.writeable:  # e.g. PIL / imageio buffers; torch wants writable memory
        image = image.copy()
    return torch.from_numpy(image).permute(2, 0, 1)[None].to(dtype) / UINT8_MAX


def aligned_resize(image: np.ndarray, size: int = CROP_SIZE) -> np.ndarray:
    """Resize a face-centred frame to ``(3,size,size)`` float32 in [0,1].

    ``F.interpolate(x_float64, size, mode='bilinear', align_corners=True)`` then a float32 cast:
    equal to DECA's ``TestData`` path with ``iscrop=False`` (corner-to-corner similarity warp).
    """
    x = image_to_tensor(image, torch.float64)
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=True)
    return x[0].to(torch.float32).numpy()


# ----------------------------------------------------------------------------- boxes and crops
@dataclass(frozen=True)
class FaceBox:
    """A detected face: corners in pixels (x right, y down), detector score and centre shift rule."""

    x0: float
    y0: float
    x1: float
    y1: float
    score: float = 1.0
    center_shift: float = 0.0

    @property
    def area(self) -> float:
        return max(self.x1 - self.x0, 0.0) * max(self.y1 - self.y0, 0.0)

    def scaled(self, factor: float) -> "FaceBox":
        return FaceBox(self.x0 * factor, self.y0 * factor, self.x1 * factor, self.y1 * factor,
                       self.score, self.center_shift)


def square_from_box(box: FaceBox, scale: float = CROP_SCALE) -> tuple[float, float, float]:
    """Square crop ``(cx, cy, side)`` in pixels around a face box.

    side = ``scale`` * mean(width, height); centre = box centre moved down by
    ``box.center_shift`` * mean(width, height).
    """
    width, height = box.x1 - box.x0, box.y1 - box.y0
    if width <= 0 or height <= 0:
        raise ValueError(f"degenerate face box {box}")
    side = (width + height) / 2.0
    cx = (box.x0 + box.x1) / 2.0
    cy = (box.y0 + box.y1) / 2.0 + box.center_shift * side
    return cx, cy, side * scale


def crop_square(image: np.ndarray, center: tuple[float, float], side: float, size: int = CROP_SIZE) -> np.ndarray:
    """Warp the square of ``side`` pixels around ``center`` to ``(3,size,size)`` float32 in [0,1].

    Similarity transform mapping the square's corners (cx±side/2, cy±side/2) onto the output corners
    (0 and size-1), pixel centres at integer coordinates, bilinear sampling in float64, zeros outside
    the image (as skimage ``warp(order=1)`` after ``estimate_transform('similarity')``).
    """
    x = image_to_tensor(image, torch.float64)
    height, width = x.shape[-2:]
    cx, cy = center
    step = side / (size - 1)
    coords = torch.arange(size, dtype=torch.float64) * step
    xs = cx - side / 2.0 + coords
    ys = cy - side / 2.0 + coords
    # grid_sample(align_corners=True): -1 is the centre of pixel 0, +1 the centre of the last pixel.
    gx = 2.0 * xs / max(width - 1, 1) - 1.0
    gy = 2.0 * ys / max(height - 1, 1) - 1.0
    grid = torch.stack(torch.meshgrid(gy, gx, indexing="ij")[::-1], dim=-1)[None]
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    return out[0].to(torch.float32).numpy()


# ----------------------------------------------------------------------------- detectors
class FaceDetector(Protocol):
    """Anything with ``detect(image (H,W,3) uint8 RGB) -> list[FaceBox]`` and a ``name``."""

    name: str

    def detect(self, image: np.ndarray) -> list[FaceBox]: ...


def _shrink_for_detection(image: np.ndarray, max_side: int) -> tuple[np.ndarray, float]:
    """Downscale so the longest side is <= ``max_side``; returns the image and the factor back."""
    longest = max(image.shape[:2])
    if longest <= max_side:
        return image, 1.0
    import cv2

    factor = max_side / longest
    small = cv2.resize(image, (round(image.shape[1] * factor), round(image.shape[0] * factor)),
                       interpolation=cv2.INTER_AREA)
    return small, 1.0 / factor


class DlibFaceDetector:
    """dlib's built-in HOG frontal-face detector (ships with the ``dlib-bin`` wheel; no model file).

    Args:
        upsample: pyramid upsampling steps (1 finds faces of ~40 px and more).
        max_side: frames are shrunk to this longest side before detection.
    """

    name = "dlib"

    def __init__(self, upsample: int = DLIB_UPSAMPLE, max_side: int = DETECT_MAX_SIDE):
        import dlib

        self._detector = dlib.get_frontal_face_detector()
        self.upsample = upsample
        self.max_side = max_side

    def detect(self, image: np.ndarray) -> list[FaceBox]:
        small, back = _shrink_for_detection(to_rgb_uint8(image), self.max_side)
        rects, scores, _ = self._detector.run(small, self.upsample, 0.0)
        return [FaceBox(r.left(), r.top(), r.right(), r.bottom(), float(s), DLIB_CENTER_SHIFT).scaled(back)
                for r, s in zip(rects, scores)]


class SfdFaceDetector:
    """face-alignment's S3FD detector loaded from local weights (asset ``face_detector``).

    Args:
        path: weights file; ``None`` resolves the asset (``$EDTN_HOME`` or the torch hub cache).
        device: torch device for the detector.
        threshold: minimum detection score.

    Raises:
        infra.assets.AssetError: the weights are not present (nothing is downloaded).
    """

    name = "face_alignment"

    def __init__(self, path=None, device: str | torch.device = "cpu", threshold: float = SFD_SCORE_THRESHOLD,
                 max_side: int = DETECT_MAX_SIDE):
        # verified by our own safe load (weights_only) before face-alignment opens it
        weights = resolve_asset("face_detector", path, verify=True)
        from face_alignment.detection.sfd.sfd_detector import SFDDetector

        self._detector = SFDDetector(device=str(device), path_to_detector=str(weights), filter_threshold=threshold)
        self.max_side = max_side

    def detect(self, image: np.ndarray) -> list[FaceBox]:
        small, back = _shrink_for_detection(to_rgb_uint8(image), self.max_side)
        boxes = self._detector.detect_from_image(small.copy())
        return [FaceBox(float(b[0]), float(b[1]), float(b[2]), float(b[3]), float(b[4]), SFD_CENTER_SHIFT).scaled(back)
                for b in boxes]


DETECTOR_CHOICES = ("auto", "fan", "dlib", "face_alignment")   # face_alignment: old name of fan


def make_detector(kind: str = "auto", device: str | torch.device = "cpu", weights=None) -> FaceDetector:
    """Build a face detector.

    Args:
        kind: ``auto`` (face-alignment's S3FD if its weights are present, else dlib with a
            warning), ``fan`` (face-alignment; weights required; ``face_alignment`` is an alias)
            or ``dlib``.
        device: device for the S3FD network.
        weights: explicit S3FD weights path (else the ``face_detector`` asset lookup).
    """
    if kind not in DETECTOR_CHOICES:
        raise ValueError(f"detector must be one of {DETECTOR_CHOICES}, got {kind!r}")
    if kind == "dlib":
        return DlibFaceDetector()
    if kind in ("fan", "face_alignment"):
        return SfdFaceDetector(weights, device)
    try:
        return SfdFaceDetector(weights, device)
    except AssetError:
        _logger.warning("face-alignment's S3FD weights (asset 'face_detector') not found; using "
                        "dlib's HOG face detector instead (frontal faces only). Run "
                        "scripts/fetch_assets.py to get them.")
        return DlibFaceDetector()


def pick_face(boxes: Sequence[FaceBox]) -> Optional[FaceBox]:
    """The largest box, or ``None``."""
    return max(boxes, key=lambda b: b.area) if boxes else None


def crop_face(image: np.ndarray, detector: Optional[FaceDetector], scale: float = CROP_SCALE,
              size: int = CROP_SIZE) -> tuple[Optional[np.ndarray], Optional[FaceBox]]:
    """Crop the (largest) face of an image for the DECA encoder.

    Args:
        image: ``(H,W)``, ``(H,W,3)`` or ``(H,W,4)`` image (see :func:`to_rgb_uint8`).
        detector: a :class:`FaceDetector`, or ``None`` for a face-centred frame (aligned resize of
            the whole image; the box is then the full frame).
        scale: enlargement of the face square.
        size: output side.

    Returns:
        ``(crop (3,size,size) float32 in [0,1], box)``, or ``(None, None)`` when no face is found.
    """
    image = to_rgb_uint8(image)
    if detector is None:
        h, w = image.shape[:2]
        return aligned_resize(image, size), FaceBox(0.0, 0.0, w - 1.0, h - 1.0)
    box = pick_face(detector.detect(image))
    if box is None:
        return None, None
    cx, cy, side = square_from_box(box, scale)
    return crop_square(image, (cx, cy), side, size), box
