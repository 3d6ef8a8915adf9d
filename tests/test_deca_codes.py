"""DECA code files: .mat I/O, code156 / EDTN input, the packed format, its packer and reader."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.io import loadmat, savemat

from deca_edit.codes import (CODE_SHAPES, CodeFileError, PackedCodes, code156, edtn_input_from_code156,
                             pack_code_splits, pack_code_tree, read_code_mat, write_code_mat,
                             write_packed_codes)
from helpers.local import load_script

REPO = Path(__file__).resolve().parents[1]
CODE_KEYS = ("shape", "tex", "exp", "pose", "cam", "light", "detail")


@pytest.fixture(scope="module")
def pack_cli():
    return load_script("pack_deca_codes")


@pytest.fixture(scope="module")
def vox_deca(authors_dir):
    return authors_dir / "vox_deca"


@pytest.fixture(scope="module")
def tiny_vox(generator_kit):
    return generator_kit / "tiny_dataset" / "vox"


def _random_codes(rng, with_detail=True):
    keys = CODE_KEYS if with_detail else CODE_KEYS[:-1]
    return {k: rng.standard_normal(CODE_SHAPES[k]).astype(np.float32) for k in keys}


# ----------------------------------------------------------------------------- .mat files
def test_mat_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    codes = _random_codes(rng)
    given = dict(codes, exp=torch.from_numpy(codes["exp"][0]), light=codes["light"].reshape(27))
    path = write_code_mat(tmp_path / "v.mp4" / "0000003.mat", given)
    assert sorted(p.name for p in path.parent.iterdir()) == ["0000003.mat"]  # no temp file left
    back = read_code_mat(path)
    raw = loadmat(path)
    for key in CODE_KEYS:
        assert back[key].dtype == np.float32 and back[key].shape == CODE_SHAPES[key]
        np.testing.assert_array_equal(back[key], codes[key])
        assert raw[key].dtype == np.float32 and raw[key].shape == CODE_SHAPES[key]
    with pytest.raises(ValueError, match="exp"):
        write_code_mat(tmp_path / "x.mat", dict(codes, exp=np.zeros(49)))
    with pytest.raises(ValueError, match="NaN"):
        write_code_mat(tmp_path / "x.mat", dict(codes, cam=np.full(3, np.nan)))
    assert not (tmp_path / "x.mat").exists()


def test_read_real_mat_and_code156_match_the_kit(vox_deca, generator_kit):
    ref = np.load(generator_kit / "generator_vectors.npz")
    for frame, expected in zip(ref["edtn_frames"], ref["edtn_deca_codes"]):
        path = vox_deca / f"{int(frame):07d}.mat"
        codes = read_code_mat(path, keys=CODE_KEYS)
        raw = loadmat(path)
        for key in CODE_KEYS:
            np.testing.assert_array_equal(codes[key], raw[key])
        c156 = code156(codes)
        assert c156.shape == (156,) and c156.dtype == np.float32
        np.testing.assert_array_equal(c156, expected)
    batched = code156({k: np.repeat(codes[k], 2, axis=0) for k in ("shape", "exp", "pose")}, batched=True)
    assert batched.shape == (2, 156)
    with pytest.raises(ValueError, match="batched"):
        code156({k: np.repeat(codes[k], 2, axis=0) for k in ("shape", "exp", "pose")})


def test_edtn_input_numpy_and_torch():
    code = np.arange(2 * 3 * 156, dtype=np.float32).reshape(2, 3, 156)
    out = edtn_input_from_code156(code)
    assert isinstance(out, np.ndarray) and out.shape == (2, 3, 53)
    np.testing.assert_array_equal(out[1, 2], np.r_[code[1, 2, 100:150], code[1, 2, 153:156]])
    tensor = torch.from_numpy(code[0, 0]).requires_grad_(True)
    t_out = edtn_input_from_code156(tensor)
    assert isinstance(t_out, torch.Tensor) and t_out.shape == (53,)
    np.testing.assert_array_equal(t_out.detach().numpy(), out[0, 0])
    t_out.sum().backward()
    assert tensor.grad[100:150].eq(1).all() and tensor.grad[150:153].eq(0).all() and tensor.grad[153:].eq(1).all()
    with pytest.raises(ValueError, match="156"):
        edtn_input_from_code156(np.zeros((4, 155)))


@pytest.mark.parametrize("problem", ["corrupt", "wrong_shape", "nan", "missing_key"])
def test_bad_mat_raises_code_file_error_naming_path(tmp_path, problem):
    codes = _random_codes(np.random.default_rng(1), with_detail=False)
    path = tmp_path / f"{problem}.mat"
    if problem == "corrupt":
        path.write_bytes(b"MATLAB 5.0 MAT-file, this is not a mat file" + bytes(range(256)))
    else:
        if problem == "wrong_shape":
            codes["exp"] = np.zeros((1, 49), np.float32)
        elif problem == "nan":
            codes["pose"][0, 2] = np.nan
        else:
            del codes["cam"]
        savemat(path, codes)
    with pytest.raises(CodeFileError) as info:
        read_code_mat(path)
    assert str(path) in str(info.value)
    assert isinstance(info.value, ValueError)


# ----------------------------------------------------------------------------- packing
def test_pack_flat_folder_of_real_codes(vox_deca, tmp_path):
    files = sorted(vox_deca.glob("*.mat"))
    assert len(files) == 308
    result = pack_code_tree(vox_deca, tmp_path / "a" / "vox", progress=False)
    assert (result.num_frames, result.num_videos, result.skipped) == (308, 1, [])
    packed = PackedCodes(tmp_path / "a" / "vox")
    assert len(packed) == 308 and packed.codes.shape == (308, 159) and packed.codes.dtype == np.float32
    assert isinstance(packed.codes, np.memmap)
    index = json.loads((tmp_path / "a" / "vox.json").read_text())
    assert index["format"] == "edtn-packed-codes/1"
    assert index["columns"] == {"shape": [0, 100], "exp": [100, 150], "pose": [150, 156], "cam": [156, 159]}
    assert index["videos"] == [{"name": "vox_deca", "start": 0, "count": 308, "frames": [f.stem for f in files]}]
    for row, path in enumerate(files):
        raw = loadmat(path)
        np.testing.assert_array_equal(packed.code156[row], np.concatenate([raw[k][0] for k in ("shape", "exp", "pose")]))
        np.testing.assert_array_equal(packed.column("cam")[row], raw["cam"][0])
    assert packed.row_of("vox_deca", "0000100") == 100
    np.testing.assert_array_equal(packed.video(0), packed.codes[:])
    # determinism: a second pack (also through reader processes) is byte-identical
    pack_code_tree(vox_deca, tmp_path / "b" / "vox", progress=False, workers=2)
    for suffix in (".npy", ".json"):
        assert (tmp_path / "a" / f"vox{suffix}").read_bytes() == (tmp_path / "b" / f"vox{suffix}").read_bytes()
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["vox.json", "vox.npy"]


def test_pack_split_tree_with_extra_columns(tiny_vox, tmp_path):
    results = pack_code_splits(tiny_vox, tmp_path, columns=("shape", "exp", "pose", "cam", "light", "detail"),
                               progress=False)
    assert {s: (r.num_videos, r.num_frames) for s, r in results.items()} == {"train": (2, 8), "test": (1, 4)}
    for split in ("train", "test"):
        packed = PackedCodes(tmp_path / f"{split}.npy")
        videos = sorted(p for p in (tiny_vox / "deca" / split).iterdir())
        assert packed.video_names == [v.name for v in videos]
        assert packed.codes.shape[1] == 159 + 27 + 128
        for video in videos:
            info = packed.video_info(video.name)
            frames = sorted(video.glob("*.mat"))
            assert list(info.frames) == [f.stem for f in frames]
            for frame in frames:
                raw = loadmat(frame)
                row = packed.row_of(video.name, frame.stem)
                np.testing.assert_array_equal(packed.code156[row], code156(raw))
                np.testing.assert_array_equal(packed.column("light")[row], raw["light"])
                np.testing.assert_array_equal(packed.column("detail")[row], raw["detail"][0])
    assert packed.column("light").shape == (4, 9, 3)
    with pytest.raises(KeyError, match="tex"):
        packed.column("tex")


def test_pack_cli_on_split_tree_is_deterministic(pack_cli, tiny_vox, tmp_path, capsys):
    assert pack_cli.main([str(tiny_vox), str(tmp_path / "one"), "--no-progress"]) == 0
    assert pack_cli.main([str(tiny_vox), str(tmp_path / "two"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "train" in out and "test" in out
    for name in ("train.npy", "train.json", "test.npy", "test.json"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()
    assert pack_cli.main([str(tiny_vox), str(tmp_path / "x"), "--splits", "val", "--no-progress"]) == 1


@pytest.fixture()
def tree_with_bad_files(tiny_vox, tmp_path):
    root = tmp_path / "vox"
    shutil.copytree(tiny_vox / "deca", root / "deca")
    video = sorted((root / "deca" / "train").iterdir())[1]
    corrupt = video / "0000001.mat"
    corrupt.write_bytes(b"\x00garbage" * 50)
    wrong = video / "0000002.mat"
    codes = read_code_mat(wrong, keys=CODE_KEYS)
    codes["pose"] = np.zeros((1, 5), np.float32)
    savemat(wrong, codes)
    return root, [corrupt, wrong]


def test_bad_files_are_reported_and_skipped(pack_cli, tree_with_bad_files, tmp_path, capsys):
    root, bad = tree_with_bad_files
    with pytest.raises(CodeFileError, match=re.escape(str(bad[0]))):
        pack_code_tree(root / "deca" / "train", tmp_path / "out" / "train", progress=False)
    assert not (tmp_path / "out" / "train.json").exists() and not (tmp_path / "out" / "train.npy").exists()

    assert pack_cli.main([str(root), str(tmp_path / "cli"), "--no-progress"]) == 1
    assert str(bad[0]) in capsys.readouterr().err

    assert pack_cli.main([str(root), str(tmp_path / "cli"), "--no-progress", "--skip-bad"]) == 0
    out = capsys.readouterr().out
    assert str(bad[0]) in out and str(bad[1]) in out and "(1, 5)" in out
    packed = PackedCodes(tmp_path / "cli" / "train")
    assert len(packed) == 6
    info = packed.videos[1]
    assert (info.start, info.count, info.frames) == (4, 2, ("0000000", "0000003"))
    good = loadmat(bad[0].parent / "0000003.mat")
    np.testing.assert_array_equal(packed.code156[5], code156(good))
    skipped = json.loads((tmp_path / "cli" / "train.json").read_text())["skipped"]
    assert [s["path"] for s in skipped] == [f"{bad[0].parent.name}/{p.name}" for p in bad]


def test_write_packed_codes_and_reader_errors(tmp_path):
    rng = np.random.default_rng(2)
    batch = {k: rng.standard_normal((3,) + CODE_SHAPES[k][1:] if CODE_SHAPES[k][0] == 1 else (3,) + CODE_SHAPES[k])
             .astype(np.float32) for k in CODE_KEYS}
    write_packed_codes(tmp_path / "mem", [("b", ["0", "1", "2"], batch), ("a", [], batch)])
    packed = PackedCodes(tmp_path / "mem.json")
    assert packed.video_names == ["b"] and len(packed) == 3
    np.testing.assert_array_equal(packed.column("exp"), batch["exp"])
    np.testing.assert_array_equal(packed.code156, code156(batch, batched=True))
    with pytest.raises(CodeFileError, match="missing"):
        PackedCodes(tmp_path / "nothing")
    np.save(tmp_path / "mem.npy", np.zeros((2, 159), np.float32))
    with pytest.raises(CodeFileError, match="does not match"):
        PackedCodes(tmp_path / "mem")
    with pytest.raises(ValueError, match="start with"):
        write_packed_codes(tmp_path / "bad", [], columns=("exp", "shape", "pose"))
