"""28-point anime face landmarks: hysts/anime-face-detector's HRNetV2-W18 in plain PyTorch.

The released model (asset ``anime_landmarker``, ``mmpose_anime-face_hrnetv2.pth``) is an mmpose
``TopDown`` network; its package needs mmcv-full / mmdet / mmpose, which do not install with current
torch. The inference network is rebuilt here from its public config
(``anime_face_detector/configs/mmpose/hrnetv2.py``):

* backbone: HRNetV2-W18 (stages of 1/2/3/4 branches, 18/36/72/144 channels, stage 4 multi-scale).
  ``timm.create_model('hrnet_w18', features_only=True, feature_location='')`` is that network
  with mmpose's module names (``conv1``, ``layer1``, ``transition1.0.0``, ``stage2.0.branches…``,
  ``fuse_layers…``); the config's ``upsample=dict(mode='bilinear', align_corners=False)`` is set
  on timm's fuse-layer upsampling (timm defaults to nearest);
* head (``TopdownHeatmapSimpleHead``): the four branches resized to 64² (bilinear,
  align_corners=False) and concatenated (270 channels), then Conv1×1 270→270 + BN + ReLU and a
  final Conv1×1 270→28: 28 heatmaps of 64²;
* input: 256², RGB, ImageNet mean/std normalisation; the box → crop affine of mmpose's
  ``TopDownAffine`` (box padded by 1.25, pixel std 200, ``cv2.warpAffine`` bilinear);
* test-time decoding (``test_cfg``): ``flip_test=True`` (the mirrored input's heatmaps, flipped
  back with the 28-point flip pairs and shifted one pixel right, ``shift_heatmap=True``,
  averaged), ``post_process='unbiased'`` with ``modulate_kernel=11`` (DARK: argmax, Gaussian
  modulation σ=2 keeping each map's maximum, log, one Newton step of the second-order Taylor
  expansion), then back to image pixels.

The checkpoint loads through one key-mapping function, :func:`map_checkpoint_keys`
(``backbone.*`` → ``backbone.*``, ``keypoint_head.final_layer.{0,1,3}.*`` → ``head.{0,1,3}.*``),
with a strict report of missing / unexpected / mis-shaped keys.

Generated frames are face-centred, so the whole frame is the face box
(:meth:`AnimeLandmarkDetector.__call__` with ``boxes=None``), as anime-face-detector itself does
when it is given no face detector.

Point layout (from the model's flip pairs): 0–4 face contour (2 = chin), 5–7 and 8–10 eyebrows,
11–16 and 17–22 the two eyes (three upper-lid points then three lower-lid points each; 11–16 is
the eye on the image's left), 23 nose, 24–27 mouth (24 / 26 corners, 25 upper and 27 lower
middle). KDR's anime features (:mod:`.metrics`) rely on this layout.
"""
from __future__ import annotations

import os
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from infra.assets import resolve_asset
from infra.checkpoint import format_keys, load_torch_file, state_dict_problems

__all__ = [
    "N_ANIME_LANDMARKS",
    "FLIP_PAIRS",
    "AnimeLandmarkNet",
    "map_checkpoint_keys",
    "load_anime_landmark_net",
    "box_to_center_scale",
    "decode_heatmaps",
    "AnimeLandmarkDetector",
]

N_ANIME_LANDMARKS = 28
BRANCH_CHANNELS = (18, 36, 72, 144)
HEAD_CHANNELS = sum(BRANCH_CHANNELS)  # 270
INPUT_SIZE = 256
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PIXEL_STD = 200.0          # mmpose's box scale unit
BOX_PADDING = 1.25         # mmpose _box2cs
MODULATE_KERNEL = 11       # test_cfg.modulate_kernel (DARK); sigma = 0.3·((k − 1)/2 − 1) + 0.8 = 2
LOG_FLOOR = 1e-10
# test_cfg / dataset_info of the released config: (a, b) swap under a horizontal flip.
FLIP_PAIRS = ((0, 4), (1, 3), (5, 10), (6, 9), (7, 8), (11, 19), (12, 18), (13, 17), (14, 22),
              (15, 21), (16, 20), (24, 26))
_HEAD_PREFIX_CKPT = "keypoint_head.final_layer."
_HEAD_PREFIX_OURS = "head."


