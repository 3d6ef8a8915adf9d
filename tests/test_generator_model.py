"""Anime generator: state-dict layout vs the manifest, parity vs the kit's vectors (float32 and
float64), the behaviour options and the inference mode.

Parity uses the kit's sine weight fill (README §2) and the kit's inputs (README §3/§4): sample i
is ``source_images[sample_image_index[i]]`` driven by ``poses[sample_pose_index[i]]``.
Tolerances are the README §7 suggestions: float32 max abs 1e-2 and mean abs 2e-4 against
``full_*``; float64 max abs 1e-8 against ``f64_*``.
"""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from anime_generator import (AnimeGenerator, GeneratorConfig, flow_to_deformation, output_to_unit,
                             unit_to_output, warp_image)
from anime_generator.inference import generate, prepare_for_inference, restore_reference_mode
from anime_generator.layers import upsample_conv3x3_subpixel
from helpers.weight_fill import fill_module

F32_MAX, F32_MEAN, F64_MAX = 1e-2, 2e-4, 1e-8
OUTPUT_KEYS = ("flow_field", "warp_image", "fake_image")
NUM_DEAD_TENSORS, NUM_DEAD_PARAMS = 48, 3_183_104


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def manifest(generator_kit):
    return json.loads((generator_kit / "generator_manifest.json").read_text())


@pytest.fixture(scope="module")
def vectors(generator_kit):
    with np.load(generator_kit / "generator_vectors.npz") as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope="module")
def samples(vectors):
    image = torch.from_numpy(vectors["source_images"][vectors["sample_image_index"]])
    pose = torch.from_numpy(vectors["poses"][vectors["sample_pose_index"]])
    return image, pose


@pytest.fixture(scope="module")
def filled_model():
    """The 256² generator with the kit's sine fill, float32, eval mode (shared: ~22M params)."""
    return fill_module(AnimeGenerator(), "sine").eval()


@pytest.fixture(scope="module")
def full_outputs(filled_model, samples):
    with torch.no_grad():
        return filled_model(*samples, stage="gen")


# Narrow channels (same topology) keep the property tests fast; the layout/parity tests use the
# real architecture.
NARROW = dict(descriptor_nc=32, adain_hidden=16, max_nc=32, warp_base_nc=8, edit_base_nc=16)


def small_model(size=64, seed=0, narrow=True, **options):
    """Random-init generator (reference init N(0, 0.02)) at a small resolution, for property tests."""
    torch.manual_seed(seed)
    model = AnimeGenerator(GeneratorConfig(image_size=size, **(NARROW if narrow else {}), **options)).eval()
    for module in model.modules():
        if isinstance(module, (torch.nn.Conv2d, torch.nn.ConvTranspose2d, torch.nn.Linear)):
            torch.nn.init.normal_(module.weight, 0.0, 0.02)
            torch.nn.init.zeros_(module.bias)
    return model


