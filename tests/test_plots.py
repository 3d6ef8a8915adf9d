"""reenact.plots: the pose-curves figure (4 panels, thin raw / thick driving pose, missing frames)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from reenact.plots import PANELS, missing_runs, pose_figure, write_pose_plot
from reenact.pose import POSE_COLUMNS, PoseOptions, build_pose_sequence, raw_pose_sequence


def _lines(fig, kind):
    """{column: ydata} of the lines whose gid is '<kind>:<column>'."""
    out = {}
    for ax in fig.axes:
        for line in ax.get_lines():
            gid = line.get_gid() or ""
            if gid.startswith(kind + ":"):
                out[gid.split(":", 1)[1]] = np.asarray(line.get_ydata())
    return out


@pytest.fixture(scope="module")
def sequence():
    gen = torch.Generator().manual_seed(0)
    morphs = torch.rand(30, 17, generator=gen)
    r = torch.randn(30, 3, generator=gen) * 0.2
    opts = PoseOptions(relative=True, smoothing="ema", ema_alpha=0.4, mouth_gain=1.3)
    return build_pose_sequence(morphs, r, opts), raw_pose_sequence(morphs, r)


def test_missing_runs():
    assert missing_runs([7, 3, 4, 5, 9, 9]) == [(3, 5), (7, 7), (9, 9)]
    assert missing_runs([]) == []


def test_figure_has_four_panels_with_the_data(sequence):
    poses, raw = sequence
    fig = pose_figure(poses, raw, missing=[2, 3, 10], fps=25.0, title="clip")
    assert len(fig.axes) == 4 == len(PANELS)
    titles = [ax.get_title(loc="left") for ax in fig.axes]
    assert [t.split()[0] for t in titles] == ["eyes", "brows", "mouth", "head"]
    thick, thin = _lines(fig, "pose"), _lines(fig, "raw")
    assert sorted(thick) == sorted(POSE_COLUMNS) == sorted(thin)
    for i, name in enumerate(POSE_COLUMNS):
        np.testing.assert_allclose(thick[name], poses[:, i].double().numpy(), rtol=0, atol=0)
        np.testing.assert_allclose(thin[name], raw[:, i].double().numpy(), rtol=0, atol=0)
    # every panel holds its own group only, raw thinner than the driving pose
    assert [len([ln for ln in ax.get_lines() if ln.get_gid().startswith("pose:")]) for ax in fig.axes] == [6, 6, 5, 3]
    widths = {ln.get_gid().split(":")[0]: ln.get_linewidth() for ax in fig.axes for ln in ax.get_lines()}
    assert widths["raw"] < widths["pose"]
    # two missing runs shaded in each panel; the time axis is in seconds
    for ax in fig.axes:
        assert len([p for p in ax.patches if p.get_gid() == "missing"]) == 2
    assert fig.axes[-1].get_xlabel() == "time (s)"
    np.testing.assert_allclose(fig.axes[0].get_lines()[0].get_xdata(), np.arange(30) / 25.0)


def test_raw_morphs_only_and_bad_shapes(sequence):
    poses, raw = sequence
    fig = pose_figure(poses, raw[:, :17])
    assert len(_lines(fig, "raw")) == 17 and fig.axes[-1].get_xlabel() == "frame"
    with pytest.raises(ValueError, match="poses"):
        pose_figure(poses[:, :17])
    with pytest.raises(ValueError, match="frames"):
        pose_figure(poses, raw[:5])


def test_write_pose_plot_png(sequence, tmp_path):
    from PIL import Image

    poses, raw = sequence
    out = write_pose_plot(tmp_path / "poses.png", poses, raw, missing=[4])
    with Image.open(out) as img:
        assert img.format == "PNG" and img.size == (1000, 900)
        pixels = np.asarray(img.convert("RGB"))
    assert pixels.std() > 10                      # something is drawn
    assert [p.name for p in tmp_path.iterdir()] == ["poses.png"]   # no temporary left behind
