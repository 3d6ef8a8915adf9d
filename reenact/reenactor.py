"""Per-frame, stateful reenactment for live input (a webcam): one frame in, one anime frame out.

    reenactor = Reenactor.from_config({"source": "character.png", "relative": True})
    for frame in camera:                       # RGB uint8 (H, W, 3)
        pose, image = reenactor.step(frame)    # (20,) pose, (S, S, 3) uint8 anime frame
    reenactor.reset()                          # a new session: the next frame is the neutral face

The stages are the batch pipeline's (:mod:`reenact.stages`): :class:`~reenact.stages.FaceEncoder`
(crop + DECA, its per-frame path), :class:`~reenact.stages.MorphMapper`,
:class:`~reenact.pose.PoseFilter` (the causal post-processing whose state -- smoothing memory and
the relative-mode first frame -- lives here, per session) and
:class:`~reenact.stages.AnimeRenderer`. A frame without a face holds the previous frame's code, as
in the batch pipeline; before the first face there is nothing to show (``(None, None)``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Hashable, Mapping, Optional

import numpy as np
import torch

from infra.standin import warn_if_standin
from reenact.config import InferConfig, pose_options, validate_infer_config
from reenact.driving import CODE156_GLOBAL
from reenact.pose import PoseFilter, PoseOptions
from reenact.stages import AnimeRenderer, FaceEncoder, MorphMapper, resolve_stage_assets

__all__ = ["LIVE_FPS", "LIVE_DRIVING", "live_config", "Reenactor"]

LIVE_FPS = 10.0          # nominal frame rate of a live stream (one-euro smoothing's time step)
LIVE_DRIVING = "<live>"  # placeholder 'driving' of a live config: frames come from step()

StageCache = Callable[[Hashable, Callable[[], Any]], Any]


def live_config(values: Mapping[str, Any]) -> InferConfig:
    """A typed :class:`InferConfig` for live use: ``values`` over the defaults, validated like
    ``infer.py``'s (``driving`` is a placeholder; ``out`` and the pose files are unused)."""
    return validate_infer_config({"driving": LIVE_DRIVING, **dict(values)})


class Reenactor:
    """Frame-by-frame reenactment with per-session state (see the module docstring).

    Args:
        encoder, mapper, renderer: the stages (may be shared between sessions: they hold no
            per-session state).
        options: pose post-processing; ``options.fps`` is the one-euro filter's time step.
    """

    def __init__(self, encoder: FaceEncoder, mapper: MorphMapper, renderer: AnimeRenderer,
                 options: PoseOptions = PoseOptions(fps=LIVE_FPS)) -> None:
        self.encoder, self.mapper, self.renderer = encoder, mapper, renderer
        self.filter = PoseFilter(options)
        self.reset()

    @classmethod
    def from_config(cls, cfg: InferConfig | Mapping[str, Any], fps: Optional[float] = None,
                    stage_cache: Optional[StageCache] = None) -> "Reenactor":
        """Build the stages from an inference config (a typed one, or values for :func:`live_config`).

        Assets are resolved first (a missing file raises ``AssetError`` before any loading) and a
        stand-in asset prints one warning line. ``fps``: default ``cfg.fps`` or :data:`LIVE_FPS`.
        ``stage_cache(key, build)``: returns the stage stored under ``key``, building it once
        (sessions of a server share their stages; they hold no session state).
        """
        cfg = cfg if isinstance(cfg, InferConfig) else live_config(cfg)
        if cfg.source is None:
            raise ValueError("config key 'source' (the anime image) is required")
        assets = resolve_stage_assets(cfg, encode_frames=True, show_mesh=False)
        cache = stage_cache or (lambda key, build: build())
        if stage_cache is None:
            warn_if_standin(vars(assets).values())
        source = Path(cfg.source)
        trust = cfg.trust_checkpoint
        encoder = cache(("encoder", assets.deca, cfg.detector, cfg.aligned, cfg.device, trust),
                        lambda: FaceEncoder(assets.deca, detector=cfg.detector, aligned=cfg.aligned,
                                            device=cfg.device, batch_size=1, trust_checkpoint=trust))
        mapper = cache(("mapper", cfg.mapping, assets.edtn, assets.basis, assets.flame, cfg.device, trust),
                       lambda: MorphMapper.from_assets(assets, cfg.mapping.value, cfg.device, trust))
        renderer = cache(("renderer", assets.generator, source, cfg.use_ema, cfg.source_composite, cfg.device, trust),
                         lambda: AnimeRenderer(assets.generator, source, style=cfg.generator.value,
                                               use_ema=cfg.use_ema, source_composite=cfg.source_composite.value,
                                               device=cfg.device, trust_checkpoint=trust))
        return cls(encoder, mapper, renderer, pose_options(cfg, fps or cfg.fps or LIVE_FPS))

    @property
    def options(self) -> PoseOptions:
        return self.filter.options

    def set_options(self, options: PoseOptions) -> None:
        """New post-processing options; starts a new session (the filters' state would not fit)."""
        self.filter = PoseFilter(options)
        self.reset()

    def reset(self) -> None:
        """Start a new session: forget the held code, the smoothing state and the neutral frame."""
        self.filter.reset()
        self._code: Optional[np.ndarray] = None
        self.face_found = False
        self.frames = 0

    def step(self, frame: np.ndarray) -> tuple[Optional[torch.Tensor], Optional[np.ndarray]]:
        """One RGB uint8 frame (H,W,3) → ``(pose (20,), anime frame (S,S,3) uint8)``.

        ``face_found`` tells whether this frame had a face (else the previous code is held);
        ``(None, None)`` until the first face.
        """
        encoded = self.encoder.encode_frame(np.ascontiguousarray(frame))
        self.face_found = encoded is not None
        if encoded is not None:
            self._code = encoded[0]
        if self._code is None:
            return None, None
        code = self._code[None]
        morphs = self.mapper(code)
        pose = self.filter.step(morphs, torch.from_numpy(code[:, CODE156_GLOBAL].copy()))
        image = self.renderer.render(pose.float())[0]
        self.frames += 1
        return pose[0], image
