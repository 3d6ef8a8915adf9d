"""The anime face landmark port (reenact.evaluation.anime_landmarks): network layout on timm's
hrnet_w18, checkpoint key mapping with a strict report, mmpose's box geometry, flip test and
DARK decoding on hand-made heatmaps."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from infra.assets import AssetError, check_asset
from reenact.evaluation.anime_landmarks import (FLIP_PAIRS, N_ANIME_LANDMARKS, AnimeLandmarkDetector,
                                                AnimeLandmarkNet, box_to_center_scale, decode_heatmaps,
                                                load_anime_landmark_net, map_checkpoint_keys)

from helpers.eval_standins import anime_landmarker_checkpoint


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return anime_landmarker_checkpoint(tmp_path_factory.mktemp("anime") / "mmpose_anime-face_hrnetv2.pth")


@pytest.fixture(scope="module")
def net(checkpoint):
    return load_anime_landmark_net(checkpoint)


def test_network_layout_branches_and_heatmaps(net):
    branches = net.backbone(torch.zeros(1, 3, 256, 256))
    assert [tuple(b.shape[1:]) for b in branches] == [(18, 64, 64), (36, 32, 32), (72, 16, 16), (144, 8, 8)]
    upsamples = [m for m in net.backbone.modules() if isinstance(m, torch.nn.Upsample)]
    assert upsamples and all(m.mode == "bilinear" and m.align_corners is False for m in upsamples)
    assert tuple(net(torch.zeros(2, 3, 256, 256)).shape) == (2, N_ANIME_LANDMARKS, 64, 64)
    keys = net.state_dict()
    assert "backbone.transition1.0.0.weight" in keys and "backbone.stage2.0.branches.0.0.conv1.weight" in keys
    assert "backbone.stage4.2.fuse_layers.3.0.0.0.weight" in keys
    assert tuple(keys["head.3.weight"].shape) == (28, 270, 1, 1)


def test_checkpoint_keys_map_strictly_and_problems_are_listed(checkpoint, tmp_path):
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    mapped = map_checkpoint_keys(state)
    assert set(mapped) == set(AnimeLandmarkNet().state_dict())
    assert check_asset("anime_landmarker", checkpoint).ok
    broken = dict(state["state_dict"])
    broken.pop("backbone.conv1.weight")
    broken["keypoint_head.extra.weight"] = torch.zeros(1)
    bad = tmp_path / "bad.pth"
    torch.save({"state_dict": broken}, bad)
    with pytest.raises(ValueError) as info:
        load_anime_landmark_net(bad)
    message = str(info.value)
    assert "bad.pth" in message and "1 missing keys: backbone.conv1.weight" in message
    assert "1 unexpected keys: keypoint_head.extra.weight" in message
    with pytest.raises(AssetError, match="mmpose_anime-face_hrnetv2.pth"):
        load_anime_landmark_net()


def test_box_geometry_is_mmpose_box2cs():
    center, scale = box_to_center_scale((0, 0, 255, 255))  # a 256² frame as the box
    np.testing.assert_allclose(center, [128.0, 128.0])
    assert scale == pytest.approx(256 / 200 * 1.25)
    center, scale = box_to_center_scale((10, 20, 109, 69))  # 100 x 50: squared on the long side
    np.testing.assert_allclose(center, [60.0, 45.0])
    assert scale == pytest.approx(100 / 200 * 1.25)


def _gaussian_maps(points, size=64, sigma=2.0):
    yy, xx = np.mgrid[0:size, 0:size]
    return np.stack([np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma ** 2)) for x, y in points])


def test_dark_decoding_recovers_subpixel_peaks():
    rng = np.random.default_rng(2)
    truth = rng.uniform(8, 56, size=(N_ANIME_LANDMARKS, 2))
    maps = torch.from_numpy(_gaussian_maps(truth))[None].float()
    center, scale = np.array([[128.0, 128.0]]), np.array([256 / 200 * 1.25])
    points, scores = decode_heatmaps(maps, center, scale)
    side = scale[0] * 200
    expected = truth * side / 64 + center[0] - side / 2
    assert np.abs(points[0] - expected).max() < 0.1 * side / 64  # DARK: < 0.1 heatmap px
    argmax_error = np.abs(np.round(truth) * side / 64 + center[0] - side / 2 - expected).max()
    assert np.abs(points[0] - expected).max() < argmax_error
    assert scores.shape == (1, N_ANIME_LANDMARKS) and (scores > 0.8).all()


class _PoolNet(torch.nn.Module):
    """Stand-in network: heatmap k = (k + 1) · input channel 0 sampled every 4th pixel."""

    def forward(self, x):
        return x[:, :1, ::4, ::4] * torch.arange(1, N_ANIME_LANDMARKS + 1, dtype=x.dtype).view(1, -1, 1, 1)


def test_flip_test_averages_the_flipped_back_swapped_and_shifted_heatmaps():
    """mmpose's flip test: heatmaps of the mirrored input, flipped back, left/right points swapped
    (FLIP_PAIRS), shifted one pixel right (shift_heatmap), averaged with the plain heatmaps."""
    rng = np.random.default_rng(3)
    x = torch.from_numpy(rng.random((1, 3, 256, 256)).astype(np.float32))
    maps = AnimeLandmarkDetector(net=_PoolNet(), flip_test=True).heatmaps(x)[0].numpy()
    image = x[0, 0].numpy()
    swap = list(range(N_ANIME_LANDMARKS))
    for a, b in FLIP_PAIRS:
        swap[a], swap[b] = b, a
    flipped_back = image[::4, 3::4]              # flip(P(flip(x)))[u, v] = x[4u, 4v + 3]
    shifted = np.concatenate([flipped_back[:, :1], flipped_back[:, :-1]], axis=1)
    for k in range(N_ANIME_LANDMARKS):
        expected = 0.5 * ((k + 1) * image[::4, ::4] + (swap[k] + 1) * shifted)
        np.testing.assert_allclose(maps[k], expected, rtol=1e-6, atol=1e-6, err_msg=f"point {k}")
    assert swap[11] == 19 and swap[2] == 2 and swap[24] == 26


def test_detector_on_frames_with_the_released_layout(net):
    rng = np.random.default_rng(4)
    frames = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(3)]
    points, scores = AnimeLandmarkDetector(net=net, batch_size=2)(frames)
    assert points.shape == (3, N_ANIME_LANDMARKS, 2) and scores.shape == (3, N_ANIME_LANDMARKS)
    assert np.isfinite(points).all()