def small_inputs(batch=2, size=64, seed=1, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    image = torch.rand(batch, 3, size, size, generator=gen, dtype=dtype)
    pose = torch.rand(batch, 20, generator=gen, dtype=dtype)
    pose[:, 17:] = (pose[:, 17:] - 0.5) * 40  # angles in degrees
    return image, pose


def assert_f32_parity(ours: torch.Tensor, reference: np.ndarray, name: str) -> None:
    diff = (ours.detach().double() - torch.from_numpy(reference).double()).abs()
    assert ours.shape == reference.shape, name
    assert diff.max().item() <= F32_MAX, f"{name}: max abs {diff.max().item():.3g}"
    assert diff.mean().item() <= F32_MEAN, f"{name}: mean abs {diff.mean().item():.3g}"


# ----------------------------------------------------------------------------- layout
def test_state_dict_matches_manifest(manifest):
    model = AnimeGenerator()
    state = model.state_dict()
    entries = manifest["generator"]["entries"]
    assert list(state) == [e["key"] for e in entries]  # same keys, same registration order
    for entry in entries:
        assert list(state[entry["key"]].shape) == entry["shape"], entry["key"]
        assert state[entry["key"]].dtype == torch.float32
    assert len(state) == manifest["generator"]["num_state_dict_keys"] == 304
    assert sum(p.numel() for p in model.parameters()) == manifest["generator"]["num_parameters"]
    for child, count in manifest["generator"]["parameters_by_child"].items():
        assert sum(p.numel() for p in getattr(model, child).parameters()) == count, child
    assert list(model.buffers()) == []


def test_dead_parameters_are_named_and_excluded(manifest):
    model = AnimeGenerator()
    dead = model.dead_parameter_names()
    params = dict(model.named_parameters())
    assert len(dead) == NUM_DEAD_TENSORS
    assert sum(params[n].numel() for n in dead) == NUM_DEAD_PARAMS
    assert all(".conv1." in n or ".norm1." in n for n in dead)
    trainable = {id(p) for p in model.trainable_parameters()}
    assert len(trainable) == 304 - NUM_DEAD_TENSORS
    assert not trainable & {id(params[n]) for n in dead}


# ----------------------------------------------------------------------------- parity
def test_mapping_net_matches_vectors(filled_model, vectors):
    with torch.no_grad():
        desc = filled_model.mapping_net(torch.from_numpy(vectors["mapping_poses"]))
    np.testing.assert_allclose(desc.numpy(), vectors["mapping_descriptor"], atol=1e-5, rtol=0)
    with torch.no_grad():
        desc64 = copy.deepcopy(filled_model.mapping_net).double()(
            torch.from_numpy(vectors["mapping_poses"]).double())
    np.testing.assert_allclose(desc64.numpy(), vectors["f64_mapping_descriptor"], atol=F64_MAX, rtol=0)


def test_gen_stage_float32_parity(full_outputs, vectors):
    for key in OUTPUT_KEYS:
        assert_f32_parity(full_outputs[key], vectors[f"full_{key}"], key)
    deformation = flow_to_deformation(full_outputs["flow_field"])
    assert_f32_parity(deformation, vectors["full_deformation"], "deformation")


def test_warp_stage_float32_parity(filled_model, samples, vectors, full_outputs):
    with torch.no_grad():
        out = filled_model(*samples, stage="warp")
    assert set(out) == {"flow_field", "warp_image"}
    for key in ("flow_field", "warp_image"):
        assert_f32_parity(out[key], vectors[f"warpstage_{key}"], key)
        assert torch.equal(out[key], full_outputs[key])  # as in the reference: same numbers


def test_float64_parity(filled_model, samples, vectors):
    index = torch.from_numpy(vectors["f64_image_samples"])
    model64 = copy.deepcopy(filled_model).double()
    image, pose = (t[index].double() for t in samples)
    with torch.no_grad():
        out = model64(image, pose, stage="gen")
    for key in OUTPUT_KEYS:
        reference = vectors[f"f64_{key}"]
        reference = reference[index.numpy()] if reference.shape[0] == len(samples[0]) else reference
        assert out[key].dtype == torch.float64
        np.testing.assert_allclose(out[key].numpy(), reference, atol=F64_MAX, rtol=0, err_msg=key)
    np.testing.assert_allclose(flow_to_deformation(out["flow_field"]).numpy(),
                               vectors["f64_deformation"][index.numpy()], atol=F64_MAX, rtol=0)


# ----------------------------------------------------------------------------- options
def test_consistent_warp_is_exact_identity_and_translation():
    gen = torch.Generator().manual_seed(0)
    image = torch.rand(2, 3, 256, 256, generator=gen)
    zero = torch.zeros(2, 2, 64, 64)
    assert torch.equal(warp_image(image, zero, "consistent"), image)
    # The original convention is documented not to be an identity (README quirk 19).
    assert (warp_image(image, zero, "original") - image).abs().max() > 1e-3
    # A flow of +1 grid pixel in x (4 image pixels at flow_scale 4) moves content by exactly 4 px;
    # the last 4 columns clamp to the border.
    shift = torch.zeros(2, 2, 64, 64)
    shift[:, 0] = 1.0
    moved = warp_image(image, shift, "consistent")
    torch.testing.assert_close(moved[..., :-4], image[..., 4:], atol=1e-6, rtol=0)
    torch.testing.assert_close(moved[..., -4:], image[..., -1:].expand(-1, -1, -1, 4), atol=1e-6, rtol=0)


def test_consistent_warp_identity_at_non_power_of_two_size():
    image = torch.rand(1, 3, 96, 96, dtype=torch.float64)
    out = warp_image(image, torch.zeros(1, 2, 24, 24, dtype=torch.float64), "consistent")
    torch.testing.assert_close(out, image, atol=1e-12, rtol=0)


def test_output_range_conversion_and_unit_model():
    x = torch.rand(2, 3, 8, 8) * 2 - 1
    torch.testing.assert_close(output_to_unit(x, "original"), x.clamp(0, 1), atol=0, rtol=0)
    unit_image = torch.rand(2, 3, 8, 8)
    for mode in ("original", "unit"):  # targets are compared as [0,1] images in both modes
        assert torch.equal(unit_to_output(unit_image, mode), unit_image)
        assert torch.equal(output_to_unit(unit_to_output(unit_image, mode), mode), unit_image)
    assert torch.equal(output_to_unit(x, "unit"), x)
    with pytest.raises(ValueError, match="output_range"):
        output_to_unit(x, "tanh")
    with pytest.raises(ValueError, match="output_range"):
        unit_to_output(x, "tanh")
    image, pose = small_inputs()
    original, unit = small_model(), small_model(output_range="unit")
    with torch.no_grad():
        fake = original(image, pose)["fake_image"]
        fake_unit = unit(image, pose)["fake_image"]
    assert fake.min() < 0 and fake_unit.min() >= 0 and fake_unit.max() <= 1
    # same weights: the unit model's output is the tanh output mapped affinely to [0,1]
    torch.testing.assert_close(fake_unit, (fake + 1) / 2, atol=1e-7, rtol=0)
    assert torch.equal(original.to_unit(fake), fake.clamp(0, 1))
    assert torch.equal(unit.to_unit(fake_unit), fake_unit)


def test_skip_dead_branch_is_bit_identical_and_dead_params_are_dead():
    image, pose = small_inputs()
    model = small_model()
    fast = copy.deepcopy(model).set_skip_dead_branch(True)
    with torch.no_grad():
        reference = model(image, pose)["fake_image"]
        assert torch.equal(fast(image, pose)["fake_image"], reference)
        params = dict(model.named_parameters())
        for name in model.dead_parameter_names():
            params[name].add_(1.0)  # perturbing the dead tensors changes nothing
        assert torch.equal(model(image, pose)["fake_image"], reference)
    model(image, pose)["fake_image"].sum().backward()
    assert all(params[n].grad is None for n in model.dead_parameter_names())
    assert all(p.grad is not None for p in model.trainable_parameters())


def test_other_resolution_runs_with_correct_shapes():
    model = small_model(size=128, narrow=False)
    image, pose = small_inputs(batch=1, size=128)
    with torch.no_grad():
        out = model(image, pose, stage="gen")
    assert out["flow_field"].shape == (1, 2, 32, 32)
    assert out["warp_image"].shape == out["fake_image"].shape == (1, 3, 128, 128)
    assert model.config.flow_size == 32


def test_float64_runs_and_bad_inputs_raise():
    model = small_model().double()
    image, pose = small_inputs(dtype=torch.float64)
    with torch.no_grad():
        assert model(image, pose)["fake_image"].dtype == torch.float64
    with pytest.raises(ValueError, match="image_size"):
        model(torch.rand(2, 3, 96, 96, dtype=torch.float64), pose)
    with pytest.raises(ValueError, match="pose"):
        model(image, pose[:, :17])
    with pytest.raises(ValueError, match="NaN"):
        model(image, torch.full_like(pose, float("nan")))
    with pytest.raises(ValueError, match="stage"):
        model(image, pose, stage="edit")
    with pytest.raises(ValueError, match="warp_align"):
        GeneratorConfig(warp_align="true")
    with pytest.raises(ValueError, match="image_size"):
        GeneratorConfig(image_size=100)


# ----------------------------------------------------------------------------- inference mode
def test_subpixel_upsample_conv_matches_upsample_then_conv():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(5, 7, 3, padding=1).double()
    x = torch.randn(2, 5, 6, 9, dtype=torch.float64)
    expected = conv(torch.nn.functional.interpolate(x, scale_factor=2.0, mode="nearest"))
    torch.testing.assert_close(upsample_conv3x3_subpixel(x, conv), expected, atol=1e-12, rtol=0)


def test_prepare_for_inference_matches_original_mode():
    image, pose = small_inputs(batch=1, size=128)
    model = small_model(size=128, narrow=False)
    with torch.no_grad():
        reference = model(image, pose)
    fast = prepare_for_inference(copy.deepcopy(model))
    out = generate(fast, image, pose)
    for key in OUTPUT_KEYS:
        torch.testing.assert_close(out[key], reference[key], atol=1e-4, rtol=0, msg=key)
    assert list(fast.state_dict()) == list(model.state_dict())
    restored = restore_reference_mode(fast)
    with torch.no_grad():
        assert torch.equal(restored(image, pose)["fake_image"], reference["fake_image"])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    image, pose = small_inputs()
    model = small_model()
    with torch.no_grad():
        reference = model(image, pose)["fake_image"]
        out = copy.deepcopy(model).cuda()(image.cuda(), pose.cuda())["fake_image"].cpu()
    torch.testing.assert_close(out, reference, atol=1e-3, rtol=0)
