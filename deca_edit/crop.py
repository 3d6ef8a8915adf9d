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

Two square rules (:func:`square_from_box`, chosen by ``FaceBox.kind``):

* ``kpt68`` — **the original's crop** (DECA ``TestData`` with its FAN detector): the box is the
  bounding box of face-alignment's 68 2D-FAN-4 landmarks; old_size = (w + h)/2 · 1.1, centred on
  the box (no shift); side = ``int(old_size · 1.25)``. :func:`kpt68_box` and
  :func:`similarity_matrix` give the box and the crop matrix.
* ``bbox`` — detector boxes without landmarks (our fallback): centre = box centre, shifted down by
  ``center_shift * side`` (DECA's rule for detector boxes uses 0.12 — we keep it for S3FD boxes,
  which include the forehead; dlib's HOG boxes start at the eyebrows so we use 0), side = mean of
  the box width and height, times ``scale`` = 1.25.

Detectors (:func:`make_detector`, config names ``auto | fan | dlib``; ``face_alignment`` is an
alias of ``fan``): face-alignment's S3FD when its weights are present (asset ``face_detector``),
followed by the 2D-FAN-4 landmark network when its weights are present too (asset
``face_landmarker``; then the crop is the original's ``kpt68`` crop), else dlib's built-in HOG
frontal-face detector (no model file) with a warning. Nothing is downloaded at run time; every file
comes through :func:`infra.assets.resolve_asset`. OpenCV 5 has no Haar cascades. When several faces
are found the largest box is used (the kpt68 path takes S3FD's best-scoring face, as the original's
``get_landmarks(...)[0]`` does).

:class:`FanLandmarker` runs 2D-FAN-4 on a face box and returns the 68 landmarks (0-based iBUG, image
pixels) with face-alignment's own crop and heatmap decoding; it also gives KDR's human side
(:mod:`reenact.evaluation.metrics`).
"""
from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from typing import Optional, Protocol, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from infra.assets import AssetError, resolve_asset
from infra.image_io import to_rgb

__all__ = [
    "CROP_SIZE",
    "CROP_SCALE",
    "BOX_KINDS",
    "DETECTOR_CHOICES",
    "FaceBox",
    "FaceDetector",
    "DlibFaceDetector",
    "SfdFaceDetector",
    "FanLandmarker",
    "FanKpt68Detector",
    "fan_decode",
    "load_fan_network",
    "kpt68_box",
    "similarity_matrix",
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
KPT68_SIZE_FACTOR = 1.1         # DECA bbox2point(type='kpt68'): old_size = (w + h)/2 * 1.1
BOX_KINDS = ("bbox", "kpt68")
# face-alignment's FAN crop: centre of the detector box moved up by 0.12 * height, scale = (w + h) /
# 195, a 256² crop of 200 * scale pixels; heatmaps are 64².
FAN_CENTER_SHIFT = 0.12
FAN_REFERENCE_SCALE = 195.0
FAN_INPUT_SIZE = 256
FAN_LANDMARKS = 68
FAN_HEATMAP_EDGE = 63           # face-alignment's hard-coded "not on the border" bound of its 64² maps
UINT8_MAX = 255.0


# ----------------------------------------------------------------------------- image conversion
def to_rgb_uint8(image: np.ndarray) -> np.ndarray:
    """Any image array -> ``(H,W,3)`` uint8 RGB (C-contiguous), alpha ignored as DECA does.

    :func:`infra.image_io.to_rgb` with ``composite="drop"``: grayscale is replicated, uint16 is
    scaled by 1/257, float in [0,1] by 255 (NaN/inf refused).
    """
    return to_rgb(image, "image", composite="drop")


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
    """A detected face: corners in pixels (x right, y down), detector score, and how the square
    crop is made from it: ``kind`` ``bbox`` (with ``center_shift``) or ``kpt68`` (the box of the 68
    landmarks, DECA's rule; see :func:`square_from_box`)."""

    x0: float
    y0: float
    x1: float
    y1: float
    score: float = 1.0
    center_shift: float = 0.0
    kind: str = "bbox"

    @property
    def area(self) -> float:
        return max(self.x1 - self.x0, 0.0) * max(self.y1 - self.y0, 0.0)

    def scaled(self, factor: float) -> "FaceBox":
        return FaceBox(self.x0 * factor, self.y0 * factor, self.x1 * factor, self.y1 * factor,
                       self.score, self.center_shift, self.kind)


def square_from_box(box: FaceBox, scale: float = CROP_SCALE) -> tuple[float, float, float]:
    """Square crop ``(cx, cy, side)`` in pixels around a face box.

    * ``kind='bbox'``: side = ``scale`` * mean(width, height); centre = box centre moved down by
      ``box.center_shift`` * mean(width, height).
    * ``kind='kpt68'`` (DECA ``bbox2point(type='kpt68')``): old_size = mean(width, height) * 1.1,
      centre = box centre (no shift), side = ``int(old_size * scale)``.
    """
    width, height = box.x1 - box.x0, box.y1 - box.y0
    if width <= 0 or height <= 0:
        raise ValueError(f"degenerate face box {box}")
    if box.kind not in BOX_KINDS:
        raise ValueError(f"face box kind must be one of {BOX_KINDS}, got {box.kind!r}")
    side = (width + height) / 2.0
    if box.kind == "kpt68":  # DECA's arithmetic: centre = right - (right - left)/2
        return (box.x1 - width / 2.0, box.y1 - height / 2.0,
                float(int(side * KPT68_SIZE_FACTOR * scale)))
    cx = (box.x0 + box.x1) / 2.0
    cy = (box.y0 + box.y1) / 2.0 + box.center_shift * side
    return cx, cy, side * scale


def kpt68_box(landmarks: np.ndarray, score: float = 1.0) -> FaceBox:
    """The ``kpt68`` face box of 68 landmarks (N, 2+) in pixels: min / max of x and y."""
    points = np.asarray(landmarks, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] < 2 or not np.isfinite(points[:, :2]).all():
        raise ValueError(f"landmarks must be a finite (N, 2) array, got shape {points.shape}")
    (x0, y0), (x1, y1) = points[:, :2].min(axis=0), points[:, :2].max(axis=0)
    return FaceBox(float(x0), float(y0), float(x1), float(y1), score, 0.0, "kpt68")


def similarity_matrix(center: tuple[float, float], side: float, size: int = CROP_SIZE) -> np.ndarray:
    """(3, 3) similarity taking image pixels to crop pixels for the square (centre, side): its
    corners (cx − side/2, cy − side/2) and (cx + side/2, cy + side/2) go to (0, 0) and
    (size − 1, size − 1), the map :func:`crop_square` samples with (DECA's
    ``estimate_transform('similarity', src_pts, DST_PTS)``)."""
    factor = (size - 1) / side
    cx, cy = center
    return np.array([[factor, 0.0, -factor * (cx - side / 2.0)],
                     [0.0, factor, -factor * (cy - side / 2.0)],
                     [0.0, 0.0, 1.0]])


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

    name = "fan_boxes"

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


# ----------------------------------------------------------------------------- 2D-FAN-4 landmarks
def _is_torchscript(path) -> bool:
    import zipfile

    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.split("/", 1)[-1].startswith("code/") or name.endswith("/constants.pkl")
                   for name in archive.namelist())


def load_fan_network(path=None, device: str | torch.device = "cpu",
                     trust_checkpoint: bool = False) -> torch.nn.Module:
    """face-alignment's 2D-FAN-4 landmark network (asset ``face_landmarker``), in eval mode.

    The released ``2DFAN4-11f355bf06.pth.tar`` is a TorchScript archive. TorchScript runs the
    program stored in the file, so ``torch.jit.load`` is only called on a file we verified: its
    sha256 must start with the release's (``11f355bf06``, the name's suffix); any other
    TorchScript file needs ``trust_checkpoint``. A plain state dict of
    ``face_alignment.models.FAN(4)`` (what newer face-alignment releases load) is read with the
    safe :func:`infra.checkpoint.load_torch_file` and a strict key check.

    Args:
        path: explicit file; ``None`` resolves the asset (``$EDTN_HOME`` or the torch hub cache).
        device: where the network runs.
        trust_checkpoint: load a TorchScript file that is not the release (only files you made).
    Raises:
        AssetError: the file is missing (nothing is downloaded). ValueError: not a 2D-FAN-4 file,
        or an unverified TorchScript file without ``trust_checkpoint``.
    """
    from infra.assets import sha256_mismatch
    from infra.checkpoint import TRUST_OPT_IN, format_keys, load_torch_file, state_dict_problems

    weights = resolve_asset("face_landmarker", path)
    if _is_torchscript(weights):
        mismatch = None if trust_checkpoint else sha256_mismatch("face_landmarker", weights)
        if mismatch:
            raise ValueError(f"{weights}: a TorchScript archive that is not face-alignment's released "
                             f"2D-FAN-4 ({mismatch}); "
                             "TorchScript runs the program stored in the file, so only the verified "
                             f"release loads by default. For a file you made yourself pass {TRUST_OPT_IN}.")
        with warnings.catch_warnings():  # torch 2.x marks jit.load deprecated; the release is TorchScript
            warnings.filterwarnings("ignore", category=FutureWarning)
            return torch.jit.load(str(weights), map_location=device).eval()
    from face_alignment.models import FAN

    state = load_torch_file(weights, map_location="cpu")
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    network = FAN(4)
    problems = state_dict_problems(state, network.state_dict()) if isinstance(state, dict) else ["not a dict"]
    if problems:
        raise ValueError(f"{weights}: not a 2D-FAN-4 network (TorchScript archive or FAN(4) state dict "
                         f"with keys {format_keys(network.state_dict())}):\n  " + "\n  ".join(problems))
    network.load_state_dict(state, strict=True)
    return network.to(device).eval()


def fan_decode(heatmaps: np.ndarray, centers: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """face-alignment's heatmap decoding (``get_preds_fromhm``), vectorised: heatmaps (B, 68, H, W),
    crop centres (B, 2) and scales (B,) -> landmarks (B, 68, 2) float32 in image pixels.

    Per map: the argmax (1-based x, y), moved by ±0.25 towards the larger neighbour on each axis
    when the peak is not on the border (face-alignment tests 0 < p < 63), minus 0.5, then mapped
    back through the crop (side 200·scale, ``resolution`` = H) and truncated to integers, as
    face-alignment's ``transform(..., invert=True)`` returns them.
    """
    b, k, h, w = heatmaps.shape
    flat = heatmaps.reshape(b, k, -1)
    index = flat.argmax(axis=2)
    px, py = index % w, index // w  # 0-based peak
    inner = (px > 0) & (px < FAN_HEATMAP_EDGE) & (py > 0) & (py < FAN_HEATMAP_EDGE)
    xs, ys = np.clip(px, 1, w - 2), np.clip(py, 1, h - 2)
    maps = heatmaps.reshape(b * k, h, w)
    n = np.arange(b * k)
    dx = maps[n, ys.ravel(), xs.ravel() + 1] - maps[n, ys.ravel(), xs.ravel() - 1]
    dy = maps[n, ys.ravel() + 1, xs.ravel()] - maps[n, ys.ravel() - 1, xs.ravel()]
    shift = np.stack([np.sign(dx), np.sign(dy)], axis=1).reshape(b, k, 2) * 0.25
    preds = np.stack([px + 1.0, py + 1.0], axis=2).astype(np.float32)
    preds = preds + np.where(inner[..., None], shift, 0.0).astype(np.float32) - np.float32(0.5)
    side = 200.0 * np.asarray(scales, np.float64).reshape(b, 1, 1)
    origin = np.asarray(centers, np.float64).reshape(b, 1, 2) - side / 2.0
    return np.trunc(preds * side / h + origin).astype(np.float32)


class FanLandmarker:
    """face-alignment's 2D-FAN-4 on a face box -> 68 landmarks (0-based iBUG order, image pixels).

    The crop is face-alignment's own (``face_alignment.utils.crop`` of the box with its 0.12
    upward shift and scale (w + h)/195), the decoding its ``get_preds_fromhm`` rule
    (:func:`fan_decode`; a numpy version, since face-alignment's compiles with numba on every
    start). ``flip_input=False`` as DECA's FAN detector runs it.

    Args:
        path: 2D-FAN-4 weights (asset ``face_landmarker``).
        device: where the network runs.
        flip_input: also run the mirrored crop and average the heatmaps (face-alignment's option).
    """

    def __init__(self, path=None, device: str | torch.device = "cpu", flip_input: bool = False,
                 trust_checkpoint: bool = False):
        self.device = torch.device(device)
        self.network = load_fan_network(path, self.device, trust_checkpoint)
        self.flip_input = flip_input

    @staticmethod
    def crop_geometry(box: FaceBox) -> tuple[np.ndarray, float]:
        """face-alignment's crop centre and scale for a detector box."""
        width, height = box.x1 - box.x0, box.y1 - box.y0
        center = np.array([box.x1 - width / 2.0, box.y1 - height / 2.0 - height * FAN_CENTER_SHIFT])
        return center, (width + height) / FAN_REFERENCE_SCALE

    @torch.no_grad()
    def __call__(self, image: np.ndarray, boxes: Sequence[FaceBox]) -> np.ndarray:
        """Landmarks (len(boxes), 68, 2) float32 of the faces in ``boxes`` of one RGB image."""
        from face_alignment.utils import crop, flip

        image = to_rgb_uint8(image)
        if not boxes:
            return np.zeros((0, FAN_LANDMARKS, 2), np.float32)
        geometry = [self.crop_geometry(box) for box in boxes]
        crops = np.stack([crop(image, c, s, float(FAN_INPUT_SIZE)) for c, s in geometry])
        batch = torch.from_numpy(crops.transpose(0, 3, 1, 2).astype(np.float32) / UINT8_MAX).to(self.device)
        heatmaps = self._heatmaps(batch)
        if self.flip_input:
            heatmaps = heatmaps + flip(self._heatmaps(flip(batch)), is_label=True)
        centers = np.stack([c for c, _ in geometry])
        scales = np.array([s for _, s in geometry])
        return fan_decode(heatmaps.float().cpu().numpy(), centers, scales)

    def _heatmaps(self, batch: torch.Tensor) -> torch.Tensor:
        out = self.network(batch)
        out = out[-1] if isinstance(out, (list, tuple)) else out
        if out.dim() != 4 or out.shape[1] != FAN_LANDMARKS:
            raise ValueError(f"2D-FAN-4 returned {tuple(out.shape)}, expected (B, {FAN_LANDMARKS}, H, W)")
        return out


class FanKpt68Detector:
    """The original's face detection for DECA crops: S3FD's best face -> 2D-FAN-4 landmarks -> the
    ``kpt68`` box of the 68 landmarks (see :func:`square_from_box`)."""

    name = "fan"

    def __init__(self, boxes: "SfdFaceDetector", landmarker: FanLandmarker):
        self.boxes = boxes
        self.landmarker = landmarker

    def landmarks(self, image: np.ndarray) -> Optional[np.ndarray]:
        """(68, 2) landmarks of the best-scoring face, or ``None`` when no face is found."""
        image = to_rgb_uint8(image)
        found = self.boxes.detect(image)
        if not found:
            return None
        return self.landmarker(image, [max(found, key=lambda b: b.score)])[0]

    def detect(self, image: np.ndarray) -> list[FaceBox]:
        points = self.landmarks(image)
        return [] if points is None else [kpt68_box(points)]


DETECTOR_CHOICES = ("auto", "fan", "dlib", "face_alignment")   # face_alignment: old name of fan
DETECTOR_ALIASES = {"face_alignment": "fan"}


def make_detector(kind: str = "auto", device: str | torch.device = "cpu", weights=None,
                  landmarker_weights=None, trust_checkpoint: bool = False) -> FaceDetector:
    """Build a face detector.

    Args:
        kind: ``auto`` (face-alignment when its S3FD weights are present, else dlib with a
            warning), ``fan`` (face-alignment; weights required; ``face_alignment`` is an alias) or
            ``dlib``. With face-alignment, the 2D-FAN-4 landmark weights (asset
            ``face_landmarker``) switch on the original's ``kpt68`` crop; without them the S3FD box
            rule is used (with a warning).
        device: device for the S3FD / FAN networks.
        weights: explicit S3FD weights path (else the ``face_detector`` asset lookup).
        landmarker_weights: explicit 2D-FAN-4 path (else the ``face_landmarker`` asset lookup).
        trust_checkpoint: see :func:`load_fan_network`.
    """
    if kind not in DETECTOR_CHOICES:
        raise ValueError(f"detector must be one of {DETECTOR_CHOICES[:-1]} ('face_alignment' = 'fan'), "
                         f"got {kind!r}")
    kind = DETECTOR_ALIASES.get(kind, kind)
    if kind == "dlib":
        return DlibFaceDetector()
    try:
        boxes = SfdFaceDetector(weights, device)
    except AssetError:
        if kind == "fan":
            raise
        _logger.warning("face-alignment's S3FD weights (asset 'face_detector') not found; using "
                        "dlib's HOG face detector instead (frontal faces only). Run "
                        "scripts/fetch_assets.py to get them.")
        return DlibFaceDetector()
    try:
        return FanKpt68Detector(boxes, FanLandmarker(landmarker_weights, device,
                                                     trust_checkpoint=trust_checkpoint))
    except AssetError:
        if landmarker_weights not in (None, ""):
            raise
        _logger.warning("face-alignment's 2D-FAN-4 weights (asset 'face_landmarker') not found; "
                        "cropping from S3FD boxes, which differs from the original's landmark (kpt68) "
                        "crop. Run scripts/fetch_assets.py to get them.")
        return boxes


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
