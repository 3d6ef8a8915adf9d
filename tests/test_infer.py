"""infer.py / reenact.pipeline end to end, against the authors' files and the conformance kit.

The generator and the DECA encoder carry the kit's deterministic fills (no released weights are
needed); EDTN is the authors' ``EDTN.pt``. Poses are recomputed here independently (a hand-written
MLP forward on the ``.mat`` codes and SPEC §1's angle rule) and compared with the exported ones.
The generator costs about a second per 256² frame on CPU, so only a few frames are rendered.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from infra.assets import AssetError
from infra.files import OWNER_SUFFIX
from reenact.driving import hold_missing
from reenact.pipeline import ReenactmentPipeline, run
from reenact.stages import load_source_image
from reenact.pose import POSE_COLUMNS

REPO = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO / "configs"
N_CODE_FRAMES = 8
N_VIDEO_FRAMES = 4


# ----------------------------------------------------------------------------- helpers
def make_cfg(**overrides):
    """Compose configs/infer.yaml with key=value overrides (None -> null), CPU, no progress bars."""
    values = {"device": "cpu", "progress": False, **overrides}
    args = [f"{k}={'null' if v is None else v}" for k, v in values.items()]
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR), job_name="test_infer"):
        return compose(config_name="infer", overrides=args)


def reference_poses(mat_files, edtn_path):
    """Independent pose computation: EDTN.pt MLP by hand + angles = pose[[0,2,1]]·180/π."""
    from scipy.io import loadmat

    sd = torch.load(edtn_path, map_location="cpu", weights_only=True)
    mats = [loadmat(str(f)) for f in mat_files]
    exp = np.concatenate([m["exp"] for m in mats]).astype(np.float32)
    pose6 = np.concatenate([m["pose"] for m in mats]).astype(np.float32)
    h = torch.from_numpy(np.concatenate([exp, pose6[:, 3:]], 1))
    for i in (0, 2, 4):
        h = torch.nn.functional.leaky_relu(h @ sd[f"main.{i}.weight"].T + sd[f"main.{i}.bias"], 0.2)
    morphs = torch.sigmoid(h @ sd["main.6.weight"].T + sd["main.6.bias"]).numpy()
    angles = pose6[:, [0, 2, 1]] * 180 / np.pi
    return morphs, angles


def gif_info(path):
    from PIL import Image

    with Image.open(path) as gif:
        return gif.n_frames, gif.size, gif.info["duration"]


def _listing(folder):
    """Names in ``folder``, without the ownership markers of our outputs (tests/test_trust.py)."""
    return sorted(p.name for p in Path(folder).iterdir() if not p.name.endswith(OWNER_SUFFIX))


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def assets_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("infer_assets")


@pytest.fixture(scope="module")
def generator_path(assets_dir):
    """A filled AnimeGenerator (kit sine rule) saved as a plain state dict."""
    from anime_generator.model import AnimeGenerator
    from helpers.weight_fill import fill_module

    model = fill_module(AnimeGenerator(), "sine")
    path = assets_dir / "generator_filled.pt"
    torch.save(model.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def deca_tar(assets_dir):
    """A filled DECA encoder (kit splitmix rule) saved in the official deca_model.tar layout."""
    from deca_edit.encoder import DETAIL_DIM, DecaEncoder
    from helpers.weight_fill import fill_module

    path = assets_dir / "deca_model.tar"
    torch.save({"E_flame": fill_module(DecaEncoder(), "splitmix").state_dict(),
                "E_detail": fill_module(DecaEncoder(DETAIL_DIM), "splitmix").state_dict()}, path)
    return path


@pytest.fixture(scope="module")
def codes_dir(authors_dir, tmp_path_factory):
    """The first 8 authors' DECA code files, copied."""
    folder = tmp_path_factory.mktemp("vox_codes") / "vox_deca"
    folder.mkdir()
    for f in sorted((authors_dir / "vox_deca").glob("*.mat"))[:N_CODE_FRAMES]:
        shutil.copy(f, folder / f.name)
    return folder


@pytest.fixture(scope="module")
def face_frames(authors_dir):
    import imageio.v3 as iio

    return [iio.imread(authors_dir / "vox_images" / f"{i:07d}.png") for i in (0, 1, 2)]


# ----------------------------------------------------------------------------- pure helpers
def test_hold_missing_rule():
    np.testing.assert_array_equal(hold_missing([False, True, False, False, True, False]),
                                  [1, 1, 1, 1, 4, 4])
    np.testing.assert_array_equal(hold_missing([True, True]), [0, 1])
    with pytest.raises(ValueError, match="no face"):
        hold_missing([False, False])


