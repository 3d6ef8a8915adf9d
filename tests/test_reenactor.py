"""reenact.reenactor.Reenactor: the per-frame stateful API gives the batch pipeline's poses, keeps
its state per session (reset), holds the pose through frames without a face."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from reenact.pipeline import run
from reenact.reenactor import LIVE_FPS, Reenactor, live_config
from reenact.video_io import open_driving

N_FRAMES = 4
OPTIONS = {"relative": True, "mouth_gain": 1.4, "smoothing": {"method": "ema", "ema_alpha": 0.4}}


@pytest.fixture(scope="module")
def frames(authors_dir):
    return [frame for _, frame in open_driving(authors_dir / "example.mp4", N_FRAMES)]


@pytest.fixture(scope="module")
def reenactor(standin_kit, authors_dir):
    mp = pytest.MonkeyPatch()
    mp.setenv("EDTN_HOME", str(standin_kit))
    try:
        yield Reenactor.from_config({"source": str(authors_dir / "basis.png"), "device": "cpu", **OPTIONS},
                                    fps=20.0)
    finally:
        mp.undo()


def test_step_by_step_equals_the_batch_pipeline(reenactor, frames, standin_kit, authors_dir, tmp_path,
                                                monkeypatch):
    monkeypatch.setenv("EDTN_HOME", str(standin_kit))
    reenactor.reset()
    steps = [reenactor.step(frame) for frame in frames]
    poses = torch.stack([pose for pose, _ in steps]).numpy()
    images = np.stack([image for _, image in steps])
    size = reenactor.renderer.image_size
    assert images.shape == (N_FRAMES, size, size, 3) and images.dtype == np.uint8
    assert reenactor.face_found and reenactor.frames == N_FRAMES
    batch = run({"driving": str(authors_dir / "example.mp4"), "source": str(authors_dir / "basis.png"),
                 "out": str(tmp_path / "a.mp4"), "max_frames": N_FRAMES, "device": "cpu", "progress": False,
                 **OPTIONS})
    assert batch.fps == 20.0
    # same stages and the same causal filter; DECA run one crop at a time vs in a batch differs by
    # float rounding only
    np.testing.assert_allclose(poses, batch.poses, rtol=0, atol=1e-4)
    assert np.abs(poses[0]).max() == 0.0   # relative mode: the first frame is the neutral pose


def test_reset_starts_a_new_session(reenactor, frames):
    reenactor.reset()
    first, _ = reenactor.step(frames[0])
    reenactor.step(frames[1])
    later, _ = reenactor.step(frames[2])
    reenactor.reset()
    fresh, _ = reenactor.step(frames[2])
    assert torch.equal(first, torch.zeros(20)) and torch.equal(fresh, torch.zeros(20))
    assert not torch.equal(later, fresh)


def test_no_face_holds_the_previous_pose(reenactor, frames):
    grey = np.full_like(frames[0], 128)
    reenactor.reset()
    assert reenactor.step(grey) == (None, None) and not reenactor.face_found   # nothing before a face
    pose, _ = reenactor.step(frames[0])
    held, image = reenactor.step(grey)
    assert not reenactor.face_found and image is not None
    # the code is held; only the smoother moves (EMA towards the same target)
    reenactor.set_options(reenactor.options.__class__(relative=False, fps=LIVE_FPS))
    a, _ = reenactor.step(frames[1])
    b, _ = reenactor.step(grey)
    assert torch.equal(a, b)


def test_live_config_validates_like_infer(authors_dir):
    cfg = live_config({"source": str(authors_dir / "basis.png"), "mouth_gain": 2.0})
    assert cfg.mouth_gain == 2.0 and cfg.source == str(authors_dir / "basis.png")
    with pytest.raises(ValueError, match="mouth_gain"):
        live_config({"source": "x.png", "mouth_gain": -1.0})
    with pytest.raises(ValueError, match="source"):
        Reenactor.from_config({"source": None})
