"""EDTN training: Hydra config (presets, typed validation), a short run that learns, exact
resume, the train.py entry point and scripts/eval_edtn.py.

Runs on CPU with the kit's full-size synthetic FLAME, the authors' basis and the 308 example
codes (four pseudo-videos of 77 frames: three train, one test), small batches, fast loss + cache.
"""
from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import edtn.config  # noqa: F401  (registers the schema)
from deca_edit.codes import pack_code_tree
from edtn.config import validate_config
from edtn.model import load_edtn
from edtn.train_loop import CHECKPOINT_FORMAT, run

REPO = Path(__file__).resolve().parents[1]
CONFIG_DIR = str(REPO / "configs" / "edtn")
PRESETS = ["paper", "ablation_vertex", "ablation_landmark", "ablation_vertex_landmark", "ablation_all"]
N_CLIPS, CLIP_LEN = 4, 77
# Small-run settings: 231 training frames, batch 32 -> 7 steps per epoch.
SMALL = ["device=cpu", "data.batch_size=32", "data.eval_batch_size=128", "data.num_workers=0",
         "log.progress=false", "log.every=5", "log.figure_every=0", "checkpoint.every=0"]


@pytest.fixture(autouse=True)
def _one_thread():
    # These steps are tiny; extra threads only add contention on a shared CI box.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def codes(authors_dir, tmp_path_factory) -> dict:
    """Packed pseudo-videos + train/test list files."""
    base = tmp_path_factory.mktemp("edtn_codes")
    files = sorted((authors_dir / "vox_deca").glob("*.mat"))
    for k in range(N_CLIPS):
        video = base / "tree" / f"clip{k}.mp4"
        video.mkdir(parents=True)
        for f in files[k * CLIP_LEN:(k + 1) * CLIP_LEN]:
            os.symlink(f, video / f.name)
    prefix = pack_code_tree(base / "tree", base / "codes" / "all", progress=False).prefix
    (base / "train.txt").write_text("clip0.mp4\nclip1.mp4\nclip2.mp4\n")
    (base / "test.txt").write_text("clip3.mp4\n")
    return {"prefix": prefix, "train_list": base / "train.txt", "test_list": base / "test.txt"}


@pytest.fixture(scope="module")
def kit_overrides(codes, synthetic_flame_path, landmark_embedding_path, authors_dir) -> list[str]:
    return SMALL + [
        f"data.train={codes['prefix']}", "data.test=null",
        f"data.train_list={codes['train_list']}", f"data.test_list={codes['test_list']}",
        f"loss.flame_model={synthetic_flame_path}",
        f"loss.landmark_embedding={landmark_embedding_path}",
        f"loss.basis={authors_dir / 'transform_matrix_08_30.npy'}",
    ]


def compose_train(overrides: list[str]):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


# ----------------------------------------------------------------------------- config
@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_composes(preset):
    cfg = compose_train([f"experiment={preset}", "data.train=some/prefix"])
    typed = validate_config(cfg)
    assert typed.epochs == 50 and typed.data.batch_size == 512
    assert typed.optim.lr == pytest.approx(1e-4) and list(typed.optim.betas) == [0.5, 0.999]
    assert typed.loss.impl.value == "fast"
    weights = (typed.loss.vertex, typed.loss.landmark, typed.loss.eye, typed.loss.lip)
    expected = {"paper": (100, 1, 1, 1), "ablation_all": (100, 1, 1, 1),
                "ablation_vertex": (100, 0, 0, 0), "ablation_landmark": (0, 1, 0, 0),
                "ablation_vertex_landmark": (100, 1, 0, 0)}[preset]
    assert weights == expected


def test_default_config_matches_the_original_code():
    cfg = validate_config(compose_train(["data.train=x"]))
    assert cfg.epochs == 100 and cfg.optim.lr == pytest.approx(1e-4)
    assert isinstance(cfg.optim.lr, float) and isinstance(cfg.loss.vertex, float)


@pytest.mark.parametrize("key", ["optim.lr", "loss.vertex", "loss.eye"])
def test_string_where_a_float_belongs_names_the_key(key):
    with pytest.raises(Exception) as info:          # Hydra: at compose time
        compose_train([f"{key}=abc"])
    assert key in str(info.value)
    plain = OmegaConf.to_container(compose_train(["data.train=x"]))
    section, name = key.split(".")
    plain[section][name] = "abc"
    with pytest.raises(ValueError) as info:         # run(cfg) without Hydra
        validate_config(plain)
    assert key in str(info.value)


def test_unknown_loss_impl_is_rejected():
    with pytest.raises(Exception, match="loss.impl"):
        compose_train(["loss.impl=fastest"])


def test_data_loader_settings_are_checked():
    cfg = validate_config(compose_train(["data.train=x"]))
    assert cfg.data.loader.value == "resident" and cfg.data.on_device is False
    with pytest.raises(Exception, match="data.loader"):
        compose_train(["data.train=x", "data.loader=threads"])
    with pytest.raises(ValueError, match="data.on_device"):
        validate_config(compose_train(["data.train=x", "data.loader=dataloader", "data.on_device=true"]))


