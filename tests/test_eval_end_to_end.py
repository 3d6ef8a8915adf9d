"""Evaluation end to end on a tiny stand-in set: protocol → render → FID + KDR + geometry → tables.

Stand-ins: two VoxCeleb-layout videos made of the authors' example codes and frames, the kit's tiny
AnimeCeleb (identities 9 and 10), a 64² generator with filled weights, an Inception stand-in file,
the filled anime landmark model, a TorchScript 2D-FAN-4 stand-in, the synthetic FLAME and the
authors' EDTN.pt. The FID uses Inception's 192-d features here to keep CI fast (the 2048-d
standard path is tested in test_eval_metrics.py); everything else is the real code path.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from reenact.evaluation import experiments
from reenact.evaluation.experiments import EvalSettings, Method, run_table
from reenact.evaluation.protocol import VoxCodes, read_protocol
from reenact.evaluation.render import RenderSettings, render_protocol

from helpers.eval_standins import (anime_landmarker_checkpoint, fan_standin, inception_standin,
                                   small_generator_checkpoint)

REPO = Path(__file__).resolve().parents[1]
VIDEOS = {"id00001#aaaa#000001#000100.mp4": range(0, 6), "id00002#bbbb#000001#000100.mp4": range(100, 106)}
FRAMES_PER_PAIR = 3
FID_LAYER = "192"


def _load_script(name):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def world(authors_dir, generator_kit, deca_dir, synthetic_flame_path, tmp_path_factory):
    root = tmp_path_factory.mktemp("eval_world")
    for video, frames in VIDEOS.items():
        for sub, src, ext in (("deca", "vox_deca", ".mat"), ("images", "vox_images", ".png")):
            folder = root / "vox" / sub / "test" / video
            folder.mkdir(parents=True)
            for i in frames:
                shutil.copy(authors_dir / src / f"{i:07d}{ext}", folder / f"{i:07d}{ext}")
    assets = root / "assets"
    assets.mkdir()
    tiny = generator_kit / "tiny_dataset"
    w = {
        "root": root, "tiny": tiny, "anime_root": tiny / "animeceleb", "out": root / "results",
        "codes": root / "vox" / "deca" / "test", "images": root / "vox" / "images" / "test",
        "generator": small_generator_checkpoint(assets / "gen64.pt"),
        "inception": inception_standin(assets / "weights-inception-2015-12-05-6726825d.pth"),
        "anime_landmarker": anime_landmarker_checkpoint(assets / "mmpose_anime-face_hrnetv2.pth"),
        "fan": fan_standin(assets / "2DFAN4-11f355bf06.pth.tar"),
        "edtn": authors_dir / "EDTN.pt", "basis": authors_dir / "transform_matrix_08_30.npy",
        "flame": synthetic_flame_path, "embedding": deca_dir / "landmark_embedding.npy",
    }
    w["protocol"] = w["out"] / "protocol.csv"
    make = _load_script("make_protocol")
    args = ["--vox-codes", str(w["codes"]), "--anime-root", str(w["anime_root"]), "--test-list",
            str(tiny / "lists" / "test_list.txt"), "--out", str(w["protocol"]), "--frames", str(FRAMES_PER_PAIR)]
    assert make.main(args) == 0
    with pytest.raises(SystemExit):  # a protocol is made once
        make.main(args)
    return w


def _settings(w, **overrides):
    files = RenderSettings(generator_path=str(w["generator"]), basis_path=str(w["basis"]),
                           flame_path=str(w["flame"]), landmark_embedding_path=str(w["embedding"]))
    values = dict(protocol=w["protocol"], vox_codes=w["codes"], vox_images=w["images"], anime_root=w["anime_root"],
                  out=w["out"], render=files, inception_path=str(w["inception"]), fid_feature_layer=FID_LAYER,
                  anime_landmarker_path=str(w["anime_landmarker"]), face_landmarker_path=str(w["fan"]),
                  human_box="frame", real_per_identity=4, device="cpu", progress=False,
                  trust_checkpoint=True)   # the 2D-FAN-4 stand-in is not the verified release
    values.update(overrides)
    return EvalSettings(**values)


TABLE1 = [Method("EDTN", "edtn", None), Method("basis_fit", "basis_fit"), Method("vertex_fit", "vertex_fit")]


@pytest.fixture(scope="module")
def table1(world):
    methods = [Method("EDTN", "edtn", str(world["edtn"])), *TABLE1[1:]]
    return run_table("table1", methods, _settings(world))


def test_table1_end_to_end(world, table1):
    out, pairs = world["out"], read_protocol(world["protocol"])
    assert [p.identity for p in pairs] and {p.identity for p in pairs} <= {"9", "10"}
    rows = {r["method"]: r for r in table1["rows"]}
    assert list(rows) == ["EDTN", "basis_fit", "vertex_fit"]
    for name, row in rows.items():
        for key in ("fid", "kdr", "vertex_rmse_mm", "landmark", "eye", "lip"):
            assert np.isfinite(row[key]), (name, key)
        assert row["frames"] == row["kdr_frames"] + len(pairs) == 2 * FRAMES_PER_PAIR
        assert row["fid_fake_images"] == 2 * FRAMES_PER_PAIR and row["fid_real_images"] == 8
    # vertex_fit is the per-frame optimum of the vertex term: no mapping has a lower vertex error
    assert rows["vertex_fit"]["vertex"] <= min(rows["EDTN"]["vertex"], rows["basis_fit"]["vertex"])
    # every number lands in the Markdown, CSV and JSON tables (and the chart is a PNG)
    md = (out / "table1.md").read_text()
    stored = json.loads((out / "table1.json").read_text())
    csv_lines = (out / "table1.csv").read_text().splitlines()
    assert csv_lines[0] == "method,fid,kdr,vertex_rmse_mm,landmark,eye,lip,frames" and len(csv_lines) == 4
    for name, row in rows.items():
        assert f"| {name} | {row['fid']:.2f} | {row['kdr']:.4f} | {row['vertex_rmse_mm']:.3f} |" in md
        assert next(r for r in stored["rows"] if r["method"] == name)["kdr"] == row["kdr"]
    assert "NOT comparable" in md and "| EDTN | 23.15 | 0.236 |" in md
    with Image.open(out / "table1.png") as chart:
        assert chart.format == "PNG"
    # the renders: frames at the generator's resolution and poses equal to infer.py's for the frames
    for pair in pairs:
        folder = out / "render" / "EDTN" / pair.pair
        for frame in pair.frames:
            with Image.open(folder / f"{frame}.png") as img:
                assert img.size == (64, 64)
    from reenact.pipeline import run as infer

    pair = pairs[0]
    result = infer({"driving": str(world["codes"] / pair.video), "render": "none", "edtn_path": str(world["edtn"]),
                    "device": "cpu", "progress": False})
    picks = [VIDEOS[pair.video].index(int(f)) for f in pair.frames]
    np.testing.assert_allclose(np.load(out / "render" / "EDTN" / pair.pair / "poses.npy"), result.poses[picks],
                               rtol=0, atol=1e-6)


def test_table_run_is_idempotent(world, table1, monkeypatch):
    def must_not_run(*args, **kwargs):
        raise AssertionError("recomputed although nothing changed")

    monkeypatch.setattr(experiments, "FidScorer", must_not_run)
    monkeypatch.setattr("deca_edit.crop.FanLandmarker", must_not_run)
    monkeypatch.setattr("reenact.stages.AnimeRenderer", must_not_run)
    monkeypatch.setattr("reenact.evaluation.anime_landmarks.AnimeLandmarkDetector", must_not_run)
    methods = [Method("EDTN", "edtn", str(world["edtn"])), *TABLE1[1:]]
    again = run_table("table1", methods, _settings(world))
    assert again["rows"] == table1["rows"]
    assert all(r["rendered"] == 0 for r in again["render"].values())


def test_render_resumes_and_leaves_nothing_half_written(world, monkeypatch):
    pairs = read_protocol(world["protocol"])
    codes = VoxCodes(world["codes"])
    out = world["root"] / "render_crash"
    settings = RenderSettings(mapping="basis_fit", basis_path=str(world["basis"]),
                              generator_path=str(world["generator"]), device="cpu")
    from reenact import stages

    original, calls = stages.AnimeRenderer.render, []

    def crash_on_second_pair(self, poses):
        calls.append(len(poses))
        if len(calls) > 1:
            raise RuntimeError("simulated crash")
        return original(self, poses)

    monkeypatch.setattr(stages.AnimeRenderer, "render", crash_on_second_pair)
    with pytest.raises(RuntimeError, match="simulated crash"):
        render_protocol(pairs, codes, world["anime_root"], out, settings, progress=False)
    assert (out / pairs[0].pair / "poses.npy").is_file()
    assert not (out / pairs[1].pair / "poses.npy").exists()
    assert not [p for p in out.rglob("*") if p.name.startswith(".") and p.name.endswith(".tmp")]
    monkeypatch.setattr(stages.AnimeRenderer, "render", original)
    report = render_protocol(pairs, codes, world["anime_root"], out, settings, progress=False)
    assert (report["rendered"], report["skipped"], report["frames"]) == (1, 1, FRAMES_PER_PAIR)
    # shards split the pairs; a folder made with another method is refused
    assert render_protocol(pairs, codes, world["anime_root"], out, settings, shard="1/2", progress=False)["pairs"] == 1
    other = RenderSettings(mapping="edtn", edtn_path=str(world["edtn"]), generator_path=str(world["generator"]),
                           device="cpu")
    with pytest.raises(ValueError, match="holds a render of another settings"):
        render_protocol(pairs, codes, world["anime_root"], out, other, progress=False)


def test_ablation_table(world, table1, tmp_path):
    methods = [Method(name, "edtn", str(world["edtn"])) for name in ("vertex", "landmark", "vertex+landmark", "all")]
    result = run_table("ablation", methods, _settings(world))
    rows = {r["method"]: r for r in result["rows"]}
    assert rows["all"]["paper_kdr"] == 0.2360 and "fid" not in rows["all"]
    assert rows["vertex"]["kdr"] == pytest.approx(rows["all"]["kdr"])  # same checkpoint, same frames
    md = (world["out"] / "ablation.md").read_text()
    assert "| vertex+landmark |" in md and "Paper KDR" in md and "FID" not in md.split("\n\n")[1]


def test_cli_bad_inputs_give_one_clear_message(world, table1, tmp_path, capsys):
    import csv

    evaluate = _load_script("evaluate")
    header, row = list(csv.reader(world["protocol"].read_text().splitlines()))[:2]
    common = ["--vox-codes", str(world["codes"]), "--vox-images", str(world["images"]), "--anime-root",
              str(world["anime_root"]), "--out", str(tmp_path / "res"), "--generator", str(world["generator"]),
              "--edtn", str(world["edtn"]), "--basis", str(world["basis"]), "--flame", str(world["flame"]),
              "--landmark-embedding", str(world["embedding"]), "--device", "cpu", "--no-progress"]
    for column, value in ((1, "id09999#gone.mp4"), (3, "basis/nobody/basis.png")):
        broken = list(row)
        broken[column] = value
        bad = tmp_path / "bad_protocol.csv"
        bad.write_text(",".join(header) + "\n" + ",".join(broken) + "\n")
        with pytest.raises(SystemExit) as info:
            evaluate.main(["table1", "--protocol", str(bad), *common])
        assert info.value.code == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "bad_protocol.csv" in err[0] and value in err[0], err
    assert not (tmp_path / "res").exists()  # stopped before any work
    empty = tmp_path / "empty"
    empty.mkdir()
    small = tmp_path / "small"
    small.mkdir()
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(small / "0.png")
    real = next(world["out"].glob("real_64px_*"))
    for fake, message in ((empty, f"fake image folder {empty} holds no images"),
                          (small, f"image {small / '0.png'} is 32x32, but")):
        with pytest.raises(SystemExit):
            evaluate.main(["fid", "--real", str(real), "--fake", str(fake), "--inception", str(world["inception"]),
                           "--out", str(tmp_path / "fid.json"), "--device", "cpu"])
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err
    assert not (tmp_path / "fid.json").exists()


def test_cli_fid_and_kdr_write_json(world, table1, tmp_path):
    evaluate = _load_script("evaluate")
    render_dir = world["out"] / "render" / "EDTN"
    assert evaluate.main(["kdr", "--protocol", str(world["protocol"]), "--vox-images", str(world["images"]),
                          "--fake", str(render_dir), "--out", str(tmp_path / "kdr.json"), "--human-box", "frame",
                          "--face-landmarker", str(world["fan"]), "--anime-landmarker", str(world["anime_landmarker"]),
                          "--trust-checkpoint", "--device", "cpu", "--no-progress"]) == 0
    kdr = json.loads((tmp_path / "kdr.json").read_text())
    assert kdr["kdr"] == pytest.approx(next(r for r in table1["rows"] if r["method"] == "EDTN")["kdr"])
    real = next(world["out"].glob("real_64px_*"))
    assert evaluate.main(["fid", "--real", str(real), "--fake", str(render_dir),
                          "--inception", str(world["inception"]), "--fid-feature-layer", FID_LAYER,
                          "--out", str(tmp_path / "fid.json"), "--device", "cpu", "--no-progress"]) == 0
    fid = json.loads((tmp_path / "fid.json").read_text())
    assert fid["fid"] == pytest.approx(next(r for r in table1["rows"] if r["method"] == "EDTN")["fid"], rel=1e-6)
