"""Checkpoint import: the authors' two Lightning layouts (built from the kit's manifest), our
format, bare state dicts, and clear failures for truncated / foreign / missing files.

To keep files tiny, every generator tensor is a one-element tensor expanded to its real shape
(``torch.save`` stores the single element and the strides); each key gets its own value so the
test can tell which entries landed where: ``generator.*`` -> +(index+1), ``generator_ema.*`` ->
-(index+1).
"""
from __future__ import annotations

import argparse
import json
import logging

import pytest
import torch

from anime_generator import AnimeGenerator
from anime_generator.checkpoint import (OUR_FORMAT, CheckpointError, checkpoint_filter_fn,
                                        generator_checkpoint, load_generator)
from infra.assets import AssetError


@pytest.fixture(scope="module")
def manifest(generator_kit):
    return json.loads((generator_kit / "generator_manifest.json").read_text())


@pytest.fixture(scope="module")
def entries(manifest):
    return [(e["key"], tuple(e["shape"])) for e in manifest["generator"]["entries"]]


def tagged_state(entries, sign=1.0):
    return {key: torch.full((1,), sign * (i + 1)).expand(shape) for i, (key, shape) in enumerate(entries)}


def lightning_checkpoint(manifest, entries, layout: str) -> dict:
    """A PL-1.5-style checkpoint dict in the authors' ``pirender_mlp`` or ``pirender`` layout."""
    info = manifest["lightning_checkpoint"]
    name = {"pirender_mlp": "state_dict_pirender_mlp (config_EDTN.yaml, used by EDTN infer.py)",
            "pirender": "state_dict_pirender (Anime_generator.yaml, used by train_AG.py)"}[layout]
    layout_info = info[name]
    state = {f"generator.{k}": v for k, v in tagged_state(entries).items()}
    if "generator_ema" in layout_info["count_by_prefix"]:
        state.update({f"generator_ema.{k}": v for k, v in tagged_state(entries, -1.0).items()})
    for key in layout_info["non_generator_keys"]:  # the VGG copies (values irrelevant: ignored)
        state[key] = torch.zeros(2)
    assert len(state) == layout_info["num_keys"]
    ckpt = {
        "epoch": 200, "global_step": 83_000, "pytorch-lightning_version": "1.5.8",
        "state_dict": state,
        "callbacks": {"ModelCheckpoint{'monitor': None}": {"monitor": None, "best_model_score": None,
                                                           "best_model_path": "", "dirpath": "ckpts"}},
        "optimizer_states": [{"state": {0: {"step": 5, "exp_avg": torch.zeros(3), "exp_avg_sq": torch.zeros(3)}},
                              "param_groups": [{"lr": 2e-5, "betas": (0.5, 0.999), "eps": 1e-8,
                                                "weight_decay": 0, "amsgrad": False, "initial_lr": 1e-4,
                                                "params": list(range(304))}]}],
        "lr_schedulers": [{"step_size": 150, "gamma": 0.2, "base_lrs": [1e-4], "last_epoch": 200,
                           "_step_count": 201, "verbose": False, "_get_lr_called_within_step": False,
                           "_last_lr": [2e-5]}],
    }
    assert set(info["top_level_keys_pl_1_5"]) <= set(ckpt)
    return ckpt


def assert_tagged(model: AnimeGenerator, entries, sign: float) -> None:
    state = model.state_dict()
    for i, (key, _) in enumerate(entries):
        value = state[key]
        assert value.min().item() == value.max().item() == sign * (i + 1), key


# ----------------------------------------------------------------------------- authors' layouts
@pytest.mark.parametrize("use_ema", [True, False])
def test_pirender_mlp_layout_imports_strictly(manifest, entries, tmp_path, use_ema):
    path = tmp_path / "checkpoint_epoch=190_global_step=80000.ckpt"
    torch.save(lightning_checkpoint(manifest, entries, "pirender_mlp"), path)
    model = load_generator(path, use_ema=use_ema)
    assert not model.training
    assert_tagged(model, entries, -1.0 if use_ema else 1.0)