def test_source_image_matches_kit_and_handles_formats(authors_dir, generator_kit, tmp_path):
    import imageio.v3 as iio

    kit = np.load(generator_kit / "generator_vectors.npz")
    # original compositing (truncation) reproduces the kit's source tensor bit for bit
    src = load_source_image(authors_dir / "basis.png", 256, composite="truncate")
    assert src.shape == (1, 3, 256, 256) and src.dtype == torch.float32
    np.testing.assert_array_equal(src[0].numpy(), kit["source_images"][0])
    # ours rounds: differs from truncation in a few hundred pixels by exactly one level
    ours = (load_source_image(authors_dir / "basis.png", 256) * 255).round()[0].permute(1, 2, 0).numpy()
    diff = ours.astype(int) - kit["basis_rgb_uint8"].astype(int)
    assert set(np.unique(diff)) <= {0, 1} and 0 < (diff.any(-1)).sum() < 5000
    # grayscale source -> three equal channels; non-square -> centred on a white square
    gray = np.tile(np.linspace(0, 255, 64, dtype=np.uint8), (32, 1))
    iio.imwrite(tmp_path / "gray.png", gray)
    img = load_source_image(tmp_path / "gray.png", 64)[0]
    assert torch.equal(img[0], img[1]) and torch.equal(img[1], img[2])
    assert (img[:, :16] == 1).all() and (img[:, 48:] == 1).all()          # white padding rows
    torch.testing.assert_close(img[0, 16:48], torch.from_numpy(gray / 255.0).float(), atol=1e-6, rtol=0)
    with pytest.raises(FileNotFoundError, match="source image"):
        load_source_image(tmp_path / "missing.png", 64)


