"""Image I/O shared by every package: decode one image file, and turn any decoded image into RGB uint8.

Frames are always RGB uint8 ``(H, W, 3)`` numpy arrays: grayscale is replicated, RGBA is
composited over a background (rounded, or truncated as the original's ``rgba2rgb``) -- see
:func:`composite_rgba` and :func:`to_rgb`. The generator's data loader, the inference pipeline and
the evaluation code all read pictures through these functions.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

__all__ = ["IMAGE_EXTENSIONS", "COMPOSITE_MODES", "composite_rgba", "to_rgb", "read_image"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
WHITE = 255
UINT8_MAX = 255
# round: ours; original: skimage rgba2rgb as the reference used it; drop: alpha ignored, as DECA's
# ``imread(...)[:, :, :3]`` reads face photos
COMPOSITE_MODES = ("round", "original", "drop")


def composite_rgba(image: np.ndarray, background: Sequence[int] = (WHITE, WHITE, WHITE),
                   mode: str = "round") -> np.ndarray:
    """Composite an (H,W,4) uint8 RGBA image over a solid background; (H,W,3) passes through.

    Args:
        image: (H,W,4) or (H,W,3) uint8.
        background: RGB of the background, 0..255.
        mode: ``round`` computes ``c·a + bg·(1−a)`` in float64 and rounds to nearest.
            ``original`` reproduces skimage ``rgba2rgb`` as the reference used it: float32
            arithmetic and truncation by ``astype(uint8)``. ``drop`` ignores alpha (DECA's reading
            of face photos).

    Returns:
        (H,W,3) uint8.
    """
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] not in (3, 4):
        raise ValueError(f"composite_rgba expects (H,W,3|4) uint8, got {image.shape} {image.dtype}")
    if mode not in COMPOSITE_MODES:
        raise ValueError(f"composite mode must be one of {COMPOSITE_MODES}, got {mode!r}")
    if len(background) != 3:
        raise ValueError(f"background must have 3 values (RGB), got {list(background)}")
    if image.shape[2] == 3:
        return image
    if mode == "drop":
        return np.ascontiguousarray(image[..., :3])
    rgb, alpha = image[..., :3], image[..., 3:]
    if mode == "original":
        a = alpha.astype(np.float32) / np.float32(UINT8_MAX)
        bg = np.asarray(background, dtype=np.float32)
        out = rgb * a + (np.float32(1.0) - a) * bg
        return out.astype(np.uint8)
    a = alpha.astype(np.float64) / UINT8_MAX
    out = rgb * a + (1.0 - a) * np.asarray(background, dtype=np.float64)
    return np.clip(np.rint(out), 0, UINT8_MAX).astype(np.uint8)


def to_rgb(image: np.ndarray, where: str = "image", composite: str = "round") -> np.ndarray:
    """Any decoded image → RGB uint8 (H,W,3).

    Grayscale (H,W) or (H,W,1) is replicated, RGBA / LA is composited over white
    (:func:`composite_rgba` with mode ``composite``), 16-bit and float [0,1] images are rescaled
    to uint8.
    """
    img = np.asarray(image)
    if img.dtype == np.uint16:
        img = np.rint(img.astype(np.float64) / 257.0).astype(np.uint8)
    elif img.dtype.kind == "f":
        if not np.isfinite(img).all():
            raise ValueError(f"{where}: image contains NaN or inf")
        img = np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)
    elif img.dtype == np.bool_:
        img = img.astype(np.uint8) * 255
    elif img.dtype != np.uint8:
        raise ValueError(f"{where}: unsupported pixel type {img.dtype}")
    if img.ndim == 2:
        img = img[..., None]
    if img.ndim != 3:
        raise ValueError(f"{where}: expected an image of shape (H, W[, C]), got {img.shape}")
    channels = img.shape[-1]
    if channels == 1:
        return np.repeat(img, 3, axis=-1)
    if channels == 2:  # gray + alpha
        return composite_rgba(np.concatenate([np.repeat(img[..., :1], 3, -1), img[..., 1:]], -1),
                              mode=composite)
    if channels == 3:
        return np.ascontiguousarray(img)
    if channels == 4:
        return composite_rgba(img, mode=composite)
    raise ValueError(f"{where}: unsupported number of channels {channels}")


def read_image(path: str | os.PathLike, composite: str = "round") -> np.ndarray:
    """Read one image file as RGB uint8 (H,W,3); a clear ``ValueError`` if it cannot be decoded.

    The EXIF orientation is applied (a phone photo comes out upright), a multi-frame file gives
    its first frame, palette / gray+alpha / 16-bit images are converted, and alpha is handled by
    ``composite`` (see :func:`composite_rgba`: composited over white, or dropped).
    """
    from PIL import Image, ImageOps

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    try:
        with Image.open(path) as img:
            img = ImageOps.exif_transpose(img)
            if img.mode not in ("L", "RGB", "RGBA", "I;16"):
                img = img.convert("RGBA" if ("A" in img.mode or "transparency" in img.info) else "RGB")
            array = np.array(img)  # a writable copy (asarray of a PIL image is read-only)
    except Exception as exc:  # noqa: BLE001 - any decoder failure is a bad input file
        raise ValueError(f"cannot read image {path}: {type(exc).__name__}: {exc}") from exc
    return to_rgb(array, str(path), composite=composite)