# ----------------------------------------------------------------------------- training
def test_short_run_halves_validation_loss(kit_overrides, tmp_path):
    run_dir = tmp_path / "run"
    out = run(compose_train(kit_overrides + [
        "epochs=30", "optim.lr=3e-4", f"run_dir={run_dir}", "log.figure_every=50",
        "checkpoint.every=15"]))
    initial, best = out["initial_val"]["total"], out["best_val"]
    assert math.isfinite(best) and best <= 0.5 * initial, (initial, best)
    assert out["step"] == 30 * 7

    # run dir: resolved config, log, TensorBoard events, checkpoints
    assert (run_dir / "config.yaml").is_file() and (run_dir / "train.log").is_file()
    assert list((run_dir / "tb").glob("events.out.tfevents.*"))
    names = {p.name for p in (run_dir / "checkpoints").iterdir()}
    assert {"last.pt", "best.pt", "epoch_0015.pt", "epoch_0030.pt"} <= names
    ckpt = torch.load(run_dir / "checkpoints" / "best.pt", map_location="cpu", weights_only=True)
    assert ckpt["format"] == CHECKPOINT_FORMAT and isinstance(ckpt["config"], dict)
    assert ckpt["config"]["loss"]["impl"] == "fast" and ckpt["best_val"] == pytest.approx(best)
    model = load_edtn(run_dir / "checkpoints" / "best.pt", "cpu")   # our checkpoints load too
    assert model(torch.zeros(1, 53)).shape == (1, 17)

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(run_dir / "tb"), size_guidance={"images": 0}).Reload()
    tags = set(events.Tags()["scalars"])
    for term in ("vertex", "landmark", "eye", "lip", "total"):
        assert f"train/{term}" in tags and f"val/{term}" in tags
    assert {"train/lr", "train/samples_per_s", "train/samples_per_cpu_s"} <= tags
    assert "train/landmarks_and_morphs" in events.Tags()["images"]


def _weights(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def test_resume_is_bit_identical(kit_overrides, tmp_path):
    base = kit_overrides + ["epochs=4"]
    full = run(compose_train(base + [f"run_dir={tmp_path / 'full'}"]))
    # stopped at an epoch boundary, continued in a new run dir from an explicit path
    run(compose_train(kit_overrides + ["epochs=2", f"run_dir={tmp_path / 'a'}"]))
    resumed = run(compose_train(base + [f"run_dir={tmp_path / 'a2'}",
                                        f"resume={tmp_path / 'a' / 'checkpoints' / 'last.pt'}"]))
    # stopped inside epoch 2 (step 10 of 7/epoch), continued with resume=auto in the same dir
    run(compose_train(base + ["max_steps=10", f"run_dir={tmp_path / 'b'}"]))
    ckpt = torch.load(tmp_path / "b" / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
    assert (ckpt["epoch"], ckpt["batch_in_epoch"], ckpt["step"]) == (1, 3, 10)
    resumed_mid = run(compose_train(base + ["resume=auto", f"run_dir={tmp_path / 'b'}"]))

    assert full["step"] == resumed["step"] == resumed_mid["step"] == 28
    reference = _weights(tmp_path / "full" / "checkpoints" / "last.pt")
    for other in (tmp_path / "a2", tmp_path / "b"):
        weights = _weights(other / "checkpoints" / "last.pt")
        for key, value in reference.items():
            assert torch.equal(value, weights[key]), (other, key)
    assert resumed["last_val"] == full["last_val"] == resumed_mid["last_val"]


def _train_scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0}).Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)]
            for tag in events.Tags()["scalars"] if tag.startswith("train/") and "samples" not in tag}


def test_resident_loader_trains_bit_identically_to_the_dataloader(kit_overrides, tmp_path):
    """100 steps (15 epochs of 7, with validation) through the per-sample DataLoader, the
    resident loader and the resident loader with the data on the (CPU) device: every logged loss
    of every step and the final weights are bit-identical."""
    base = kit_overrides + ["epochs=15", "max_steps=100", "log.every=1"]
    runs = {"dataloader": ["data.loader=dataloader"], "resident": ["data.loader=resident"],
            "on_device": ["data.loader=resident", "data.on_device=true"]}
    results, scalars = {}, {}
    for name, extra in runs.items():
        results[name] = run(compose_train(base + extra + [f"run_dir={tmp_path / name}"]))
        scalars[name] = _train_scalars(tmp_path / name)
    reference = scalars["dataloader"]
    assert len(reference["train/total"]) == 100 and results["dataloader"]["step"] == 100
    weights = _weights(tmp_path / "dataloader" / "checkpoints" / "last.pt")
    for name in ("resident", "on_device"):
        assert scalars[name] == reference, name       # exact float equality, all terms, all steps
        assert results[name]["initial_val"] == results["dataloader"]["initial_val"]
        other = _weights(tmp_path / name / "checkpoints" / "last.pt")
        assert all(torch.equal(value, other[key]) for key, value in weights.items()), name