# ----------------------------------------------------------------------------- end to end: codes
def test_codes_to_gif_poses_match_edtn_and_spec(codes_dir, authors_dir, generator_path,
                                                generator_kit, tmp_path):
    out = tmp_path / "anime.gif"
    cfg = make_cfg(driving=codes_dir, source=authors_dir / "basis.png", out=out,
                   generator_path=generator_path, edtn_path=authors_dir / "EDTN.pt",
                   pose_csv=tmp_path / "poses.csv", pose_npy=tmp_path / "poses.npy", batch_size=4)
    result = run(cfg)
    # output file: 8 frames of 256², 25 fps (codes carry no frame rate -> default_fps)
    n, size, duration = gif_info(out)
    assert (n, size, duration) == (N_CODE_FRAMES, (256, 256), 40)
    assert result.fps == 25.0 and result.missing == []
    assert _listing(tmp_path) == ["anime.gif", "poses.csv", "poses.npy"]
    # exported poses = authors' EDTN on those codes ⊕ SPEC §1 angles
    mats = sorted(codes_dir.glob("*.mat"))
    morphs, angles = reference_poses(mats, authors_dir / "EDTN.pt")
    poses = np.load(tmp_path / "poses.npy")
    assert poses.shape == (N_CODE_FRAMES, 20) and poses.dtype == np.float32
    np.testing.assert_allclose(poses[:, :17], morphs, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(poses[:, 17:], angles)
    # frame 0 is the kit's pose row 0 (made by the original infer.py)
    kit = np.load(generator_kit / "generator_vectors.npz")
    assert kit["edtn_frames"][0] == 0
    np.testing.assert_allclose(poses[0], kit["poses"][0], rtol=0, atol=1e-6)
    # CSV: frame column + named columns, same numbers
    import pandas as pd

    table = pd.read_csv(tmp_path / "poses.csv")
    assert list(table.columns) == ["frame", *POSE_COLUMNS]
    assert table["frame"].tolist() == list(range(N_CODE_FRAMES))
    np.testing.assert_allclose(table[list(POSE_COLUMNS)].to_numpy(), poses, rtol=1e-6, atol=1e-7)
    # the frames really differ (the pose drives the generator)
    from PIL import Image, ImageSequence

    with Image.open(out) as gif:
        frames = [np.asarray(f.convert("RGB"), dtype=np.int16) for f in ImageSequence.Iterator(gif)]
    assert np.abs(frames[0] - frames[-1]).max() > 0


def test_codes_to_mp4_grid_with_mesh(codes_dir, authors_dir, generator_path, synthetic_flame_path,
                                     landmark_embedding_path, tmp_path):
    from reenact.video_io import open_driving

    out = tmp_path / "grid.mp4"
    cfg = make_cfg(driving=codes_dir, source=authors_dir / "basis.png", out=out,
                   generator_path=generator_path, edtn_path=authors_dir / "EDTN.pt", fps=20,
                   layout="grid", show_morphs=True, show_mesh=True, flame_path=synthetic_flame_path,
                   landmark_embedding_path=landmark_embedding_path, batch_size=8)
    run(cfg)
    video = open_driving(out)
    assert (video.num_frames, video.fps) == (N_CODE_FRAMES, 20.0)
    frame = next(iter(video))[1]
    # placeholder (codes have no picture) | mesh | anime | morph chart
    assert frame.shape == (256, 4 * 256, 3)
    mesh = frame[:, 256:512].astype(int)
    assert (mesh < 200).any(-1).mean() > 0.05                     # a shaded head was drawn
    assert (mesh[128, 128] < 240).all()                           # where the face projects
    assert (mesh > 240).all(-1).mean() > 0.1                      # on a white background


def test_pose_options_through_the_pipeline(codes_dir, authors_dir, tmp_path):
    base = run(make_cfg(driving=codes_dir, render="none", edtn_path=authors_dir / "EDTN.pt"))
    rel = run(make_cfg(driving=codes_dir, render="none", edtn_path=authors_dir / "EDTN.pt",
                       relative=True, mouth_gain=1.5, **{"smoothing.method": "ema"}))
    assert base.out is None and _listing(tmp_path) == []
    np.testing.assert_array_equal(rel.poses[0], np.zeros(20, np.float32))
    morphs = np.clip(base.poses[:, :17] - base.poses[:1, :17], 0, 1)
    morphs[:, 12:] = np.clip(morphs[:, 12:] * 1.5, 0, 1)
    angles = base.poses[:, 17:] - base.poses[:1, 17:]
    expected = np.concatenate([morphs, angles], 1)
    ema = expected.copy()
    for t in range(1, len(ema)):
        ema[t] = 0.5 * expected[t] + 0.5 * ema[t - 1]
    np.testing.assert_allclose(rel.poses, ema, rtol=1e-5, atol=1e-5)


def test_packed_codes_equal_mat_folder(codes_dir, authors_dir, tmp_path):
    from deca_edit.codes import pack_code_tree

    pack_code_tree(codes_dir, tmp_path / "packed", progress=False)
    from_mat = run(make_cfg(driving=codes_dir, render="none", edtn_path=authors_dir / "EDTN.pt"))
    for driving in (tmp_path / "packed", tmp_path / "packed.npy"):
        packed = run(make_cfg(driving=driving, render="none", edtn_path=authors_dir / "EDTN.pt",
                              max_frames=5))
        np.testing.assert_allclose(packed.poses, from_mat.poses[:5], rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="driving_video"):
        run(make_cfg(driving=tmp_path / "packed", driving_video="nope", render="none",
                     edtn_path=authors_dir / "EDTN.pt"))


# ----------------------------------------------------------------------------- end to end: video
def test_video_full_path_detect_encode_edtn_generate(authors_dir, deca_tar, generator_path, tmp_path,
                                                     caplog):
    from deca_edit.crop import crop_face, make_detector
    from deca_edit.encoder import load_deca_checkpoint
    from reenact.video_io import open_driving

    out = tmp_path / "anime.mp4"
    with caplog.at_level("WARNING"):   # no face-alignment weights in the test home: dlib, said once
        result = run(make_cfg(driving=authors_dir / "example.mp4", max_frames=N_VIDEO_FRAMES,
                              source=authors_dir / "basis.png", out=out, deca_path=deca_tar,
                              generator_path=generator_path, edtn_path=authors_dir / "EDTN.pt",
                              batch_size=2, pose_npy=tmp_path / "p.npy"))
    assert sum("dlib" in r.getMessage() for r in caplog.records) == 1
    video = open_driving(out)
    assert (video.num_frames, video.fps) == (N_VIDEO_FRAMES, 20.0)
    assert next(iter(video))[1].shape == (256, 256, 3)
    assert result.missing == []
    # recompute the chain: crop -> encoder -> EDTN.pt (by hand) -> angles
    encoder = load_deca_checkpoint(deca_tar)
    detector = make_detector("dlib")
    crops = [crop_face(frame, detector)[0] for _, frame in open_driving(authors_dir / "example.mp4",
                                                                         N_VIDEO_FRAMES)]
    with torch.no_grad():
        codes = encoder.encode(torch.from_numpy(np.stack(crops)))
    from scipy.io import savemat

    mats = []
    for i in range(N_VIDEO_FRAMES):
        mats.append(tmp_path / f"{i}.mat")
        savemat(mats[-1], {k: codes[k][i:i + 1].numpy() for k in ("exp", "pose")})
    morphs, angles = reference_poses(mats, authors_dir / "EDTN.pt")
    poses = np.load(tmp_path / "p.npy")
    np.testing.assert_allclose(poses[:, :17], morphs, rtol=0, atol=1e-5)
    np.testing.assert_allclose(poses[:, 17:], angles, rtol=1e-5, atol=1e-3)


# ----------------------------------------------------------------------------- bad inputs
def test_frame_without_face_holds_previous_pose(face_frames, authors_dir, deca_tar, tmp_path, capsys,
                                                caplog):
    import imageio.v3 as iio

    folder = tmp_path / "frames"
    folder.mkdir()
    blank = np.full((256, 256, 3), 128, np.uint8)
    # 0: no face (leading: takes the first found), 1: face, 2: no face (held), 3: gray face,
    # 4: RGBA face
    gray = face_frames[1].mean(-1).round().astype(np.uint8)
    rgba = np.concatenate([face_frames[2], np.full((256, 256, 1), 255, np.uint8)], -1)
    for i, img in enumerate([blank, face_frames[0], blank, gray, rgba]):
        iio.imwrite(folder / f"{i:03d}.png", img)
    result = run(make_cfg(driving=folder, render="none", deca_path=deca_tar, detector="dlib",
                          edtn_path=authors_dir / "EDTN.pt"))
    assert result.missing == [0, 2]
    said = capsys.readouterr().out + "".join(r.getMessage() for r in caplog.records)
    assert said.count("no face") == 1 and "0, 2" in said             # reported once, in the summary
    p = result.poses
    np.testing.assert_array_equal(p[0], p[1])
    np.testing.assert_array_equal(p[2], p[1])
    assert not np.array_equal(p[3], p[1]) and not np.array_equal(p[4], p[3])


def test_no_face_anywhere_is_an_error(authors_dir, deca_tar, tmp_path):
    import imageio.v3 as iio

    folder = tmp_path / "blank"
    folder.mkdir()
    iio.imwrite(folder / "0.png", np.zeros((64, 64, 3), np.uint8))
    with pytest.raises(ValueError, match="no face was found"):
        run(make_cfg(driving=folder, render="none", deca_path=deca_tar, detector="dlib",
                     edtn_path=authors_dir / "EDTN.pt"))


def test_unreadable_video_and_empty_folder(authors_dir, deca_tar, tmp_path):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"\x00garbage" * 100)
    with pytest.raises(ValueError, match="cannot read video"):
        run(make_cfg(driving=bad, render="none", deca_path=deca_tar,
                     edtn_path=authors_dir / "EDTN.pt"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="contains no images"):
        run(make_cfg(driving=tmp_path / "empty", render="none", deca_path=deca_tar,
                     edtn_path=authors_dir / "EDTN.pt"))


def test_output_in_missing_directory_stops_before_work(codes_dir, authors_dir, generator_path,
                                                       tmp_path, monkeypatch):
    import reenact.pipeline as inference

    def must_not_run(*args, **kwargs):
        raise AssertionError("work started")

    monkeypatch.setattr(inference, "read_code_input", must_not_run)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        run(make_cfg(driving=codes_dir, source=authors_dir / "basis.png",
                     out=tmp_path / "missing" / "anime.mp4", generator_path=generator_path,
                     edtn_path=authors_dir / "EDTN.pt", pose_csv=tmp_path / "poses.csv"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        run(make_cfg(driving=codes_dir, render="none", edtn_path=authors_dir / "EDTN.pt",
                     pose_csv=tmp_path / "nope" / "poses.csv"))
    assert _listing(tmp_path) == []


@pytest.mark.parametrize("missing", ["edtn", "generator", "deca", "flame"])
def test_missing_asset_stops_before_any_work(missing, codes_dir, authors_dir, generator_path,
                                             deca_tar, tmp_path, monkeypatch):
    import reenact.pipeline as inference

    def must_not_run(*args, **kwargs):
        raise AssertionError("work started")

    monkeypatch.setattr(inference, "read_code_input", must_not_run)
    monkeypatch.setattr(inference, "open_driving", must_not_run)
    kw = dict(driving=codes_dir, source=authors_dir / "basis.png", out=tmp_path / "a.mp4",
              generator_path=generator_path, edtn_path=authors_dir / "EDTN.pt",
              pose_csv=tmp_path / "p.csv")
    if missing == "edtn":
        kw["edtn_path"] = None                      # EDTN_HOME is an empty folder in tests
        expect = "EDTN.pt"
    elif missing == "generator":
        kw.update(generator_path=None, generator="cartoon")
        expect = "generator_cartoon.ckpt"
    elif missing == "deca":
        kw["driving"] = authors_dir / "example.mp4"
        expect = "deca_model.tar"
    else:
        kw.update(layout="grid", show_mesh=True, flame_path=tmp_path / "generic_model.pkl")
        expect = "generic_model.pkl"
    with pytest.raises(AssetError, match=expect) as info:
        ReenactmentPipeline(make_cfg(**kw))
    assert "Get it:" in str(info.value)
    assert _listing(tmp_path) == []


# ----------------------------------------------------------------------------- the CLI
def _cli(*args, env_home):
    env = {**os.environ, "EDTN_HOME": str(env_home), "TORCH_HOME": str(env_home / "torch")}
    return subprocess.run([sys.executable, str(REPO / "infer.py"), *args], capture_output=True,
                          text=True, env=env, cwd=env_home, timeout=300)


def test_cli_clean_errors_and_success(codes_dir, authors_dir, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    proc = _cli(f"driving={codes_dir}", "render=none", env_home=home)
    assert proc.returncode == 1
    assert "EDTN.pt" in proc.stderr and "Get it:" in proc.stderr and "Traceback" not in proc.stderr
    shutil.copy(authors_dir / "EDTN.pt", home / "EDTN.pt")       # now found through EDTN_HOME
    proc = _cli(f"driving={codes_dir}", "render=none", "max_frames=3",
                f"pose_csv={tmp_path / 'p.csv'}", env_home=home)
    assert proc.returncode == 0, proc.stderr
    assert "done: 3 frames" in proc.stdout
    assert _listing(home) == ["EDTN.pt"]                           # Hydra left nothing in the cwd
    assert (tmp_path / "p.csv").read_text().count("\n") == 4


# ----------------------------------------------------------------------------- typed config
def test_cli_typed_config_names_the_key(codes_dir, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    base = [f"driving={codes_dir}", "render=none"]
    proc = _cli(*base, "fps=abc", env_home=home)
    assert proc.returncode == 1 and "infer.py: error:" in proc.stderr and "fps=abc" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = _cli(*base, "batch_size=1.5", env_home=home)           # not silently truncated to 1
    assert proc.returncode == 1 and "batch_size" in proc.stderr and "Integer" in proc.stderr
    proc = _cli(*base, "mouth_gan=2", env_home=home)               # a typo is not an invitation
    assert proc.returncode == 1 and "unknown infer config key 'mouth_gan'" in proc.stderr
    assert "mouth_gain" in proc.stderr and "+mouth_gan" not in proc.stderr
    proc = _cli(*base, "default_fps=0", env_home=home)             # blamed on the right key
    assert proc.returncode == 1 and "'default_fps'" in proc.stderr and "smoothing" not in proc.stderr
    assert _listing(home) == []


def test_pipeline_receives_a_typed_config(codes_dir, authors_dir):
    from reenact.config import InferConfig, RenderMode, SmoothingMethod, validate_infer_config

    cfg = validate_infer_config({"driving": str(codes_dir), "render": "none", "device": "cpu",
                                 "edtn_path": str(authors_dir / "EDTN.pt"), "smoothing": {"method": "ema"}})
    assert isinstance(cfg, InferConfig) and cfg.render is RenderMode.none
    assert cfg.smoothing.method is SmoothingMethod.ema and cfg.out == "anime.mp4"
    assert isinstance(ReenactmentPipeline(cfg).cfg, InferConfig)
    with pytest.raises(ValueError, match="batch_size"):
        validate_infer_config({"driving": "x", "render": "none", "batch_size": 1.5})
    with pytest.raises(ValueError, match="mouth_gan"):
        validate_infer_config({"driving": "x", "render": "none", "mouth_gan": 2})
    with pytest.raises(ValueError, match="detector"):
        validate_infer_config({"driving": "x", "render": "none", "detector": "haar"})
    assert validate_infer_config({"driving": "x", "render": "none", "detector": "fan"}).detector == "fan"


def test_single_image_output_with_many_frames_fails_before_work(codes_dir, authors_dir, generator_path,
                                                                tmp_path, monkeypatch):
    import reenact.pipeline as pipeline

    def must_not_run(*args, **kwargs):
        raise AssertionError("work started")

    monkeypatch.setattr(pipeline, "MorphMapper", must_not_run)
    monkeypatch.setattr(pipeline, "AnimeRenderer", must_not_run)
    with pytest.raises(ValueError, match=r"single image .* 8 frames.*max_frames=1"):
        run(make_cfg(driving=codes_dir, source=authors_dir / "basis.png", out=tmp_path / "a.png",
                     generator_path=generator_path, edtn_path=authors_dir / "EDTN.pt"))
    assert _listing(tmp_path) == []


def test_summary_is_on_its_own_line_when_output_is_redirected(codes_dir, authors_dir, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    log_file = tmp_path / "log.txt"
    env = {**os.environ, "EDTN_HOME": str(home), "TORCH_HOME": str(home / "torch")}
    with open(log_file, "w") as handle:
        proc = subprocess.run([sys.executable, str(REPO / "infer.py"), f"driving={codes_dir}",
                               "render=none", f"edtn_path={authors_dir / 'EDTN.pt'}", "progress=true"],
                              stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=home, timeout=300)
    assert proc.returncode == 0
    text = log_file.read_text()
    lines = text.replace("\r", "\n").splitlines()
    assert any(line.startswith("done: 8 frames") for line in lines), text
    bar = [line for line in lines if line.startswith("edtn")]     # the bar counts frames, not batches
    assert bar and "8/8" in bar[-1] and "frame/s" in bar[-1]


def test_grid_chart_shows_the_pose_that_drives_the_generator(codes_dir, authors_dir, generator_path,
                                                             tmp_path):
    """relative=true maps frame 0 to the neutral pose: its chart has no solid bars, only the raw
    EDTN output as ghost bars."""
    import imageio.v3 as iio

    from reenact import render

    out = tmp_path / "grid.png"
    result = run(make_cfg(driving=codes_dir, source=authors_dir / "basis.png", out=out, max_frames=1,
                          generator_path=generator_path, edtn_path=authors_dir / "EDTN.pt",
                          layout="grid", relative=True))
    assert np.all(result.poses[0, :17] == 0) and result.morphs_raw[0].max() > 0.1
    chart = iio.imread(out)[:, 2 * 256:]
    left, right, top, bottom = render.chart_area(256)
    area = chart[top:bottom + 1, left:right]
    solid = np.zeros(area.shape[:2], bool)
    ghost = np.zeros(area.shape[:2], bool)
    for colour in render.GROUP_COLOURS:
        solid |= (area == np.array(colour, np.uint8)).all(-1)
        ghost |= (area == np.array(render._lighten(colour), np.uint8)).all(-1)
    assert not solid.any() and ghost.any()


# ----------------------------------------------------------------------------- mapping option
def test_training_free_mappings_through_infer(codes_dir, authors_dir, synthetic_flame_path,
                                              landmark_embedding_path, monkeypatch):
    """mapping=basis_fit | vertex_fit replace EDTN (no EDTN weights needed) and give the fits of
    edtn.mappings; vertex_fit without FLAME stops before any work, naming the FLAME file."""
    from deca_edit.codes import code156, edtn_input_from_code156, read_code_mat
    from edtn.mappings import build_mapping

    basis = authors_dir / "transform_matrix_08_30.npy"
    files = sorted(codes_dir.glob("*.mat"))
    x = torch.from_numpy(np.stack([edtn_input_from_code156(code156(read_code_mat(f))) for f in files]))
    flame = dict(flame_path=synthetic_flame_path, landmark_embedding_path=landmark_embedding_path)
    for mapping, extra in (("basis_fit", {}), ("vertex_fit", flame)):
        result = run(make_cfg(driving=codes_dir, render="none", mapping=mapping, basis_path=basis, **extra))
        expected = build_mapping(mapping, basis_path=basis, **extra)(x).numpy()
        np.testing.assert_allclose(result.morphs_raw, expected, rtol=0, atol=1e-6)
        assert mapping in result.seconds
    with pytest.raises(AssetError, match="generic_model.pkl"):
        run(make_cfg(driving=codes_dir, render="none", mapping="vertex_fit", basis_path=basis))
    with pytest.raises(Exception, match="mapping"):
        run(make_cfg(driving=codes_dir, render="none", mapping="nearest"))
