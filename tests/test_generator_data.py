"""AnimeCeleb loaders on the kit's tiny_dataset (README §8): items, first-use cache (content equal
to the kit's cached.json, atomic), rounding vs original compositing, real resize, time flip with
poses, jitter shared within a clip, reproducibility, the DECA variant and the DataLoader."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

import anime_generator.data as data
from anime_generator.data import (AnimeCelebDataset, AnimeCelebDecaDataset, ColorJitterParams,
                                  build_dataloader, composite_rgba, load_or_build_index, load_rgb,
                                  set_loader_epoch, to_float_chw)

NO_JITTER = None


@pytest.fixture
def tiny(generator_kit, tmp_path):
    """Writable copy of tiny_dataset; the kit's cached.json moved aside as the expected content."""
    root = tmp_path / "tiny_dataset"
    shutil.copytree(generator_kit / "tiny_dataset", root)
    expected = json.loads((root / "animeceleb" / "cached.json").read_text())
    (root / "animeceleb" / "cached.json").unlink()
    return root, expected


def make(root, split="train", **kw):
    lists = {"train": "train_list.txt", "valid": "test_list.txt"}
    return AnimeCelebDataset(root / "animeceleb", root / "lists" / lists[split], train=split == "train", **kw)


def test_first_use_cache_matches_kit_and_is_reused(tiny):
    root, expected = tiny
    ds = make(root, image_size=None)
    cache = root / "animeceleb" / "cached.json"
    assert json.loads(cache.read_text()) == expected  # string keys, string num_cluster, row order
    cache.write_text(json.dumps({**expected, "marker": expected["0"]}))
    assert "marker" in load_or_build_index(root / "animeceleb")  # reused, not rebuilt
    assert ds.ids == ["0", "1"]


