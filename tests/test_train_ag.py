"""Anime-generator training: config composition and typing, loss decrease, exact resume across the
stage switch, 2-process gloo DDP, checkpoint content and export (CPU, tiny model, 32 px)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

import anime_generator.train_config as train_config
from anime_generator.checkpoint import load_generator
from anime_generator.perceptual import build_vgg19_features
from anime_generator.train_config import Stage, validate_config
from anime_generator.train_loop import (GeneratorLoss, bidirectional_batch, build_generator, build_loss,
                                        run, set_stage)
from helpers.weight_fill import fill_module

REPO = Path(__file__).resolve().parents[1]
CONFIG_DIR = str(REPO / "configs" / "anime_generator")
VGG_FILE = "vgg19-dcbb9e9d.pth"
# Small but complete: tiny generator at 32 px, two VGG layers at two scales, no data workers.
FAST = ["experiment=smoke", "model.image_size=32", "model.warp_encoder_layers=4",
        "model.warp_decoder_layers=2", "loss.layers=[relu_1_1,relu_2_1]", "loss.layer_weights=[1.0,1.0]",
        "loss.num_scales=2", "log.image_every=0", "train.valid_every=0", "log.tensorboard=false",
        "data.color_jitter.enabled=false"]


@pytest.fixture(scope="session")
def vgg_file(tmp_path_factory) -> Path:
    """VGG19 filled by the kit's sine rule, saved with torchvision's ``features.N.*`` key names."""
    net = fill_module(build_vgg19_features(), "sine")
    path = tmp_path_factory.mktemp("vgg") / VGG_FILE
    torch.save({f"features.{k}": v for k, v in net.state_dict().items()}, path)
    return path


@pytest.fixture
def vgg_in_cache(vgg_file) -> Path:
    """Put the filled VGG19 where torchvision keeps it ($TORCH_HOME/hub/checkpoints)."""
    target = Path(os.environ["TORCH_HOME"]) / "hub" / "checkpoints" / VGG_FILE
    target.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(vgg_file, target)
    return target


@pytest.fixture
def tiny_data(generator_kit, tmp_path) -> Path:
    """Writable copy of the kit's tiny_dataset without its cached.json."""
    root = tmp_path / "tiny_dataset"
    shutil.copytree(generator_kit / "tiny_dataset", root)
    (root / "animeceleb" / "cached.json").unlink()
    return root


def data_overrides(root: Path) -> list[str]:
    return [f"data.root={root / 'animeceleb'}", f"data.train_list={root / 'lists' / 'train_list.txt'}",
            f"data.valid_list={root / 'lists' / 'test_list.txt'}"]


def compose_cfg(overrides: list[str]):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name="train_ag", overrides=overrides)


def test_paper_preset_composes():
    cfg = compose_cfg(["experiment=paper", "data.root=/data/anime", "data.train_list=/data/train.txt"])
    typed = validate_config(cfg)
    assert typed.train.epochs == 200 and typed.train.switch_epoch == 100
    assert typed.data.batch_size == 8 and typed.data.num_repeats == 75 and typed.data.time_flip
    assert typed.optim.lr == pytest.approx(1e-4) and list(typed.optim.betas) == [0.5, 0.999]
    assert typed.optim.lr_step_size == 150 and typed.optim.lr_gamma == pytest.approx(0.2)
    assert typed.train.ema_decay == pytest.approx(0.5 ** (32 / 10000), rel=1e-15)
    assert (typed.loss.warp_weight, typed.loss.final_weight, typed.loss.style_weight) == (2.5, 4.0, 250.0)
    assert typed.model.image_size == 256 and typed.data.image_size == 256
    assert typed.model.output_range == "original" and typed.loss.input_range.value == "original"


def test_bad_type_fails_naming_the_key():
    with pytest.raises(Exception, match=r"optim\.lr"):
        compose_cfg(["optim.lr=abc"])
    plain = OmegaConf.to_container(compose_cfg(["data.root=/r", "data.train_list=/l"]), resolve=True)
    plain["data"]["batch_size"] = "eight"
    with pytest.raises(ValueError, match=r"data\.batch_size"):
        validate_config(plain)
    plain["data"]["batch_size"] = 8
    plain["train"]["switch_epoch"] = -1
    with pytest.raises(ValueError, match=r"train\.switch_epoch"):
        validate_config(plain)


def test_vgg_missing_is_a_clear_error(tiny_data):
    cfg = validate_config(compose_cfg(FAST + data_overrides(tiny_data)))
    with pytest.raises(FileNotFoundError, match="vgg19-dcbb9e9d.pth"):
        build_loss(cfg, torch.device("cpu"))


def test_a_few_steps_lower_the_loss(tiny_data, vgg_in_cache):
    """Warp then gen stage on one fixed batch: the weighted loss goes down in both stages."""
    torch.manual_seed(0)
    cfg = validate_config(compose_cfg(FAST + data_overrides(tiny_data)))
    generator = build_generator(cfg)
    loss_fn = build_loss(cfg, torch.device("cpu"))  # VGG from $TORCH_HOME
    assert isinstance(loss_fn, GeneratorLoss)
    from anime_generator.train_loop import build_loaders
    from infra.distributed import DistInfo

    loader, _ = build_loaders(cfg, DistInfo())
    images, poses, targets = bidirectional_batch(next(iter(loader)), torch.device("cpu"))
    assert images.shape == (4, 3, 32, 32) and poses.shape == (4, 20)
    optimizer = torch.optim.Adam(generator.trainable_parameters(), lr=3e-4, betas=(0.5, 0.999))
    for stage in (Stage.warp, Stage.gen):
        set_stage(generator, stage)
        history = []
        for _ in range(3):
            total, terms = loss_fn(generator(images, poses, stage=stage.value), targets, stage)
            optimizer.zero_grad()
            total.backward()
            optimizer.step()
            history.append(float(total.detach()))
        assert history[-1] < history[0], (stage, history)
        if stage == Stage.warp:
            assert all(p.grad is None for p in generator.editing_net.parameters())
    dead = set(generator.dead_parameter_names())
    assert dead and all(p.grad is None for n, p in generator.named_parameters() if n in dead)


