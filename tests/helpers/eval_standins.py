"""Stand-in weight files for the evaluation tests (deterministic fills, no downloads).

* :func:`inception_standin`: a state dict with the keys and shapes of torch-fidelity's InceptionV3
  FID weights, seeded He-normal (the network is built without loading any weights);
* :func:`anime_landmarker_checkpoint`: an mmpose-style checkpoint (``{'meta', 'state_dict'}`` with
  ``backbone.*`` / ``keypoint_head.final_layer.*`` keys) of the 28-point anime HRNetV2, filled by
  the sine rule;
* :func:`fan_standin`: a TorchScript archive standing in for face-alignment's 2D-FAN-4;
* :func:`small_generator_checkpoint`: a 64² anime generator in our checkpoint format.
"""
from __future__ import annotations

from pathlib import Path
from unittest import mock

import torch

from helpers.weight_fill import fill_state_dict, sine_fill


def inception_standin(path: Path, seed: int = 0) -> Path:
    """torch-fidelity's InceptionV3 keys and shapes with a seeded He-normal fill (convolutions and
    the classifier), identity batch norms. The kit's sine rule is not used here: its periodic
    weights cancel on smooth images and the 2048-d features collapse to a constant."""
    import torch_fidelity.feature_extractor_inceptionv3 as fe

    cls = fe.FeatureExtractorInceptionV3
    with mock.patch.object(fe, "load_state_dict_from_url", lambda *a, **k: None), \
            mock.patch.object(cls, "load_state_dict", lambda self, *a, **k: None):
        model = cls("inception-v3-compat", ["2048"])
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, value in model.state_dict().items():
        leaf = key.rsplit(".", 1)[-1]
        if value.dim() >= 2:
            fan_in = value[0].numel()
            state[key] = torch.randn(value.shape, generator=generator) * (2.0 / fan_in) ** 0.5
        elif leaf in ("weight", "running_var"):
            state[key] = torch.ones_like(value)
        else:  # bias, running_mean, num_batches_tracked
            state[key] = torch.zeros_like(value)
    torch.save(state, path)
    return path


def anime_landmarker_checkpoint(path: Path) -> Path:
    from reenact.evaluation.anime_landmarks import AnimeLandmarkNet

    ours = fill_state_dict(AnimeLandmarkNet().state_dict(), sine_fill)
    mmpose = {(f"keypoint_head.final_layer.{k[len('head.'):]}" if k.startswith("head.") else k): v
              for k, v in ours.items()}
    torch.save({"meta": {"mmpose_version": "0.x (stand-in)"}, "state_dict": mmpose}, path)
    return path


class _FanStandin(torch.nn.Module):
    """(B,3,256,256) -> (B,68,64,64): one seeded 4×4 stride-4 convolution, so the heatmap peaks
    (and the landmarks) move with the picture."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.conv = torch.nn.Conv2d(3, 68, kernel_size=4, stride=4)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=generator))
            self.conv.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def fan_standin(path: Path, seed: int = 0) -> Path:
    """A TorchScript stand-in of face-alignment's 2D-FAN-4 archive (the released file is TorchScript)."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        torch.jit.script(_FanStandin(seed).eval()).save(str(path))
    return path


def small_generator_checkpoint(path: Path, image_size: int = 64) -> Path:
    """Our generator checkpoint format at ``image_size`` (fast on CPU), weights by the sine rule."""
    from anime_generator.checkpoint import generator_checkpoint
    from anime_generator.config import GeneratorConfig
    from anime_generator.model import AnimeGenerator
    from helpers.weight_fill import fill_module

    model = fill_module(AnimeGenerator(GeneratorConfig(image_size=image_size)), "sine")
    torch.save(generator_checkpoint(model, model), path)  # EMA = raw weights
    return path