def test_cache_write_is_atomic(tiny, monkeypatch):
    root, _ = tiny
    cache = root / "animeceleb" / "cached.json"

    def crash(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(data.json, "dump", crash)
    with pytest.raises(RuntimeError):
        load_or_build_index(root / "animeceleb")
    assert not cache.exists() and not list(cache.parent.glob(".cached.json*"))
    cache.write_text("")  # the original leaves an empty file behind: we rebuild it
    monkeypatch.undo()
    with pytest.warns(UserWarning, match="unreadable"):
        assert set(load_or_build_index(root / "animeceleb")) == {"0", "1", "9", "10"}


def test_cache_location_configurable(tiny, tmp_path):
    root, expected = tiny
    cache = tmp_path / "elsewhere" / "index.json"
    make(root, cache_path=cache, image_size=None)
    assert json.loads(cache.read_text()) == expected
    assert not (root / "animeceleb" / "cached.json").exists()


def test_items_documented(tiny):
    root, expected = tiny
    ds = make(root, "valid", image_size=None)
    assert len(ds) == 2
    item = ds[1]
    assert set(item) == {"source", "driving", "source_pose", "driving_pose", "name"}
    assert item["name"] == "10"
    for key in ("source", "driving"):
        assert item[key].shape == (3, 64, 64) and item[key].dtype == torch.float32
        assert 0 <= item[key].min() and item[key].max() <= 1
    poses = np.asarray(expected["10"]["pose_information"], dtype=np.float32)
    for key in ("source_pose", "driving_pose"):
        assert item[key].shape == (20,) and item[key].dtype == torch.float32
        assert (np.abs(poses - item[key].numpy()).sum(1) == 0).any()
    assert len(make(root, num_repeats=3)) == 6
    with pytest.raises(FileNotFoundError, match="no_such_list"):
        AnimeCelebDataset(root / "animeceleb", root / "lists" / "no_such_list.txt")


def test_compositing_rounds_and_original_truncates(generator_kit):
    """README §3: the original truncation reproduces the kit's RGB exactly; rounding changes
    783 pixels of basis.png and 54,629 of the synthetic image."""
    gv = np.load(generator_kit / "generator_vectors.npz")
    for name, changed in (("basis", 783), ("synthetic", 54629)):
        rgba = gv[f"{name}_rgba_uint8"]
        original = composite_rgba(rgba, mode="original")
        np.testing.assert_array_equal(original, gv[f"{name}_rgb_uint8"])
        rounded = composite_rgba(rgba)
        exact = rgba[..., :3] * (rgba[..., 3:] / 255.0) + 255.0 * (1 - rgba[..., 3:] / 255.0)
        np.testing.assert_array_equal(rounded, np.rint(exact).astype(np.uint8))
        assert int((rounded != original).any(-1).sum()) == changed
    black = composite_rgba(gv["synthetic_rgba_uint8"], background=(0, 0, 0))
    assert (black[gv["synthetic_rgba_uint8"][..., 3] == 0] == 0).all()
    np.testing.assert_array_equal(to_float_chw(gv["basis_rgb_uint8"]).numpy(), gv["source_images"][0])


def test_real_resize(tiny):
    root, _ = tiny
    ds = make(root, "valid", image_size=32)
    item = ds[0]
    assert item["source"].shape == (3, 32, 32)
    frames = sorted((root / "animeceleb" / "rotation").rglob("m001c_*.png"))
    small = [to_float_chw(load_rgb(f, size=32)) for f in frames]
    assert any(torch.equal(item["source"], s) for s in small)
    full = to_float_chw(load_rgb(frames[0]))  # a real resize keeps the picture (unlike np.resize)
    down = torch.nn.functional.avg_pool2d(full[None], 2)[0]
    assert (small[0] - down).abs().mean() < 0.02


def _frame_table(root, identity, expected):
    entry = expected[identity]
    folder = root / "animeceleb" / "rotation" / entry["num_cluster"] / entry["folder_name"]
    return [to_float_chw(load_rgb(folder / n)) for n in entry["img_names"]], entry["pose_information"]


def test_time_flip_swaps_poses_with_frames(tiny):
    root, expected = tiny
    ds = make(root, image_size=None, color_jitter=NO_JITTER, time_flip=True, num_repeats=8)
    flipped = 0
    for epoch in range(3):
        ds.set_epoch(epoch)
        for index in range(len(ds)):
            item = ds[index]
            frames, poses = _frame_table(root, item["name"], expected)
            src = next(i for i, f in enumerate(frames) if torch.equal(f, item["source"]))
            drv = next(i for i, f in enumerate(frames) if torch.equal(f, item["driving"]))
            np.testing.assert_array_equal(item["source_pose"].numpy(), np.float32(poses[src]))
            np.testing.assert_array_equal(item["driving_pose"].numpy(), np.float32(poses[drv]))
            flipped += src > drv
    assert flipped > 0  # some pairs were time-flipped (source later than driving)


def test_jitter_shared_within_clip(tiny):
    """An identity with a single frame: source and driving are that frame; one jitter draw per
    clip makes them identical to each other but different from the plain frame."""
    root, _ = tiny
    csv = root / "animeceleb" / "combined_pose.csv"
    lines = csv.read_text().splitlines()
    keep = [lines[0]] + [l for l in lines[1:] if not l.startswith("0,") or "m000a_0000" in l]
    csv.write_text("\n".join(keep) + "\n")
    ds = make(root, image_size=None, color_jitter=ColorJitterParams(0.3, 0.3, 0.3, 0.1), time_flip=False)
    plain = to_float_chw(load_rgb(root / "animeceleb" / "rotation" / "0" / "m000a" / "m000a_0000.png"))
    for epoch in range(3):
        ds.set_epoch(epoch)
        item = ds[0]
        assert item["name"] == "0"
        assert torch.equal(item["source"], item["driving"])
        assert not torch.equal(item["source"], plain)


def test_reproducible_per_seed_epoch_index(tiny):
    root, _ = tiny
    a, b = make(root, image_size=32, seed=3), make(root, image_size=32, seed=3)
    for ds in (a, b):
        ds.set_epoch(5)
    for key in ("source", "driving", "source_pose"):
        assert torch.equal(a[1][key], b[1][key])
    loader = build_dataloader(a, batch_size=2, train=True)
    set_loader_epoch(loader, 2)
    batch = next(iter(loader))
    assert batch["source"].shape == (2, 3, 32, 32) and batch["source_pose"].shape == (2, 20)
    assert a.epoch == 2 and loader.sampler.epoch == 2
    sharded = build_dataloader(a, batch_size=1, train=True, rank=1, world_size=2)
    assert len(sharded) == 1


def test_deca_variant(tiny):
    root, _ = tiny
    anime = make(root, image_size=32)
    ds = AnimeCelebDecaDataset(anime, root / "vox", "train")
    assert len(ds) == 2 and ds.vox_ids == ["id00001", "id00002"]
    item = ds[1]
    assert set(item) == {"anime", "vox"}
    assert item["anime"]["source"].shape == (3, 32, 32) and item["anime"]["source_pose"].shape == (20,)
    vox = item["vox"]
    assert vox["name"].startswith("id00002#") and vox["source"].shape == (3, 32, 32)
    assert vox["source_pose"].shape == (156,) and vox["source_pose"].dtype == torch.float32
    from scipy.io import loadmat

    mats = sorted((root / "vox" / "deca" / "train" / vox["name"]).glob("*.mat"))
    codes = [np.concatenate([loadmat(m)[k].reshape(-1) for k in ("shape", "exp", "pose")]) for m in mats]
    assert any(np.array_equal(c.astype(np.float32), vox["source_pose"].numpy()) for c in codes)
    valid = AnimeCelebDecaDataset(make(root, "valid", image_size=32), root / "vox", "valid")
    assert len(valid) == 1 and valid[0]["vox"]["name"].startswith("id00003#")
