"""The stages of reenactment, each usable on a whole sequence (``infer.py``) or frame by frame
(a live webcam loop):

    frame ──► :class:`FaceEncoder` (face crop 224² → DECA coarse encoder → code156, camera)
          ──► :class:`MorphMapper`  (DECA exp ⊕ jaw → 17 anime morphs in [0,1], EDTN)
          ──► pose post-processing  (:mod:`reenact.pose`: angles, relative, gain, smoothing)
          ──► :class:`AnimeRenderer` (anime generator + one source image → RGB frame)

:class:`MeshPainter` draws the DECA/FLAME reconstruction for grid outputs. Every stage takes
explicit file paths; :func:`resolve_stage_assets` finds them (config path, else the asset cache)
before any work, so a missing file stops a run at once with :class:`infra.assets.AssetError`.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional

import numpy as np
import torch

from infra.assets import resolve_asset
from infra.image_io import read_image
from infra.runtime import resolve_device
from reenact.config import InferConfig, RenderMode

__all__ = [
    "DECA_CROP_SIZE",
    "MAPPING_BATCH",
    "FaceCodes",
    "StageAssets",
    "resolve_stage_assets",
    "load_source_image",
    "FaceEncoder",
    "MorphMapper",
    "AnimeRenderer",
    "MeshPainter",
    "to_uint8",
]

log = logging.getLogger(__name__)

DECA_CROP_SIZE = 224
MAPPING_BATCH = 4096               # codes per EDTN call (the MLP is tiny)
UNIT_TO_U8 = np.float32(1.0 / 255.0)
SHAPE, EXP, POSE = slice(0, 100), slice(100, 150), slice(150, 156)   # inside code156
_COMPOSITE_MODE = {"round": "round", "truncate": "original"}        # config name -> image_io mode

OnFrames = Optional[Callable[[int], None]]   # progress hook: called with the number of new frames


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(B,3,H,W) float in [0,1] → (B,H,W,3) uint8, rounded."""
    return (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


# ============================================================================ assets
@dataclass(frozen=True)
class StageAssets:
    """Resolved files of the stages a run needs (``None``: that stage is not used)."""

    edtn: Path
    deca: Optional[Path] = None
    generator: Optional[Path] = None
    flame: Optional[Path] = None
    landmark_embedding: Optional[Path] = None


def resolve_stage_assets(cfg: InferConfig, encode_frames: bool, show_mesh: bool) -> StageAssets:
    """Find every file the configured run needs, before any work (raises ``AssetError``)."""
    render = cfg.render is RenderMode.anime
    return StageAssets(
        edtn=resolve_asset("edtn_weights", cfg.edtn_path),
        deca=resolve_asset("deca_model", cfg.deca_path) if encode_frames else None,
        generator=(resolve_asset(f"generator_{cfg.generator.value}", cfg.generator_path)
                   if render else None),
        flame=resolve_asset("flame_model", cfg.flame_path) if show_mesh else None,
        landmark_embedding=(resolve_asset("landmark_embedding", cfg.landmark_embedding_path)
                            if show_mesh else None),
    )


# ============================================================================ stage 1: faces → codes
@dataclass
class FaceCodes:
    """DECA codes of a run of frames.

    Attributes:
        code156: (T,156) float32 shape ⊕ exp ⊕ pose (zeros where no face was found).
        cam: (T,3) float32 DECA orthographic camera (s, tx, ty).
        found: (T,) bool, False where no face was found.
    """

    code156: np.ndarray
    cam: np.ndarray
    found: np.ndarray


class FaceEncoder:
    """Face crop to 224² and DECA's coarse encoder: RGB uint8 frames → DECA code156 + camera.

    Args:
        deca_path: DECA ``deca_model.tar``.
        detector: ``auto`` / ``fan`` / ``dlib`` (see :func:`deca_edit.crop.make_detector`);
            ignored when ``aligned``.
        aligned: frames are already face-centred crops (VoxCeleb style): resize, no detection.
        device: torch device of the encoder. batch_size: crops per encoder call.
        trust_checkpoint: allow a full unpickle of the weights file (only for files you created).
    """

    def __init__(self, deca_path: Path, *, detector: str = "auto", aligned: bool = False,
                 device: torch.device | str = "cpu", batch_size: int = 8,
                 trust_checkpoint: bool = False) -> None:
        from deca_edit.crop import make_detector
        from deca_edit.encoder import load_deca_checkpoint

        self.device = resolve_device(device)
        self.batch_size = batch_size
        self.encoder = load_deca_checkpoint(deca_path, device=self.device,
                                            trust_checkpoint=trust_checkpoint)
        self.detector = None if aligned else make_detector(detector, device=self.device)

    def encode(self, frames: Iterable[tuple[str, np.ndarray]], count: int,
               on_frames: OnFrames = None) -> FaceCodes:
        """Encode ``count`` named frames ``(name, RGB uint8 (H,W,3))`` in batches."""
        from deca_edit.extract import extract_codes

        def counted():
            for item in frames:
                yield item
                if on_frames is not None:
                    on_frames(1)

        result = extract_codes(counted(), self.encoder, self.detector, batch_size=self.batch_size,
                               device=self.device, progress=False)
        found = np.zeros(count, bool)
        found[result.kept] = True
        code156 = np.zeros((count, 156), np.float32)
        cam = np.zeros((count, 3), np.float32)
        if result.kept:
            code156[result.kept] = np.concatenate(
                [result.codes["shape"], result.codes["exp"], result.codes["pose"]], axis=1)
            cam[result.kept] = result.codes["cam"]
        return FaceCodes(code156, cam, found)

    @torch.inference_mode()
    def encode_frame(self, frame: np.ndarray) -> Optional[tuple[np.ndarray, np.ndarray]]:
        """One frame → ``(code156 (156,), cam (3,))`` float32, or ``None`` when there is no face."""
        from deca_edit.crop import crop_face
        from deca_edit.encoder import decompose

        crop, _ = crop_face(frame, self.detector)
        if crop is None:
            return None
        image = torch.from_numpy(crop[None]).to(self.device, torch.float32)
        codes = {k: v.float().cpu().numpy()[0] for k, v in decompose(self.encoder(image)).items()}
        return np.concatenate([codes["shape"], codes["exp"], codes["pose"]]), codes["cam"]


# ============================================================================ stage 2: codes → morphs
class MorphMapper:
    """DECA code156 → 17 anime morphs in [0,1] with EDTN (exp 50 ⊕ jaw 3 → MLP).

    Args:
        edtn_path: ``EDTN.pt`` or one of our training checkpoints. device: torch device.
        trust_checkpoint: allow a full unpickle of the weights file (only for files you created).
    """

    def __init__(self, edtn_path: Path, device: torch.device | str = "cpu",
                 trust_checkpoint: bool = False) -> None:
        from edtn.model import load_edtn

        self.device = resolve_device(device)
        self.model = load_edtn(edtn_path, device=self.device, trust_checkpoint=trust_checkpoint)

    @torch.inference_mode()
    def __call__(self, code156: np.ndarray, on_frames: OnFrames = None) -> torch.Tensor:
        """code156 (T,156) → morphs (T,17) float32 on the CPU."""
        from deca_edit.codes import edtn_input_from_code156

        inputs = torch.from_numpy(edtn_input_from_code156(np.asarray(code156, np.float32)))
        out = []
        for start in range(0, len(inputs), MAPPING_BATCH):
            chunk = inputs[start:start + MAPPING_BATCH].to(self.device)
            out.append(self.model(chunk).float().cpu())
            if on_frames is not None:
                on_frames(len(chunk))
        return torch.cat(out) if out else torch.zeros(0, 17)


# ============================================================================ stage 3: pose → frame
def load_source_image(path: str | Path, size: int, composite: str = "round") -> torch.Tensor:
    """Read the anime source image → (1,3,size,size) float32 in [0,1].

    RGBA is composited over white with rounding (``truncate``: the original's float32 ``rgba2rgb``
    with truncation), grayscale is replicated, a non-square image is padded with white to a
    centred square and then resized to ``size`` (area filter when shrinking, bicubic when
    enlarging); a ``size``² image is used as is. Pixels become ``u8 · float32(1/255)`` (the
    original's multiply).
    """
    import cv2

    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"source image not found: {path}")
    if composite not in _COMPOSITE_MODE:
        raise ValueError(f"source_composite must be one of {tuple(_COMPOSITE_MODE)}, got {composite!r}")
    img = read_image(path, composite=_COMPOSITE_MODE[composite])
    h, w = img.shape[:2]
    if h != w:
        side = max(h, w)
        canvas = np.full((side, side, 3), 255, np.uint8)
        top, left = (side - h) // 2, (side - w) // 2
        canvas[top:top + h, left:left + w] = img
        img = canvas
    if img.shape[0] != size:
        interp = cv2.INTER_AREA if img.shape[0] > size else cv2.INTER_CUBIC
        img = cv2.resize(img, (size, size), interpolation=interp)
    unit = img.astype(np.float32) * UNIT_TO_U8
    return torch.from_numpy(np.ascontiguousarray(unit.transpose(2, 0, 1)))[None]


