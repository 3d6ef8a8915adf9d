"""Face crops and code extraction: aligned parity, dlib path, sharding, inputs, error reporting."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from deca_edit.codes import PackedCodes, read_code_mat
from deca_edit.crop import (DlibFaceDetector, FaceBox, SfdFaceDetector, crop_face, crop_square, make_detector,
                            square_from_box, to_rgb_uint8)
from deca_edit.encoder import DecaEncoder
from deca_edit.extract import extract_codes, iter_video_frames, plan_jobs, read_image, run_extraction
from infra.assets import AssetError
from helpers.weight_fill import fill_module

REPO = Path(__file__).resolve().parents[1]
VOX_FRAMES = ("0000000", "0000100", "0000200", "0000300")
NO_FACE_PHOTO = "image03786"      # the one photo of deca/faces where dlib's HOG finds no face
VIDEO_FRAMES = 4


class TinyEncoder(nn.Module):
    """Cheap stand-in with the encoder's contract (B,3,224,224) -> (B,236), for I/O-only tests."""

    def __init__(self):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(12, 236)

    def forward(self, x):
        return self.fc(self.pool(x).flatten(1))


@pytest.fixture(scope="module")
def filled_encoder():
    return fill_module(DecaEncoder(), "splitmix").eval()


@pytest.fixture(scope="module")
def dlib_detector():
    return DlibFaceDetector()


@pytest.fixture(scope="module")
def faces(deca_dir):
    return deca_dir / "faces"


@pytest.fixture(scope="module")
def video(authors_dir):
    return authors_dir / "example.mp4"


def test_aligned_extraction_reproduces_reference_codes(filled_encoder, authors_dir, flame_deca_kit):
    vectors = np.load(flame_deca_kit / "deca_encoder_vectors.npz")
    frames = [(f, read_image(authors_dir / "vox_images" / f"{f}.png")) for f in VOX_FRAMES]
    result = extract_codes(frames, filled_encoder, detector=None, batch_size=4, progress=False)
    assert result.kept == [0, 1, 2, 3] and result.missing == [] and result.names == list(VOX_FRAMES)
    for key, value in result.codes.items():
        np.testing.assert_allclose(value, vectors[f"code_{key}"], rtol=0, atol=1e-5, err_msg=key)


def test_crop_square_matches_skimage_similarity_warp(faces):
    from skimage.transform import estimate_transform, warp

    image = read_image(faces / "alfw1.png")
    cx, cy, side = 80.3, 120.7, 190.2  # partly outside the image: zero padding
    src = np.array([[cx - side / 2, cy - side / 2], [cx - side / 2, cy + side / 2], [cx + side / 2, cy - side / 2]])
    dst = np.array([[0, 0], [0, 223], [223, 0]])
    tform = estimate_transform("similarity", src, dst)
    expected = warp(image / 255.0, tform.inverse, output_shape=(224, 224)).transpose(2, 0, 1)
    np.testing.assert_allclose(crop_square(image, (cx, cy), side), expected, rtol=0, atol=1e-6)
    assert square_from_box(FaceBox(10, 20, 110, 140, center_shift=0.12)) == (60.0, 80.0 + 0.12 * 110, 1.25 * 110)


def test_gray_and_rgba_inputs(faces, dlib_detector):
    rgb = read_image(faces / "IMG_0392_inputs.jpg")
    gray = rgb.mean(axis=2).round().astype(np.uint8)
    crop_gray, box = crop_face(gray, dlib_detector)
    crop_expected, _ = crop_face(np.repeat(gray[..., None], 3, axis=2), dlib_detector)
    assert crop_gray.shape == (3, 224, 224) and box is not None
    np.testing.assert_array_equal(crop_gray, crop_expected)
    rgba = np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 7, np.uint8)], axis=2)
    np.testing.assert_array_equal(crop_face(rgba, dlib_detector)[0], crop_face(rgb, dlib_detector)[0])
    assert to_rgb_uint8(np.ones((4, 5), np.float32)).max() == 255
    gray_alpha = np.stack([np.full((4, 5), 9, np.uint8), np.zeros((4, 5), np.uint8)], -1)
    assert (to_rgb_uint8(gray_alpha) == 9).all()                 # alpha ignored, as DECA reads photos
    with pytest.raises(ValueError, match="channels"):
        to_rgb_uint8(np.zeros((4, 5, 5), np.uint8))
    with pytest.raises(ValueError, match="NaN"):
        to_rgb_uint8(np.full((4, 5, 3), np.nan, np.float32))


def test_extract_video_and_photos_with_dlib(filled_encoder, dlib_detector, faces, video, tmp_path):
    report = run_extraction([faces, video], tmp_path / "codes", filled_encoder, dlib_detector,
                            batch_size=8, max_frames=VIDEO_FRAMES, progress=False)
    photos = sorted(p.stem for p in faces.iterdir())
    written = sorted(p.stem for p in (tmp_path / "codes").glob("*.mat"))
    assert written == [p for p in photos if p != NO_FACE_PHOTO] and len(written) == 8
    frames = sorted(p.stem for p in (tmp_path / "codes" / "example.mp4").glob("*.mat"))
    assert frames == [f"{i:07d}" for i in range(VIDEO_FRAMES)]
    assert report["frames_written"] == 12 and report["failed"] == []
    assert [m["source"] for m in report["missing"]] == [str(faces / f"{NO_FACE_PHOTO}.png")]
    assert json.loads((tmp_path / "codes" / "extract_report.json").read_text()) == report
    # the stored codes are the encoder's outputs on the detected crops
    crop, _ = crop_face(read_image(faces / "alfw2.png"), dlib_detector)
    with torch.no_grad():
        params = filled_encoder(torch.from_numpy(crop)[None])[0].numpy()
    codes = read_code_mat(tmp_path / "codes" / "alfw2.mat")
    np.testing.assert_allclose(codes["exp"][0], params[150:200], rtol=0, atol=1e-5)
    np.testing.assert_allclose(codes["light"].ravel(), params[209:], rtol=0, atol=1e-5)
    assert "detail" not in codes