def test_pirender_layout_without_ema_falls_back_with_warning(manifest, entries, tmp_path, caplog):
    path = tmp_path / "ag.ckpt"
    torch.save(lightning_checkpoint(manifest, entries, "pirender"), path)
    with caplog.at_level(logging.WARNING, logger="anime_generator.checkpoint"):
        model = load_generator(path, use_ema=True)
    assert "EMA" in caplog.text
    assert_tagged(model, entries, 1.0)
    assert_tagged(load_generator(path, use_ema=False), entries, 1.0)


def test_argparse_hyper_parameters_load_without_a_full_unpickle(manifest, entries, tmp_path, caplog):
    ckpt = lightning_checkpoint(manifest, entries, "pirender")
    ckpt["hyper_parameters"] = {"cfg": argparse.Namespace(method="pirender")}  # an argparse trainer's
    path = tmp_path / "hp.ckpt"
    torch.save(ckpt, path)
    with caplog.at_level(logging.WARNING):
        model = load_generator(path, use_ema=False)
    assert "full unpickle" not in caplog.text        # weights_only with Namespace allowed, no opt-in
    assert_tagged(model, entries, 1.0)


# ----------------------------------------------------------------------------- ours and bare
def test_our_format_with_wrapper_prefixes(entries, tmp_path):
    ckpt = {"format": OUR_FORMAT,
            "generator": {f"module.{k}": v for k, v in tagged_state(entries).items()},
            "generator_ema": {f"_orig_mod.{k}": v for k, v in tagged_state(entries, -1.0).items()},
            "epoch": 3}
    path = tmp_path / "ours.pt"
    torch.save(ckpt, path)
    assert_tagged(load_generator(path), entries, -1.0)
    assert_tagged(load_generator(path, use_ema=False), entries, 1.0)


def test_bare_state_dict_and_generator_checkpoint_round_trip(entries, tmp_path):
    path = tmp_path / "bare.pt"
    torch.save(tagged_state(entries), path)
    model = load_generator(path)
    assert_tagged(model, entries, 1.0)
    ours = generator_checkpoint(model, None, epoch=1)
    assert ours["format"] == OUR_FORMAT and ours["generator_ema"] is None
    assert ours["generator_config"]["image_size"] == 256
    state = checkpoint_filter_fn(ours, use_ema=False)
    assert list(state) == [k for k, _ in entries]


# ----------------------------------------------------------------------------- failures
def test_truncated_file_fails_naming_the_file(entries, tmp_path):
    path = tmp_path / "truncated.ckpt"
    torch.save({"state_dict": {f"generator.{k}": v for k, v in tagged_state(entries).items()}}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated.ckpt"):
        load_generator(path)


def test_foreign_state_dict_fails_with_key_report(tmp_path):
    path = tmp_path / "EDTN.pt"
    torch.save({"main.0.weight": torch.zeros(512, 53), "main.0.bias": torch.zeros(512)}, path)
    with pytest.raises(CheckpointError) as info:
        load_generator(path)
    message = str(info.value)
    assert "EDTN.pt" in message and "304 missing keys" in message
    assert "unexpected keys: main.0.bias, main.0.weight" in message


def test_shape_mismatch_is_listed(entries, tmp_path):
    state = tagged_state(entries)
    state["mapping_net.first.0.weight"] = torch.zeros(256, 19)
    path = tmp_path / "bad_shape.pt"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"mapping_net.first.0.weight \(256, 19\) \(model \(256, 20\)\)"):
        load_generator(path)


def test_lightning_checkpoint_without_generator_fails(tmp_path):
    path = tmp_path / "other.ckpt"
    torch.save({"state_dict": {"encoder.weight": torch.zeros(2)}, "epoch": 1}, path)
    with pytest.raises(CheckpointError, match="without 'generator"):
        load_generator(path)


def test_missing_file_raises_asset_error(tmp_path):
    with pytest.raises(AssetError, match="nope.ckpt"):
        load_generator(tmp_path / "nope.ckpt")
    with pytest.raises(AssetError, match="generator_cartoon.ckpt"):
        load_generator(asset="generator_cartoon")