class AnimeLandmarkNet(nn.Module):
    """HRNetV2-W18 + simple heatmap head: (B,3,256,256) normalised RGB → (B,28,64,64) heatmaps."""

    def __init__(self) -> None:
        super().__init__()
        import timm

        self.backbone = timm.create_model("hrnet_w18", pretrained=False, features_only=True,
                                          feature_location="", out_indices=(1, 2, 3, 4))
        for module in self.backbone.modules():  # the config's fuse upsampling: bilinear
            if isinstance(module, nn.Upsample):
                module.mode, module.align_corners = "bilinear", False
        self.head = nn.Sequential(
            nn.Conv2d(HEAD_CHANNELS, HEAD_CHANNELS, kernel_size=1),
            nn.BatchNorm2d(HEAD_CHANNELS),
            nn.ReLU(inplace=True),
            nn.Conv2d(HEAD_CHANNELS, N_ANIME_LANDMARKS, kernel_size=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = self.backbone(x)
        size = branches[0].shape[-2:]
        merged = torch.cat([branches[0]] + [F.interpolate(b, size=size, mode="bilinear", align_corners=False)
                                            for b in branches[1:]], dim=1)
        return self.head(merged)


def map_checkpoint_keys(state: dict) -> dict:
    """mmpose checkpoint keys → :class:`AnimeLandmarkNet` keys (the checkpoint's ``state_dict``
    entry or a bare state dict): ``backbone.*`` unchanged, ``keypoint_head.final_layer.*`` →
    ``head.*``; every other key is kept as is, so the strict check reports it."""
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    out = {}
    for key, value in state.items():
        if key.startswith(_HEAD_PREFIX_CKPT):
            key = _HEAD_PREFIX_OURS + key[len(_HEAD_PREFIX_CKPT):]
        out[key] = value
    return out


def load_anime_landmark_net(path: Optional[str | os.PathLike] = None,
                            device: str | torch.device = "cpu") -> AnimeLandmarkNet:
    """The released anime landmark network (asset ``anime_landmarker``), strict, in eval mode.

    Raises:
        AssetError: the file is missing. ValueError: keys do not match (every missing, unexpected
        and mis-shaped key is listed, with the file's name).
    """
    file = resolve_asset("anime_landmarker", path)
    state = map_checkpoint_keys(load_torch_file(file, map_location="cpu"))
    net = AnimeLandmarkNet()
    problems = state_dict_problems(state, net.state_dict())
    if problems:
        raise ValueError(f"{file}: not the 28-point anime face HRNetV2 of anime-face-detector "
                         f"(expected keys {format_keys(net.state_dict())}):\n  " + "\n  ".join(problems))
    net.load_state_dict(state, strict=True)
    return net.to(device).eval()


# ----------------------------------------------------------------------------- geometry
def box_to_center_scale(box: Sequence[float]) -> tuple[np.ndarray, float]:
    """mmpose's ``_box2cs`` for an xyxy box and a square input: centre and scale (box side·1.25
    in units of 200 px). The box is made square by growing its shorter side."""
    x0, y0, x1, y1 = (float(v) for v in box[:4])
    width, height = x1 - x0 + 1.0, y1 - y0 + 1.0  # mmpose's xyxy -> xywh
    center = np.array([x0 + 0.5 * width, y0 + 0.5 * height])
    side = max(width, height)
    return center, side / PIXEL_STD * BOX_PADDING


def _crop_matrix(center: np.ndarray, scale: float) -> np.ndarray:
    """(2, 3) affine image → 256² input: centre → (128, 128), 200·scale px → 256 px."""
    factor = INPUT_SIZE / (scale * PIXEL_STD)
    return np.array([[factor, 0.0, INPUT_SIZE / 2 - factor * center[0]],
                     [0.0, factor, INPUT_SIZE / 2 - factor * center[1]]])


def _gaussian_kernel(size: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    sigma = 0.3 * ((size - 1) * 0.5 - 1) + 0.8  # OpenCV's sigma for sigma=0
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    kernel = torch.exp(-x.pow(2) / (2 * sigma ** 2))
    return (kernel / kernel.sum()).to(device, dtype)


def _modulate(heatmaps: torch.Tensor, kernel: int) -> torch.Tensor:
    """DARK's Gaussian modulation: blur each map (zero border) and rescale it to its old maximum."""
    b, k, h, w = heatmaps.shape
    g = _gaussian_kernel(kernel, heatmaps.dtype, heatmaps.device)
    flat = heatmaps.reshape(b * k, 1, h, w)
    blurred = F.conv2d(F.conv2d(flat, g.view(1, 1, 1, -1), padding=(0, kernel // 2)),
                       g.view(1, 1, -1, 1), padding=(kernel // 2, 0)).reshape(b, k, h, w)
    old_max = heatmaps.amax(dim=(2, 3), keepdim=True)
    return blurred * (old_max / blurred.amax(dim=(2, 3), keepdim=True))


def decode_heatmaps(heatmaps: torch.Tensor, centers: np.ndarray, scales: np.ndarray,
                    kernel: int = MODULATE_KERNEL) -> tuple[np.ndarray, np.ndarray]:
    """mmpose's ``keypoints_from_heatmaps(post_process='unbiased')`` for heatmaps (B,K,H,W).

    Returns:
        points (B, K, 2) float32 in image pixels and scores (B, K) float32 (heatmap maxima).
    """
    heatmaps = heatmaps.double()
    b, k, h, w = heatmaps.shape
    flat = heatmaps.reshape(b, k, -1)
    scores, index = flat.max(dim=2)
    px, py = (index % w).double(), (index // w).double()
    valid = scores > 0
    px, py = torch.where(valid, px, -1.0), torch.where(valid, py, -1.0)
    logmap = torch.log(_modulate(heatmaps, kernel).clamp(min=LOG_FLOOR))
    ix, iy = px.long(), py.long()
    inside = (ix > 1) & (ix < w - 2) & (iy > 1) & (iy < h - 2)
    ixc, iyc = ix.clamp(2, w - 3), iy.clamp(2, h - 3)

    def at(dy: int, dx: int) -> torch.Tensor:
        return logmap.reshape(b, k, -1).gather(2, ((iyc + dy) * w + ixc + dx).unsqueeze(2)).squeeze(2)

    dx = 0.5 * (at(0, 1) - at(0, -1))
    dy = 0.5 * (at(1, 0) - at(-1, 0))
    dxx = 0.25 * (at(0, 2) - 2 * at(0, 0) + at(0, -2))
    dxy = 0.25 * (at(1, 1) - at(-1, 1) - at(1, -1) + at(-1, -1))
    dyy = 0.25 * (at(2, 0) - 2 * at(0, 0) + at(-2, 0))
    det = dxx * dyy - dxy ** 2
    use = inside & (det != 0)
    safe = torch.where(use, det, torch.ones_like(det))
    # offset = −H⁻¹ g with H = [[dxx, dxy], [dxy, dyy]]
    off_x = -(dyy * dx - dxy * dy) / safe
    off_y = -(-dxy * dx + dxx * dy) / safe
    px = torch.where(use, px + off_x, px)
    py = torch.where(use, py + off_y, py)
    side = torch.from_numpy(np.asarray(scales, np.float64) * PIXEL_STD).to(heatmaps.device).view(b, 1)
    center = torch.from_numpy(np.asarray(centers, np.float64)).to(heatmaps.device).view(b, 1, 2)
    x = px * side / w + center[..., 0] - side * 0.5
    y = py * side / h + center[..., 1] - side * 0.5
    points = torch.stack((x, y), dim=2)
    return points.float().cpu().numpy(), scores.float().cpu().numpy()


class AnimeLandmarkDetector:
    """Anime face landmarks of RGB frames: the released network, flip test and DARK decoding.

    Args:
        path: the checkpoint (asset ``anime_landmarker``); or pass ``net``.
        device: where the network runs. flip_test: the config's test-time flip.
        batch_size: frames per network call.
        net: an already built :class:`AnimeLandmarkNet` (tests: filled weights).
    """

    def __init__(self, path: Optional[str | os.PathLike] = None, device: str | torch.device = "cpu",
                 flip_test: bool = True, batch_size: int = 32, net: Optional[AnimeLandmarkNet] = None) -> None:
        self.device = torch.device(device)
        self.net = (net if net is not None else load_anime_landmark_net(path, self.device)).to(self.device).eval()
        self.flip_test = flip_test
        self.batch_size = int(batch_size)
        swap = list(range(N_ANIME_LANDMARKS))
        for a, b in FLIP_PAIRS:
            swap[a], swap[b] = b, a
        self._swap = torch.tensor(swap, device=self.device)
        self._mean = torch.tensor(IMAGENET_MEAN, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(IMAGENET_STD, device=self.device).view(1, 3, 1, 1)

    @torch.no_grad()
    def heatmaps(self, batch: torch.Tensor) -> torch.Tensor:
        """Normalised inputs (B,3,256,256) → heatmaps (B,28,64,64), flip test included."""
        out = self.net(batch)
        if self.flip_test:
            flipped = self.net(batch.flip(3)).flip(3)[:, self._swap]
            flipped[..., 1:] = flipped[..., :-1].clone()  # shift_heatmap: features are not aligned
            out = (out + flipped) * 0.5
        return out

    def __call__(self, images: Sequence[np.ndarray],
                 boxes: Optional[Sequence[Sequence[float]]] = None) -> tuple[np.ndarray, np.ndarray]:
        """Landmarks of RGB uint8 images (H,W,3).

        Args:
            images: the frames. boxes: one xyxy face box per image; ``None`` = the whole frame
                (generated frames are face-centred).
        Returns:
            points (N, 28, 2) float32 in image pixels, scores (N, 28).
        """
        import cv2

        points, scores = [], []
        for start in range(0, len(images), self.batch_size):
            chunk = images[start:start + self.batch_size]
            centers, scales, crops = [], [], []
            for k, image in enumerate(chunk):
                h, w = image.shape[:2]
                box = boxes[start + k] if boxes is not None else (0.0, 0.0, w - 1.0, h - 1.0)
                center, scale = box_to_center_scale(box)
                crops.append(cv2.warpAffine(np.ascontiguousarray(image), _crop_matrix(center, scale),
                                            (INPUT_SIZE, INPUT_SIZE), flags=cv2.INTER_LINEAR))
                centers.append(center)
                scales.append(scale)
            batch = torch.from_numpy(np.stack(crops)).to(self.device).permute(0, 3, 1, 2).float() / 255.0
            maps = self.heatmaps((batch - self._mean) / self._std)
            p, s = decode_heatmaps(maps, np.stack(centers), np.asarray(scales))
            points.append(p)
            scores.append(s)
        if not points:
            return np.zeros((0, N_ANIME_LANDMARKS, 2), np.float32), np.zeros((0, N_ANIME_LANDMARKS), np.float32)
        return np.concatenate(points), np.concatenate(scores)