def test_shards_cover_every_input_once(faces, video, tmp_path):
    everything = plan_jobs([faces, video])
    assert len(everything) == 10
    parts = [plan_jobs([faces, video], f"{i}/3") for i in range(3)]
    assert sorted(j.source for p in parts for j in p) == sorted(j.source for j in everything)
    assert plan_jobs([video, faces]) == everything  # order of the inputs does not matter

    encoder = TinyEncoder().eval()
    detector = DlibFaceDetector()
    outputs = []
    for i in range(2):
        run_extraction([faces, video], tmp_path / "shards", encoder, detector, shard=f"{i}/2",
                       max_frames=2, progress=False)
        outputs.append(json.loads((tmp_path / "shards" / f"extract_report.shard-{i}-of-2.json").read_text()))
    assert sum(r["jobs"] for r in outputs) == 10 and sum(r["frames_written"] for r in outputs) == 8 + 2
    assert sum(len(r["missing"]) for r in outputs) == 1
    assert len(list((tmp_path / "shards").rglob("*.mat"))) == 10
    with pytest.raises(ValueError, match="0 <= i < n"):
        plan_jobs([faces], "3/2")


def test_single_image_folder_and_packed_output(faces, tmp_path):
    encoder = TinyEncoder().eval()
    single = extract_codes(faces / "alfw1.png", encoder, DlibFaceDetector(), progress=False)
    assert single.names == ["alfw1"] and single.codes["light"].shape == (1, 9, 3)
    folder = extract_codes(faces, encoder, DlibFaceDetector(), batch_size=3, progress=False)
    assert len(folder) == 8 and folder.missing_names == [NO_FACE_PHOTO]
    np.testing.assert_allclose(folder.codes["shape"][folder.names.index("alfw1")], single.codes["shape"][0],
                               rtol=0, atol=1e-6)
    run_extraction([faces / "alfw1.png", faces / "alfw2.png"], tmp_path / "out", encoder, DlibFaceDetector(),
                   packed=tmp_path / "packed" / "photos", progress=False)
    packed = PackedCodes(tmp_path / "packed" / "photos")
    assert packed.video_names == ["."] and packed.videos[0].frames == ("alfw1", "alfw2")
    np.testing.assert_allclose(packed.column("light")[0], single.codes["light"][0], rtol=0, atol=1e-6)


def test_unreadable_video_gives_clear_error(tmp_path):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"\x00\x01not a video" * 100)
    with pytest.raises(ValueError, match="broken.mp4"):
        next(iter_video_frames(bad))
    with pytest.raises(FileNotFoundError, match="missing.mp4"):
        next(iter_video_frames(tmp_path / "missing.mp4"))
    report = run_extraction([bad], tmp_path / "out", TinyEncoder(), None, progress=False)
    assert report["frames_written"] == 0 and report["failed"][0]["source"] == str(bad)
    assert "broken.mp4" in report["failed"][0]["error"]


def test_detector_choice_never_downloads(tmp_path, monkeypatch, caplog):
    for name in ("fan", "face_alignment"):          # fan: the documented name; the old one still works
        with pytest.raises(AssetError, match="s3fd"):
            make_detector(name)
    with caplog.at_level("WARNING", logger="deca_edit.crop"):
        assert isinstance(make_detector("auto"), DlibFaceDetector)
    # one plain log line (no file:line / source line as warnings.warn printed)
    assert [r.getMessage() for r in caplog.records if "dlib" in r.getMessage()]
    # with (here random) S3FD weights in the asset home, face-alignment's detector is used
    from face_alignment.detection.sfd.net_s3fd import s3fd

    home = tmp_path / "home"
    home.mkdir()
    torch.save(s3fd().state_dict(), home / "s3fd-619a316812.pth")
    monkeypatch.setenv("EDTN_HOME", str(home))
    detector = make_detector("auto")
    assert isinstance(detector, SfdFaceDetector)
    assert isinstance(detector.detect(np.zeros((64, 64, 3), np.uint8)), list)


def test_cli_single_image_and_bad_video(faces, tmp_path, monkeypatch, capsys):
    spec = importlib.util.spec_from_file_location("extract_deca", REPO / "scripts" / "extract_deca.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    assert cli.main([str(faces / "alfw1.png"), "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    assert "deca_model.tar" in capsys.readouterr().err
    torch.save({"E_flame": DecaEncoder().state_dict()}, tmp_path / "deca_model.tar")
    monkeypatch.setenv("EDTN_HOME", str(tmp_path))
    assert cli.main([str(faces / "alfw1.png"), "--out", str(tmp_path / "o"), "--device", "cpu",
                     "--detector", "dlib", "--no-progress"]) == 0
    assert read_code_mat(tmp_path / "o" / "alfw1.mat")["shape"].shape == (1, 100)
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"junk" * 100)
    assert cli.main([str(bad), "--out", str(tmp_path / "o2"), "--no-detect", "--no-progress"]) == 1
    assert "broken.mp4" in capsys.readouterr().err
