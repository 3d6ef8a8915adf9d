"""EDTN datasets over packed codes and .mat folders: values, splits, sampling, loaders, bad data.

Data: the 308 real DECA codes of ``authors/vox_deca`` (one video), re-grouped into four
pseudo-videos of 77 consecutive frames so that video-level splits and per-video sampling have
something to act on.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch

from deca_edit.codes import CodeFileError, code156, edtn_input_from_code156, pack_code_tree, read_code_mat
from edtn.data import (CodeFrames, ResidentLoader, VideoFrameSampler, build_loader,
                       open_code_source, open_split, read_video_list, select_videos)
from edtn.losses import REAL_TARGET_DIM

N_CLIPS, CLIP_LEN = 4, 77   # 4 x 77 = the 308 example frames


def make_clip_tree(mat_dir: Path, root: Path) -> Path:
    """Symlink the example frames into ``root/clip{k}.mp4/*.mat`` (4 pseudo-videos)."""
    files = sorted(mat_dir.glob("*.mat"))
    assert len(files) == N_CLIPS * CLIP_LEN
    for k in range(N_CLIPS):
        video = root / f"clip{k}.mp4"
        video.mkdir(parents=True)
        for f in files[k * CLIP_LEN:(k + 1) * CLIP_LEN]:
            os.symlink(f, video / f.name)
    return root


@pytest.fixture(scope="module")
def vox_mat_dir(authors_dir) -> Path:
    return authors_dir / "vox_deca"


@pytest.fixture(scope="module")
def packed_prefix(vox_mat_dir, tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("packed")
    tree = make_clip_tree(vox_mat_dir, base / "deca" / "all")
    return pack_code_tree(tree, base / "codes" / "all", progress=False).prefix


def test_packed_inputs_match_mat_files(packed_prefix, vox_mat_dir):
    source = open_code_source(packed_prefix)
    assert source.inputs.shape == (308, 53) and source.inputs.dtype == np.float32
    assert [v.name for v in source.videos] == [f"clip{k}.mp4" for k in range(N_CLIPS)]
    assert [(v.start, v.count) for v in source.videos] == [(k * CLIP_LEN, CLIP_LEN) for k in range(N_CLIPS)]
    files = sorted(vox_mat_dir.glob("*.mat"))
    for row in (0, 76, 77, 200, 307):
        mat = read_code_mat(files[row])
        expected = np.concatenate([mat["exp"][0], mat["pose"][0, 3:]])
        np.testing.assert_array_equal(source.inputs[row], expected)
        np.testing.assert_array_equal(source.inputs[row], edtn_input_from_code156(code156(mat)))


def test_mat_folder_equals_packed(packed_prefix, vox_mat_dir):
    flat = open_code_source(vox_mat_dir)  # flat folder = one video named after the folder
    assert [(v.name, v.start, v.count) for v in flat.videos] == [("vox_deca", 0, 308)]
    tree = open_code_source(packed_prefix.parent.parent / "deca" / "all")  # <video>/*.mat tree
    packed = open_code_source(packed_prefix)
    np.testing.assert_array_equal(flat.inputs, packed.inputs)
    np.testing.assert_array_equal(tree.inputs, packed.inputs)
    assert [v.name for v in tree.videos] == [v.name for v in packed.videos]
    # the packed pair may also be named by either file
    np.testing.assert_array_equal(open_code_source(f"{packed_prefix}.npy").inputs, packed.inputs)


def test_video_level_split_from_list_files(packed_prefix, tmp_path):
    train_list = tmp_path / "train.txt"
    train_list.write_text("# train videos\nclip0.mp4\nclip2\n\nclip1.mp4\n")
    assert read_video_list(train_list) == ["clip0.mp4", "clip2", "clip1.mp4"]
    source, videos = open_split(packed_prefix, str(train_list))
    assert [v.name for v in videos] == ["clip0.mp4", "clip1.mp4", "clip2.mp4"]  # source order
    dataset = CodeFrames(source, videos)
    assert len(dataset) == 3 * CLIP_LEN
    item = dataset[CLIP_LEN]  # first frame of clip1
    assert item["input"].shape == (53,) and item["input"].dtype == torch.float32
    assert int(item["index"]) == CLIP_LEN
    np.testing.assert_array_equal(item["input"].numpy(), source.inputs[CLIP_LEN])

    bad_list = tmp_path / "bad.txt"
    bad_list.write_text("clip0.mp4\nno_such_video.mp4\n")
    with pytest.raises(ValueError, match="no_such_video") as info:
        select_videos(source, read_video_list(bad_list), str(bad_list))
    assert str(bad_list) in str(info.value)


def _epoch(sampler: VideoFrameSampler, epoch: int) -> list[int]:
    sampler.set_epoch(epoch)
    return list(sampler)


def test_sampler_all_frames_is_a_seeded_permutation(packed_prefix):
    source = open_code_source(packed_prefix)
    dataset = CodeFrames(source, source.videos[1:])   # 3 videos, positions 0..230
    sampler = VideoFrameSampler(dataset, None, shuffle=True, seed=3)
    e0, e1 = _epoch(sampler, 0), _epoch(sampler, 1)
    assert sorted(e0) == list(range(len(dataset))) == sorted(e1)
    assert e0 != e1 and len(sampler) == len(dataset)
    assert _epoch(VideoFrameSampler(dataset, None, seed=3), 1) == e1   # (seed, epoch) only
    assert _epoch(VideoFrameSampler(dataset, None, seed=4), 1) != e1


def test_sampler_k_frames_per_video(packed_prefix):
    source = open_code_source(packed_prefix)
    dataset = CodeFrames(source, source.videos)
    k = 5
    sampler = VideoFrameSampler(dataset, k, seed=0)
    picks = [_epoch(sampler, e) for e in range(3)]
    for positions in picks:
        assert len(positions) == len(sampler) == N_CLIPS * k and len(set(positions)) == len(positions)
        per_video = np.bincount(np.asarray(positions) // CLIP_LEN, minlength=N_CLIPS)
        assert per_video.tolist() == [k] * N_CLIPS
    assert set(picks[0]) != set(picks[1])                  # new frames each epoch
    # k larger than a video: every frame of it once
    assert sorted(_epoch(VideoFrameSampler(dataset, 1000, seed=0), 0)) == list(range(308))


@pytest.mark.parametrize("drop_last", [False, True])
def test_sampler_shards_across_ranks(packed_prefix, drop_last):
    source = open_code_source(packed_prefix)
    dataset = CodeFrames(source, source.videos[:3])   # 231 frames: not a multiple of 4
    world = 4
    shards = [_epoch(VideoFrameSampler(dataset, None, seed=1, rank=r, world_size=world,
                                       drop_last=drop_last), 2) for r in range(world)]
    lengths = {len(s) for s in shards}
    assert len(lengths) == 1 and lengths.pop() == (57 if drop_last else 58)
    union = [p for s in shards for p in s]
    if drop_last:
        assert len(set(union)) == len(union) == 228
    else:
        assert set(union) == set(range(231))    # everything covered, 1 frame padded


LOADER_KINDS = [dict(resident=False), dict(resident=True), dict(resident=True, on_device=True)]
LOADER_IDS = ["dataloader", "resident", "resident_on_device"]


@pytest.mark.parametrize("kind", LOADER_KINDS, ids=LOADER_IDS)
def test_loader_batches_inputs_targets_and_indices(packed_prefix, kind):
    source = open_code_source(packed_prefix)
    targets = np.arange(308 * REAL_TARGET_DIM, dtype=np.float32).reshape(308, REAL_TARGET_DIM)  # stand-in
    dataset = CodeFrames(source, source.videos[:3], targets)
    loader = build_loader(dataset, 32, train=True, seed=0, device="cpu", **kind)
    if kind["resident"]:
        assert isinstance(loader, ResidentLoader) and loader.drop_last is True
    else:
        assert loader.pin_memory is False and loader.drop_last is True
    batches = list(loader)
    assert len(batches) == len(loader) == 231 // 32
    for batch in batches:
        assert batch["input"].shape == (32, 53) and batch["target"].shape == (32, REAL_TARGET_DIM)
        assert batch["input"].is_contiguous() and batch["target"].is_contiguous()
        rows = batch["index"].numpy()
        np.testing.assert_array_equal(batch["input"].numpy(), source.inputs[rows])
        np.testing.assert_array_equal(batch["target"].numpy(), targets[rows])
    # evaluation: every frame once, in order, last batch kept
    eval_loader = build_loader(dataset, 100, train=False, **kind)
    assert len(eval_loader) == 3
    rows = torch.cat([b["index"] for b in eval_loader]).numpy()
    np.testing.assert_array_equal(rows, np.arange(231))
    with pytest.raises(ValueError, match="stale cache"):
        CodeFrames(source, source.videos, targets[:10])


def _batches(loader, epoch: int) -> list[dict]:
    loader.sampler.set_epoch(epoch)
    return list(loader)


@pytest.mark.parametrize("on_device", [False, True])
@pytest.mark.parametrize("frames_per_video", [None, 20])
def test_resident_loader_gives_the_dataloader_batches(packed_prefix, on_device, frames_per_video):
    """Same batches, same order, same values as the per-sample DataLoader, every epoch."""
    source = open_code_source(packed_prefix)
    targets = np.random.default_rng(0).standard_normal((308, REAL_TARGET_DIM)).astype(np.float32)
    dataset = CodeFrames(source, source.videos[1:], targets)
    common = dict(train=True, seed=5, frames_per_video=frames_per_video, device="cpu")
    old = build_loader(dataset, 16, resident=False, **common)
    new = build_loader(dataset, 16, resident=True, on_device=on_device, **common)
    assert len(new) == len(old) > 0
    for epoch in range(3):
        expected, got = _batches(old, epoch), _batches(new, epoch)
        assert len(got) == len(expected)
        for a, b in zip(got, expected):
            assert a.keys() == b.keys()
            for key in a:
                assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), (epoch, key)
    # resuming inside an epoch starts at that batch without gathering the earlier ones
    new.sampler.set_epoch(2)
    tail = list(new.batches(3))
    assert [b["index"].tolist() for b in tail] == [b["index"].tolist() for b in got[3:]]


@pytest.mark.parametrize("on_device", [False, True])
def test_resident_loader_shards_each_epoch_once_across_ranks(packed_prefix, on_device):
    """DDP: the ranks split one epoch order (drawn once from (seed, epoch)), disjointly."""
    source = open_code_source(packed_prefix)
    dataset = CodeFrames(source, source.videos)            # 308 frames
    world, batch = 3, 8
    loaders = [build_loader(dataset, batch, train=True, seed=2, device="cpu", rank=r,
                            world_size=world, on_device=on_device) for r in range(world)]
    whole = VideoFrameSampler(dataset, None, seed=2)       # the one order of the epoch
    for epoch in (0, 1):
        per_rank = [torch.cat([b["index"] for b in _batches(loader, epoch)]).numpy()
                    for loader in loaders]
        assert {len(rows) for rows in per_rank} == {(308 // world) // batch * batch}   # 96
        flat = np.concatenate(per_rank)
        assert len(set(flat.tolist())) == len(flat)        # no frame on two ranks
        whole.set_epoch(epoch)
        order = whole.epoch_order()
        for r, rows in enumerate(per_rank):                # rank r takes positions r, r+W, ...
            np.testing.assert_array_equal(rows, dataset.rows[order[r::world][:len(rows)]])


def test_nan_row_in_packed_file_names_file_video_and_frame(packed_prefix, tmp_path):
    bad = tmp_path / "bad"
    for suffix in (".npy", ".json"):
        shutil.copy(f"{packed_prefix}{suffix}", f"{bad}{suffix}")
    table = np.load(f"{bad}.npy", mmap_mode="r+")
    table[2 * CLIP_LEN + 5, 120] = np.nan     # clip2, its 6th frame, an expression column
    table.flush()
    del table
    with pytest.raises(ValueError) as info:
        open_code_source(bad)
    message = str(info.value)
    assert str(bad) in message and "clip2.mp4" in message and "0000159" in message


def _write_mat(path: Path, **override) -> None:
    codes = {"shape": np.zeros((1, 100)), "tex": np.zeros((1, 50)), "exp": np.zeros((1, 50)),
             "pose": np.zeros((1, 6)), "cam": np.zeros((1, 3)), "light": np.zeros((9, 3))}
    codes.update(override)
    scipy.io.savemat(path, {k: np.asarray(v, dtype=np.float32) for k, v in codes.items()})


@pytest.mark.parametrize("override", [
    {"exp": np.full((1, 50), np.nan)},        # NaN
    {"exp": np.zeros((1, 49))},               # wrong shape
    {"pose": np.zeros((2, 6))},
])
def test_bad_mat_file_fails_with_its_path(tmp_path, override):
    folder = tmp_path / "video.mp4"
    folder.mkdir()
    _write_mat(folder / "0000000.mat")
    _write_mat(folder / "0000001.mat", **override)
    with pytest.raises(CodeFileError) as info:
        open_code_source(folder)
    assert str(folder / "0000001.mat") in str(info.value)


def test_missing_source_is_reported(tmp_path):
    with pytest.raises(FileNotFoundError, match="pack_deca_codes"):
        open_code_source(tmp_path / "nothing_here")
