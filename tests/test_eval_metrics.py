"""Evaluation metrics on hand-made inputs with known answers: FID (torch-fidelity), KDR, the
openness features, the 2D-FAN-4 decoding rule, and the clear errors for bad image sets."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from deca_edit.crop import fan_decode
from reenact.evaluation.metrics import (FEATURE_NAMES, anime_openness, check_image_sizes, compute_fid,
                                        human_openness, kdr, relative_features)

from helpers.eval_standins import inception_standin


@pytest.fixture(scope="module")
def inception(tmp_path_factory):
    return inception_standin(tmp_path_factory.mktemp("inception") / "weights-inception-2015-12-05-6726825d.pth")


def _folder(path, images):
    path.mkdir(parents=True, exist_ok=True)
    for k, image in enumerate(images):
        Image.fromarray(image).save(path / f"{k:03d}.png")
    return path


@pytest.fixture(scope="module")
def image_sets(tmp_path_factory):
    root = tmp_path_factory.mktemp("fid_sets")
    rng = np.random.default_rng(0)
    flat = [np.full((48, 48, 3), 30 * k, np.uint8) for k in range(6)]
    noise = [rng.integers(0, 256, (48, 48, 3), dtype=np.uint8) for _ in range(6)]
    return _folder(root / "flat", flat), _folder(root / "noise", noise), root


def test_fid_of_identical_sets_is_zero_and_different_sets_positive(image_sets, inception):
    flat, noise, _ = image_sets
    same = compute_fid(flat, flat, inception, device="cpu")
    assert same["real_images"] == same["fake_images"] == 6 and same["image_size"] == [48, 48]
    assert abs(same["fid"]) < 1e-3
    assert compute_fid(flat, noise, inception, device="cpu", feature_layer="64")["fid"] > 1.0


def test_fid_equals_torch_fidelity_with_the_same_weights_file(image_sets, inception):
    import torch_fidelity

    flat, noise, _ = image_sets
    ours = compute_fid(flat, noise, inception, device="cpu", feature_layer="192")["fid"]
    theirs = torch_fidelity.calculate_metrics(input1=str(noise), input2=str(flat), fid=True, cuda=False,
                                              feature_layer_fid="192", feature_extractor_weights_path=str(inception),
                                              cache=False, verbose=False, save_cpu_ram=True)
    assert ours == pytest.approx(theirs["frechet_inception_distance"], rel=1e-6)


def test_fid_bad_inputs_name_the_file(image_sets, inception, tmp_path):
    flat, _, root = image_sets
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match=f"fake image folder {empty} holds no images"):
        compute_fid(flat, empty, inception, device="cpu")
    odd = _folder(tmp_path / "odd", [np.zeros((48, 48, 3), np.uint8), np.zeros((40, 48, 3), np.uint8)])
    with pytest.raises(ValueError, match="odd/001.png is 48x40"):
        compute_fid(flat, odd, inception, device="cpu")
    with pytest.raises(ValueError, match="001.png is 48x40, but .*000.png is 48x48"):
        check_image_sizes(sorted(odd.iterdir()))
    with pytest.raises(FileNotFoundError, match="real image folder"):
        compute_fid(tmp_path / "nowhere", flat, inception, device="cpu")
    pickled = tmp_path / "evil.pth"
    torch.save({"Conv2d_1a_3x3.conv.weight": torch.zeros(1), "x": object()}, pickled)
    with pytest.raises(ValueError, match="evil.pth: refused to load"):
        compute_fid(flat, flat, pickled, device="cpu")


# ----------------------------------------------------------------------------- KDR
def _human_face(eye_open: float, mouth_open: float) -> np.ndarray:
    """68 points where only the KDR points matter: eye corners 36/39, 42/45 (width 10), lids
    37/41, 38/40, 43/47, 44/46 (gap eye_open), mouth corners 60/64 (width 20), 62/66 (gap)."""
    p = np.zeros((68, 2))
    for corners, lids, x0 in (((36, 39), ((37, 41), (38, 40)), 0.0), ((42, 45), ((43, 47), (44, 46)), 30.0)):
        p[corners[0]], p[corners[1]] = (x0, 0.0), (x0 + 10.0, 0.0)
        for k, (top, bottom) in enumerate(lids):
            p[top], p[bottom] = (x0 + 3 + 4 * k, -eye_open / 2), (x0 + 3 + 4 * k, eye_open / 2)
    p[60], p[64], p[62], p[66] = (0.0, 40.0), (20.0, 40.0), (10.0, 40 - mouth_open / 2), (10.0, 40 + mouth_open / 2)
    return p


def test_openness_features_known_values():
    features = human_openness(np.stack([_human_face(2.0, 5.0), _human_face(4.0, 0.0)]))
    np.testing.assert_allclose(features, [[0.2, 0.2, 0.25], [0.4, 0.4, 0.0]])
    anime = np.zeros((1, 28, 2))
    anime[0, [11, 13]] = (0, 0), (8, 0)      # upper-lid ends: width 8
    anime[0, [12, 15]] = (4, -1), (4, 1)     # middles: gap 2
    anime[0, [17, 19]] = (20, 0), (30, 0)
    anime[0, [18, 21]] = (25, 0), (25, 5)
    anime[0, [24, 26, 25, 27]] = (0, 20), (16, 20), (8, 19), (8, 23)
    np.testing.assert_allclose(anime_openness(anime), [[0.25, 0.5, 0.25]])
    assert FEATURE_NAMES == ("left_eye", "right_eye", "mouth")


def test_kdr_of_constant_sequences_is_zero_and_known_values():
    rng = np.random.default_rng(1)
    constant = np.tile(rng.random(3), (5, 1))
    other_constant = np.tile(rng.random(3), (5, 1))
    assert kdr([constant], [other_constant])["kdr"] == 0.0  # offsets cancel in f_t − f_0
    human = np.array([[0.3, 0.3, 0.1], [0.3, 0.3, 0.5], [0.1, 0.3, 0.1]])
    anime = np.array([[0.5, 0.5, 0.0], [0.5, 0.5, 0.2], [0.5, 0.5, 0.0]])
    # Δhuman = [0,0,.4], [-.2,0,0]; Δanime = [0,0,.2], [0,0,0] -> |diff| sums 0.2 + 0.2 over 2·3 values
    result = kdr([human], [anime])
    assert result["kdr"] == pytest.approx(0.4 / 6) and result["frames"] == 2
    # a driving frame without a face is left out; a missing first frame moves the reference
    gap = human.copy()
    gap[0] = np.nan
    assert kdr([gap], [anime])["frames"] == 1 and kdr([gap], [anime])["frames_skipped"] == 1
    np.testing.assert_allclose(relative_features(gap)[2], gap[2] - gap[1])
    with pytest.raises(ValueError, match="differ in length"):
        kdr([human], [anime[:2]])


def test_fan_decoding_rule_known_answers():
    """face-alignment's get_preds_fromhm: 1-based argmax, ±0.25 towards the larger neighbour inside
    (0, 63), −0.5, back through the crop, truncated (checked once against face-alignment's own
    numba function on random maps; not repeated here: its JIT compile takes ~25 s)."""
    maps = np.zeros((1, 68, 64, 64), np.float32)
    maps[0, :, 10, 20] = 1.0
    maps[0, 0, 10, 21] = 0.5   # right neighbour larger: x + 0.25
    maps[0, 1, 9, 20] = 0.5    # upper neighbour larger: y − 0.25
    maps[0, 2] = 0.0
    maps[0, 2, 0, 5] = 1.0     # border peak: no shift
    center, scale = np.array([[100.0, 120.0]]), np.array([0.64])  # side 128 px: 2 px per heatmap px
    points = fan_decode(maps, center, scale)
    origin = center[0] - 64.0
    np.testing.assert_array_equal(points[0, 0], np.trunc((np.array([21.25, 11.0]) - 0.5) * 2 + origin))
    np.testing.assert_array_equal(points[0, 1], np.trunc((np.array([21.0, 10.75]) - 0.5) * 2 + origin))
    np.testing.assert_array_equal(points[0, 2], np.trunc((np.array([6.0, 1.0]) - 0.5) * 2 + origin))
    np.testing.assert_array_equal(points[0, 5], np.trunc((np.array([21.0, 11.0]) - 0.5) * 2 + origin))