def _states_equal(a: dict, b: dict) -> None:
    for key in ("generator", "generator_ema"):
        assert a[key].keys() == b[key].keys()
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), f"{key}.{name} differs"
    for i, (sa, sb) in enumerate(zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values())):
        assert torch.equal(sa["exp_avg"], sb["exp_avg"]) and torch.equal(sa["exp_avg_sq"], sb["exp_avg_sq"]), i


def test_resume_across_stage_switch_is_exact(tiny_data, vgg_file, tmp_path):
    base = FAST + data_overrides(tiny_data) + [f"loss.vgg_path={vgg_file}", "train.switch_epoch=1"]
    full = run(compose_cfg(base + ["train.epochs=3", f"run_dir={tmp_path / 'full'}"]))
    part_dir = tmp_path / "part"
    first = run(compose_cfg(base + ["train.epochs=2", f"run_dir={part_dir}"]))
    saved = torch.load(first["last_checkpoint"], map_location="cpu", weights_only=True)
    assert saved["stage"] == "gen" and saved["epoch"] == 2
    # Resumed with a switch epoch that would say 'warp': the saved stage wins (never goes back).
    resumed = run(compose_cfg(base + ["train.epochs=3", "train.switch_epoch=5", "resume=auto",
                                      f"run_dir={part_dir}"]))
    assert resumed["stage"] == "gen" and len(resumed["losses"]) == len(full["losses"]) - len(first["losses"])
    assert resumed["losses"] == full["losses"][len(first["losses"]):]
    a = torch.load(full["last_checkpoint"], map_location="cpu", weights_only=True)
    b = torch.load(resumed["last_checkpoint"], map_location="cpu", weights_only=True)
    _states_equal(a, b)
    assert a["step"] == b["step"] and a["scheduler"] == b["scheduler"]

    # Checkpoint content: our format, no VGG tensors, plain config, loadable by load_generator.
    assert a["format"] == "edtn-generator/1" and isinstance(a["config"], dict)
    model = load_generator(full["last_checkpoint"])
    assert len(a["generator"]) == len(a["generator_ema"]) == len(model.state_dict())
    assert not any(k.startswith(("features", "perceptual", "network")) for k in a["generator"])
    assert model.config.image_size == 32
    assert all(torch.equal(v, a["generator_ema"][k]) for k, v in model.state_dict().items())


@pytest.fixture(autouse=True)
def _scripts_on_path(monkeypatch):
    """Make ``scripts/export_generator.py`` importable as ``scripts_export``."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("scripts_export", REPO / "scripts" / "export_generator.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setitem(sys.modules, "scripts_export", module)


def test_export_precision_warning_and_tensorboard(tiny_data, vgg_file, tmp_path):
    """One step with bf16 asked on CPU (warns, runs fp32), TensorBoard images; then both exports."""
    from scripts_export import export

    with pytest.warns(UserWarning, match="needs CUDA"):
        summary = run(compose_cfg(FAST + data_overrides(tiny_data) + [
            f"loss.vgg_path={vgg_file}", "train.epochs=1", "train.max_steps_per_epoch=1",
            "train.precision=bf16", "log.tensorboard=true", "log.image_every=1",
            f"run_dir={tmp_path / 'run'}"]))
    assert any((tmp_path / "run" / "tensorboard").iterdir())
    ckpt = torch.load(summary["last_checkpoint"], map_location="cpu", weights_only=True)
    export(summary["last_checkpoint"], tmp_path / "bare.pt", "bare", "ema")
    bare = torch.load(tmp_path / "bare.pt", map_location="cpu", weights_only=True)
    assert all(torch.equal(bare[k], ckpt["generator_ema"][k]) for k in ckpt["generator_ema"])
    export(summary["last_checkpoint"], tmp_path / "ours.pt", "edtn")
    ours = torch.load(tmp_path / "ours.pt", map_location="cpu", weights_only=True)
    assert set(ours) == {"format", "generator", "generator_ema", "generator_config"}
    assert load_generator(tmp_path / "ours.pt").config.image_size == 32


def test_ddp_two_processes_gloo(tiny_data, vgg_file, tmp_path):
    """torchrun --nproc_per_node 2 train_ag.py: both stages, one step each, checkpoint written."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(REPO / "train_ag.py"), *FAST, *data_overrides(tiny_data), f"loss.vgg_path={vgg_file}",
           "train.epochs=2", "train.switch_epoch=1", f"run_dir={tmp_path / 'ddp'}",
           f"hydra.run.dir={tmp_path / 'hydra'}"]
    result = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stderr[-4000:]
    state = torch.load(tmp_path / "ddp" / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
    assert state["stage"] == "gen" and state["epoch"] == 2 and state["step"] == 2
    assert all(torch.isfinite(v).all() for v in state["generator"].values())