class AnimeRenderer:
    """The anime generator animating one source image: poses (B,20) → RGB uint8 frames.

    Args:
        generator_path: generator checkpoint (the authors' Lightning ``.ckpt``, ours or bare).
        source: the anime source image file.
        style: ``default`` / ``cartoon`` (only names the asset in messages).
        use_ema: EMA weights when the checkpoint has them.
        source_composite: ``round`` / ``truncate`` (see :func:`load_source_image`).
        device: torch device.
        trust_checkpoint: allow a full unpickle of the weights file (only for files you created).
    """

    def __init__(self, generator_path: Path, source: str | Path, *, style: str = "default",
                 use_ema: bool = True, source_composite: str = "round",
                 device: torch.device | str = "cpu", trust_checkpoint: bool = False) -> None:
        from anime_generator.checkpoint import load_generator
        from anime_generator.inference import prepare_for_inference

        self.device = resolve_device(device)
        model = load_generator(generator_path, use_ema=use_ema, device=self.device,
                               asset=f"generator_{style}", trust_checkpoint=trust_checkpoint)
        self.generator = prepare_for_inference(model).eval()
        self.image_size = self.generator.config.image_size
        self.source = load_source_image(source, self.image_size, source_composite).to(self.device)

    @torch.inference_mode()
    def render(self, poses: torch.Tensor) -> np.ndarray:
        """poses (B,20) (17 morphs in [0,1] ⊕ 3 angles in degrees) → (B,S,S,3) uint8."""
        pose = poses.to(self.device, torch.float32)
        fake = self.generator(self.source.expand(len(pose), -1, -1, -1), pose, stage="gen")["fake_image"]
        return to_uint8(self.generator.to_unit(fake).float())


class MeshPainter:
    """Shaded DECA/FLAME reconstruction of a frame (grid outputs): code156 + camera → RGB panel."""

    def __init__(self, flame_path: Path, landmark_embedding_path: Path,
                 device: torch.device | str = "cpu", trust_checkpoint: bool = False) -> None:
        from deca_edit.flame import FLAME

        self.device = resolve_device(device)
        self.flame = FLAME(flame_path, landmark_embedding_path,
                           trust_checkpoint=trust_checkpoint).to(self.device)
        self.faces = self.flame.faces.cpu().numpy()

    @torch.inference_mode()
    def paint(self, code156: np.ndarray, cam: np.ndarray, size: int) -> list[np.ndarray]:
        """code156 (B,156), cam (B,3) → B RGB uint8 (size,size,3) renderings."""
        from reenact.render import render_mesh

        c = torch.from_numpy(np.asarray(code156, np.float32)).to(self.device)
        verts = self.flame(c[:, SHAPE], c[:, EXP], c[:, POSE]).vertices.cpu().numpy()
        return [render_mesh(v, self.faces, k, size) for v, k in zip(verts, cam)]
