"""The original's DECA crop from 2D-FAN-4 landmarks (kpt68), the FAN loader and the detector names.

The reference is DECA's ``TestData`` formula evaluated with skimage (``estimate_transform`` +
``warp``) on the kit's photos, from landmark arrays generated here (no weights needed).
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from deca_edit.crop import (CROP_SIZE, DlibFaceDetector, FanKpt68Detector, FanLandmarker, FaceBox,
                            SfdFaceDetector, crop_face, kpt68_box, load_fan_network, make_detector,
                            similarity_matrix, square_from_box)
from infra.assets import AssetError
from infra.image_io import read_image

DST_PTS = np.array([[0, 0], [0, CROP_SIZE - 1], [CROP_SIZE - 1, 0]])


def deca_kpt68_reference(image: np.ndarray, landmarks: np.ndarray):
    """DECA TestData.__getitem__ with bbox_type 'kpt68', scale 1.25, resolution 224."""
    from skimage.transform import estimate_transform, warp

    left, right = np.min(landmarks[:, 0]), np.max(landmarks[:, 0])
    top, bottom = np.min(landmarks[:, 1]), np.max(landmarks[:, 1])
    old_size = (right - left + bottom - top) / 2 * 1.1
    center = np.array([right - (right - left) / 2.0, bottom - (bottom - top) / 2.0])
    size = int(old_size * 1.25)
    src_pts = np.array([[center[0] - size / 2, center[1] - size / 2],
                        [center[0] - size / 2, center[1] + size / 2],
                        [center[0] + size / 2, center[1] - size / 2]])
    tform = estimate_transform("similarity", src_pts, DST_PTS)
    crop = warp(image / 255.0, tform.inverse, output_shape=(CROP_SIZE, CROP_SIZE))
    return tform.params, crop.transpose(2, 0, 1)


class GivenLandmarks:
    """A detector stand-in that returns the kpt68 box of fixed landmarks."""

    name = "given"

    def __init__(self, landmarks):
        self.landmarks = landmarks

    def detect(self, image):
        return [kpt68_box(self.landmarks)]


def _landmark_sets(shape, rng):
    """Three 68-point sets per photo: centred, off-centre, and partly outside the image."""
    h, w = shape[:2]
    sets = []
    for cx, cy, radius in ((w / 2, h / 2, 0.3 * w), (0.35 * w, 0.6 * h, 0.25 * w), (0.1 * w, 0.9 * h, 0.4 * w)):
        angles = rng.uniform(0, 2 * np.pi, 68)
        radii = radius * np.sqrt(rng.uniform(0.05, 1.0, 68))
        sets.append(np.stack([cx + radii * np.cos(angles), cy + 1.2 * radii * np.sin(angles)], axis=1))
    return sets


def test_kpt68_crop_matches_deca_formula_with_skimage(deca_dir):
    photos = sorted((deca_dir / "faces").iterdir())
    assert len(photos) >= 9
    rng = np.random.default_rng(68)
    for photo in photos:
        image = read_image(photo)
        for landmarks in _landmark_sets(image.shape, rng):
            expected_matrix, expected_crop = deca_kpt68_reference(image, landmarks)
            cx, cy, side = square_from_box(kpt68_box(landmarks))
            np.testing.assert_allclose(similarity_matrix((cx, cy), side), expected_matrix, rtol=0, atol=1e-6)
            crop, box = crop_face(image, GivenLandmarks(landmarks))
            assert box.kind == "kpt68" and crop.shape == (3, CROP_SIZE, CROP_SIZE)
            np.testing.assert_allclose(crop, expected_crop, rtol=0, atol=1e-6, err_msg=photo.name)


def test_kpt68_rule_differs_from_the_bbox_rule():
    box = FaceBox(10.0, 20.0, 110.0, 140.0, kind="kpt68")
    cx, cy, side = square_from_box(box)
    assert (cx, cy) == (60.0, 80.0) and side == float(int(110 * 1.1 * 1.25))
    assert square_from_box(FaceBox(10.0, 20.0, 110.0, 140.0, center_shift=0.12))[1] != cy
    with pytest.raises(ValueError, match="kind"):
        square_from_box(FaceBox(0, 0, 1, 1, kind="oval"))
    with pytest.raises(ValueError, match="finite"):
        kpt68_box(np.full((68, 2), np.nan))


# ----------------------------------------------------------------------------- 2D-FAN-4 loader
HEATMAP = 64


class PeakNetwork(torch.nn.Module):
    """Stand-in 2D-FAN-4 (TorchScript): the same heatmaps for every input, landmark j peaking at
    a known heatmap pixel."""

    def __init__(self, peaks: torch.Tensor):
        super().__init__()
        heatmaps = torch.zeros(1, 68, HEATMAP, HEATMAP)
        for j, (x, y) in enumerate(peaks.tolist()):
            heatmaps[0, j, int(y), int(x)] = 1.0
        self.register_buffer("heatmaps", heatmaps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.heatmaps.expand(x.shape[0], -1, -1, -1) + 0.0 * x.mean()


@pytest.fixture()
def fan_standin(tmp_path):
    rng = np.random.default_rng(4)
    peaks = torch.from_numpy(rng.integers(8, 56, size=(68, 2)))
    path = tmp_path / "2DFAN4-11f355bf06.pth.tar"
    with warnings.catch_warnings():  # torch 2.x marks jit.script deprecated; the release is TorchScript
        warnings.filterwarnings("ignore", category=FutureWarning)
        torch.jit.script(PeakNetwork(peaks)).save(str(path))
    return path, peaks.numpy()


def test_fan_landmarker_decodes_with_face_alignment_geometry(fan_standin, deca_dir):
    path, peaks = fan_standin
    with pytest.raises(ValueError, match="not face-alignment's released 2D-FAN-4.*trust_checkpoint=true"):
        FanLandmarker(path)                       # TorchScript runs its stored program: verified only
    landmarker = FanLandmarker(path, trust_checkpoint=True)
    image = read_image(deca_dir / "faces" / "alfw1.png")
    box = FaceBox(40.0, 30.0, 180.0, 200.0)
    points = landmarker(image, [box])
    assert points.shape == (1, 68, 2)
    # face-alignment: centre moved up 0.12·h, crop side 200·(w + h)/195, heatmap pixel p -> p + 0.5
    # (no ±0.25 shift for an isolated peak), mapped back to the image and truncated to int.
    width, height = box.x1 - box.x0, box.y1 - box.y0
    center = np.array([box.x1 - width / 2, box.y1 - height / 2 - 0.12 * height])
    side = 200.0 * (width + height) / 195.0
    expected = np.trunc((peaks + 0.5) * side / HEATMAP + center - side / 2)
    np.testing.assert_allclose(points[0], expected, atol=1.0 + 1e-6)  # int32 round-trip of face-alignment
    kpt = FanKpt68Detector(_FixedBoxes([box]), landmarker)
    assert kpt.detect(image) == [kpt68_box(points[0])]
    assert FanKpt68Detector(_FixedBoxes([]), landmarker).detect(image) == []


class _FixedBoxes:
    def __init__(self, boxes):
        self.boxes = boxes

    def detect(self, image):
        return list(self.boxes)


def test_fan_loader_errors(tmp_path):
    with pytest.raises(AssetError, match="2DFAN4-11f355bf06.pth.tar"):
        load_fan_network()
    bad = tmp_path / "fan.pth"
    torch.save({"conv.weight": torch.zeros(3)}, bad)
    with pytest.raises(ValueError, match="fan.pth: not a 2D-FAN-4"):
        load_fan_network(bad)


def test_detector_names_fan_alias_and_fallbacks(tmp_path, monkeypatch, fan_standin, caplog):
    for name in ("fan", "face_alignment"):
        with pytest.raises(AssetError, match="s3fd"):
            make_detector(name)
    with pytest.raises(ValueError, match="detector must be one of"):
        make_detector("haar")
    assert isinstance(make_detector("dlib"), DlibFaceDetector)
    from face_alignment.detection.sfd.net_s3fd import s3fd

    home = tmp_path / "home"
    home.mkdir()
    torch.save(s3fd().state_dict(), home / "s3fd-619a316812.pth")
    monkeypatch.setenv("EDTN_HOME", str(home))
    with caplog.at_level("WARNING", logger="deca_edit.crop"):
        assert isinstance(make_detector("fan"), SfdFaceDetector)
    assert any("kpt68" in r.getMessage() for r in caplog.records)
    fan_path, _ = fan_standin
    (home / fan_path.name).write_bytes(fan_path.read_bytes())
    for name in ("auto", "fan", "face_alignment"):
        assert isinstance(make_detector(name, trust_checkpoint=True), FanKpt68Detector)
    with pytest.raises(ValueError, match="sha256"):   # a stand-in is not the verified release
        make_detector("fan")
