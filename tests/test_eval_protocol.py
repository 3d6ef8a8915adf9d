"""The evaluation protocol: seeded pairing and frame sampling, the CSV, the data checks (one clear
message naming the file), packed vs .mat codes, and the FID real set."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image

from reenact.evaluation.protocol import (AnimeCelebTest, EvalPair, VoxCodes, check_protocol, make_protocol,
                                         prepare_real_set, protocol_digest, read_protocol, real_image_paths,
                                         write_protocol)

VIDEOS = {"id00001#a#1#9.mp4": range(0, 10), "id00002#b#1#9.mp4": range(20, 25), "id00003#c#1#9.mp4": range(40, 41)}


@pytest.fixture(scope="module")
def vox(authors_dir, tmp_path_factory):
    """<vox>/deca/test and <vox>/images/test with three videos of 10, 5 and 1 frames."""
    root = tmp_path_factory.mktemp("vox")
    for video, frames in VIDEOS.items():
        for sub, src, ext in (("deca", "vox_deca", ".mat"), ("images", "vox_images", ".png")):
            folder = root / sub / "test" / video
            folder.mkdir(parents=True)
            for i in frames:
                shutil.copy(authors_dir / src / f"{i:07d}{ext}", folder / f"{i:07d}{ext}")
    return root


@pytest.fixture(scope="module")
def anime(generator_kit):
    tiny = generator_kit / "tiny_dataset"
    return AnimeCelebTest(tiny / "animeceleb", tiny / "lists" / "test_list.txt")


def test_protocol_pairs_are_seeded_balanced_and_sampled(vox, anime):
    codes = VoxCodes(vox / "deca" / "test")
    pairs = make_protocol(codes, anime, seed=0, frames_per_pair=4, pairs_per_video=3)
    assert [p.pair for p in pairs] == [f"p{k:05d}" for k in range(6)]      # the 1-frame video is left out
    assert sorted({p.video for p in pairs}) == sorted(VIDEOS)[:2]
    counts = {i: sum(p.identity == i for p in pairs) for i in anime.ids}
    assert sorted(counts.values()) == [3, 3]                              # cycled: every identity equally
    first = pairs[0]
    assert first.frames == ("0000000", "0000003", "0000006", "0000009")   # uniform: ends included
    assert pairs[3].frames == tuple(f"{i:07d}" for i in (20, 21, 23, 24))
    assert first.source == f"basis/{anime.index[first.identity]['folder_name']}/basis.png"
    assert make_protocol(codes, anime, seed=0, frames_per_pair=4, pairs_per_video=3) == pairs
    windows = make_protocol(codes, anime, seed=5, frames_per_pair=3, sampling="window")
    stems = [int(f) for f in windows[0].frames]
    assert stems == list(range(stems[0], stems[0] + 3))                   # consecutive frames
    assert len(make_protocol(codes, anime, max_videos=1)) == 1
    with pytest.raises(ValueError, match="frames_per_pair"):
        make_protocol(codes, anime, frames_per_pair=1)


def test_protocol_csv_round_trip_and_bad_files(vox, anime, tmp_path):
    pairs = make_protocol(VoxCodes(vox / "deca" / "test"), anime, frames_per_pair=3)
    path = write_protocol(tmp_path / "protocol.csv", pairs)
    assert read_protocol(path) == pairs
    assert protocol_digest(read_protocol(path)) == protocol_digest(pairs)
    assert protocol_digest(pairs[:1]) != protocol_digest(pairs)
    lines = path.read_text().splitlines()
    bad = tmp_path / "bad.csv"
    bad.write_text("video,pair\n")
    with pytest.raises(ValueError, match="bad.csv: header must be"):
        read_protocol(bad)
    bad.write_text("\n".join([lines[0], lines[1], lines[1]]) + "\n")
    with pytest.raises(ValueError, match="bad.csv, line 3: pair id 'p00000' appears twice"):
        read_protocol(bad)
    bad.write_text(lines[0] + "\np9,v,9,basis/x.png,0000000\n")
    with pytest.raises(ValueError, match="line 2: pair 'p9' has 1 frame"):
        read_protocol(bad)
    bad.write_text(lines[0] + "\n")
    with pytest.raises(ValueError, match="holds no pairs"):
        read_protocol(bad)
    with pytest.raises(FileNotFoundError, match="make_protocol.py"):
        read_protocol(tmp_path / "missing.csv")


def test_check_protocol_names_the_missing_video_identity_or_frame(vox, anime, tmp_path):
    codes = VoxCodes(vox / "deca" / "test")
    good = EvalPair("p0", "id00001#a#1#9.mp4", "9", anime.source("9"), ("0000000", "0000001"))
    check_protocol([good], "proto.csv", codes=codes, anime_root=anime.root, images_root=vox / "images" / "test")
    cases = [
        (EvalPair("p1", "id09999#z.mp4", "9", good.source, good.frames), "pair 'p1' names video 'id09999#z.mp4'"),
        (EvalPair("p2", good.video, "9", "basis/nobody/basis.png", good.frames),
         "pair 'p2' names identity '9' whose source image is missing: .*basis/nobody/basis.png"),
        (EvalPair("p3", good.video, "9", good.source, ("0000000", "0000099")), "frame '0000099'"),
    ]
    for pair, message in cases:
        with pytest.raises(ValueError, match=f"proto.csv: .*{message}"):
            check_protocol([pair], "proto.csv", codes=codes, anime_root=anime.root)
    (vox / "images" / "test" / good.video / "0000001.png").rename(tmp_path / "moved.png")
    try:
        with pytest.raises(ValueError, match="driving frame .*0000001.png not found"):
            check_protocol([good], "proto.csv", images_root=vox / "images" / "test")
    finally:
        (tmp_path / "moved.png").rename(vox / "images" / "test" / good.video / "0000001.png")
    with pytest.raises(ValueError, match="identity '77' is not in"):
        AnimeCelebTest(anime.root, ids=["9", "77"])


def test_packed_codes_give_the_same_rows(vox, tmp_path):
    from deca_edit.codes import pack_code_tree

    pack_code_tree(vox / "deca" / "test", tmp_path / "test", progress=False)
    mats, packed = VoxCodes(vox / "deca" / "test"), VoxCodes(tmp_path / "test.npy")
    assert packed.videos == mats.videos
    frames = ("0000001", "0000004")
    video = "id00001#a#1#9.mp4"
    np.testing.assert_array_equal(packed.code156(video, frames), mats.code156(video, frames))
    with pytest.raises(ValueError, match="video 'nope' is not in the DECA codes"):
        mats.code156("nope", frames)
    with pytest.raises(ValueError, match="one folder per video"):
        VoxCodes(vox / "deca" / "test" / "id00001#a#1#9.mp4")
    with pytest.raises(FileNotFoundError, match="VoxCeleb DECA codes not found"):
        VoxCodes(tmp_path / "nothing")


def test_real_set_is_seeded_composited_resized_and_idempotent(anime, tmp_path):
    paths = real_image_paths(anime, per_identity=2, seed=1)
    assert len(paths) == 4 and paths == real_image_paths(anime, per_identity=2, seed=1)
    assert len(real_image_paths(anime, per_identity=None)) == 8
    out = prepare_real_set(paths, 32, tmp_path / "real", progress=False)
    files = sorted(out.iterdir())
    assert len(files) == 4
    for f in files:
        with Image.open(f) as img:
            assert img.size == (32, 32) and img.mode == "RGB"
    corner = np.asarray(Image.open(files[0]))[0, 0]
    assert (corner == 255).all()  # transparent background composited over white
    stamp = files[0].stat().st_mtime_ns
    prepare_real_set(paths, 32, out, progress=False)
    assert files[0].stat().st_mtime_ns == stamp and not list(out.glob(".*.tmp"))