def test_reference_loss_impl_trains_the_same_as_fast(kit_overrides, tmp_path):
    fast = run(compose_train(kit_overrides + ["epochs=1", "max_steps=3", f"run_dir={tmp_path / 'f'}"]))
    ref = run(compose_train(kit_overrides + ["epochs=1", "max_steps=3", "loss.impl=reference",
                                             f"run_dir={tmp_path / 'r'}"]))
    for key, value in fast["initial_val"].items():
        assert ref["initial_val"][key] == pytest.approx(value, rel=1e-4)
    a, b = _weights(tmp_path / "f" / "checkpoints" / "last.pt"), _weights(tmp_path / "r" / "checkpoints" / "last.pt")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-6)


def test_train_py_entry_point_writes_into_the_hydra_run_dir(kit_overrides, tmp_path):
    run_dir = tmp_path / "hydra_run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(REPO / "train.py"), *kit_overrides, "epochs=1",
                           f"hydra.run.dir={run_dir}"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (run_dir / ".hydra" / "config.yaml").is_file()
    assert (run_dir / "checkpoints" / "last.pt").is_file()
    assert list((run_dir / "tb").glob("events.out.tfevents.*"))

    bad = subprocess.run([sys.executable, str(REPO / "train.py"), *kit_overrides, "optim.lr=abc",
                          f"hydra.run.dir={run_dir}_bad"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and "optim.lr" in bad.stderr


# ----------------------------------------------------------------------------- evaluation
def test_eval_script_on_authors_weights(authors_dir, synthetic_flame_path, landmark_embedding_path,
                                        tmp_path):
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import eval_edtn
    finally:
        sys.path.remove(str(REPO / "scripts"))
    common = ["--checkpoint", str(authors_dir / "EDTN.pt"), "--codes", str(authors_dir / "vox_deca"),
              "--flame-model", str(synthetic_flame_path),
              "--landmark-embedding", str(landmark_embedding_path),
              "--basis", str(authors_dir / "transform_matrix_08_30.npy"), "--device", "cpu"]
    report = eval_edtn.main(common + ["--out", str(tmp_path / "fast"), "--cache-dir", str(tmp_path / "cache"),
                                      "--mapping", "edtn", "basis_fit", "vertex_fit"])
    saved = json.loads((tmp_path / "fast.json").read_text())
    assert saved["frames"] == 308 and saved["metrics"] == report["metrics"]
    assert saved["mappings"] == ["edtn", "basis_fit", "vertex_fit"]
    metrics = saved["metrics"]["edtn"]
    assert set(metrics) == {"vertex", "landmark", "eye", "lip", "total", "vertex_rmse_mm"}
    assert all(math.isfinite(v) and v > 0 for v in metrics.values())
    total = 100 * metrics["vertex"] + metrics["landmark"] + metrics["eye"] + metrics["lip"]
    assert metrics["total"] == pytest.approx(total, rel=1e-6)
    # vertex_fit is the per-frame optimum of the vertex term, on the same codes
    vertex = {name: saved["metrics"][name]["vertex"] for name in saved["mappings"]}
    assert vertex["vertex_fit"] <= min(vertex["edtn"], vertex["basis_fit"])
    with open(tmp_path / "fast.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert (rows[0]["mapping"], rows[0]["video"], int(rows[0]["frames"])) == ("edtn", "ALL", 308)
    assert float(rows[0]["total"]) == pytest.approx(metrics["total"], rel=1e-9)
    assert {r["mapping"] for r in rows} == {"edtn", "basis_fit", "vertex_fit"}
    # the literal FLAME path gives the same numbers
    ref = eval_edtn.main(common + ["--out", str(tmp_path / "ref"), "--impl", "reference",
                                   "--no-per-video"])
    for key, value in metrics.items():
        assert ref["metrics"]["edtn"][key] == pytest.approx(value, rel=1e-4)
    # an existing output is not overwritten silently
    with pytest.raises(ValueError, match="ref.json exists; pass --overwrite"):
        eval_edtn.main(common + ["--out", str(tmp_path / "ref"), "--no-per-video"])
    assert eval_edtn.main(common + ["--out", str(tmp_path / "ref"), "--no-per-video", "--overwrite"])


def test_eval_script_default_output_never_collides(tmp_path, monkeypatch):
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import eval_edtn
    finally:
        sys.path.remove(str(REPO / "scripts"))
    monkeypatch.chdir(tmp_path)
    first = eval_edtn.output_prefix(None, overwrite=False)
    assert first == Path(eval_edtn.DEFAULT_OUT)
    first.parent.mkdir(parents=True)
    first.with_name(first.name + ".csv").write_text("x")
    assert eval_edtn.output_prefix(None, overwrite=False) == Path(eval_edtn.DEFAULT_OUT + "_1")
    assert eval_edtn.output_prefix(str(first), overwrite=True) == first
    with pytest.raises(ValueError, match="metrics.csv exists"):
        eval_edtn.output_prefix(str(first), overwrite=False)
