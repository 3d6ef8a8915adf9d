"""Inference pipeline: a video of a person → the same head motion on an anime character.

    driving input ──► face crop 224² + DECA coarse encoder   (skipped for DECA code inputs)
                  ──► morph mapping (exp 50 ⊕ jaw 3 → 17 morphs: EDTN, or mapping=basis_fit |
                      vertex_fit, the training-free baselines of edtn.mappings)
                  ──► pose post-processing (reenact.pose: angle mode, relative, mouth gain, smoothing)
                  ──► anime generator (source image + pose → frame)   (skipped with render=none)
                  ──► writer (.mp4 / .gif / image / PNG folder; grid_out: the grid video too)
                      + pose export (CSV / NPY) + pose curves (pose_plot)

The jobs are split by module: :mod:`reenact.config` validates the options (a typed
:class:`~reenact.config.InferConfig`), :mod:`reenact.stages` holds the stages (each also usable
frame by frame), :mod:`reenact.driving` reads the driving input, :mod:`reenact.outputs` writes.
This module only orders them: everything that can fail on the user's input (options, paths,
assets, model files, the output's frame count) is checked before the first frame is encoded.

Outputs never destroy inputs: an output that is an input (or inside one) is refused
(:func:`infra.files.check_outputs_distinct`), an existing file this program did not write is only
replaced with ``overwrite=true``, and while a run writes, each output's advisory lock is held, so a
second run on the same output stops at once. Model files load with allow-lists only, unless
``trust_checkpoint=true``.

Frames where no face is found take the previous frame's code (frames before the first face take
the first face's); they are reported once, in the summary. No face at all is an error.
"""
from __future__ import annotations

import logging
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from infra.files import (check_input_path, check_outputs_distinct, check_replaceable, output_lock,
                         write_output_marker)
from infra.standin import warn_if_standin
from reenact.config import InferConfig, Layout, RenderMode, pose_options, validate_infer_config
from reenact.driving import CODE156_GLOBAL, DrivingCodes, driving_kind, hold_missing, read_code_input
from reenact.outputs import (GridFrames, check_frame_count, check_plot_path, check_pose_path,
                             write_pose_files)
from reenact.plots import write_pose_plot
from reenact.pose import build_pose_sequence, raw_pose_sequence
from reenact.progress import ProgressCallback, StageProgress
from reenact.stages import (AnimeRenderer, FaceEncoder, MeshPainter, MorphMapper, StageAssets,
                            resolve_stage_assets)
from reenact.video_io import DrivingSource, FrameWriter, check_output_path, open_driving

__all__ = ["InferenceResult", "ReenactmentPipeline", "run"]

log = logging.getLogger(__name__)

MISSING_SHOWN = 20   # frame indices listed in the summary


@dataclass
class InferenceResult:
    """What :func:`run` returns.

    Attributes:
        poses: (T,20) float32 anime poses fed to the generator (morph_00…morph_16, angle_0..2).
        morphs_raw: (T,17) mapping outputs before post-processing.
        frames: frame indices (0..T-1). missing: frames without a face (their code was held).
        out: written animation path or None. pose_csv / pose_npy / pose_plot / grid_out: the other
            written files or None.
        fps: frame rate of the output. seconds: per-stage wall time. total_seconds: end to end.
        raw_poses: (T,20) the mapping's raw output as a pose (no relative mode, gain or smoothing).
        codes: the DECA codes of every frame (after holding frames without a face).
    """

    poses: np.ndarray
    morphs_raw: np.ndarray
    frames: list[int]
    missing: list[int]
    out: Optional[Path]
    pose_csv: Optional[Path]
    pose_npy: Optional[Path]
    fps: float
    seconds: dict[str, float] = field(default_factory=dict)
    total_seconds: float = 0.0
    raw_poses: Optional[np.ndarray] = None
    codes: Optional[DrivingCodes] = None
    pose_plot: Optional[Path] = None
    grid_out: Optional[Path] = None

    @property
    def frames_per_second(self) -> float:
        return len(self.frames) / self.total_seconds if self.total_seconds > 0 else float("nan")


class ReenactmentPipeline:
    """The inference pipeline for one typed config.

    Construction checks the inputs, the outputs and every needed asset (raising before any
    work); :meth:`__call__` runs the stages.

    Args:
        cfg: a validated :class:`InferConfig` (see :func:`run` for raw configs).
        progress: per-stage frame progress (tqdm bars and/or a UI callback); default: bars when
            ``cfg.progress``.
    """

    def __init__(self, cfg: InferConfig, progress: Optional[StageProgress] = None) -> None:
        self.cfg = cfg
        self.progress = progress or StageProgress(bars=cfg.progress)
        self.driving = Path(cfg.driving).expanduser()
        self.render = cfg.render is RenderMode.anime
        self.grid_out = check_output_path(cfg.grid_out, "grid_out") if self.render and cfg.grid_out else None
        self.grid = self.render and cfg.layout is Layout.grid
        self.show_mesh = (self.grid or self.grid_out is not None) and cfg.show_mesh
        self.out = check_output_path(cfg.out, "out") if self.render else None
        self.pose_csv = check_pose_path(cfg.pose_csv, ".csv", "pose_csv")
        self.pose_npy = check_pose_path(cfg.pose_npy, ".npy", "pose_npy")
        self.pose_plot = check_plot_path(cfg.pose_plot, "pose_plot")
        self.kind = driving_kind(self.driving)
        if self.kind != "packed":   # a named pipe would block the reader forever
            check_input_path(self.driving, "driving input")
        self.source = check_input_path(cfg.source, "source image") if self.render else None
        if self.source is not None and self.source.is_dir():
            raise ValueError(f"source image {self.source} is a folder; give one image file")
        self.assets: StageAssets = resolve_stage_assets(cfg, encode_frames=self.kind == "frames",
                                                        show_mesh=self.show_mesh)
        warn_if_standin(vars(self.assets).values())
        self._check_outputs()
        # the driving input: opened (videos probed, codes read) and its length checked, cheaply
        self._frames: Optional[DrivingSource] = None
        self._codes: Optional[DrivingCodes] = None
        if self.kind == "frames":
            self._frames = open_driving(self.driving, cfg.max_frames, cfg.strict_frames)
            count = len(self._frames)
        else:
            self._codes = read_code_input(self.driving, self.kind, cfg.driving_video, cfg.max_frames)
            count = len(self._codes.code156)
        check_frame_count(self.out, count)
        check_frame_count(self.grid_out, count, "grid_out")
        if self._codes is not None and self.show_mesh and self._codes.cam is None:
            raise ValueError(f"show_mesh needs the DECA camera, which {self.driving} does not hold")

    def _outputs(self) -> dict[str, Path]:
        """``{config key: path}`` of every file this run writes."""
        return {k: v for k, v in (("out", self.out), ("grid_out", self.grid_out), ("pose_csv", self.pose_csv),
                                  ("pose_npy", self.pose_npy), ("pose_plot", self.pose_plot)) if v is not None}

    def _check_outputs(self) -> None:
        """No output is an input; an existing output is ours or ``overwrite`` is set."""
        from deca_edit.codes import packed_paths

        driving = (dict(zip(("driving", "driving (index)"), packed_paths(self.driving)))
                   if self.kind == "packed" else {"driving": self.driving})
        assets = {f"{name} file": path for name, path in vars(self.assets).items()}
        check_outputs_distinct(self._outputs(), {**driving, "source": self.source, **assets})
        for key, path in self._outputs().items():
            check_replaceable(path, self.cfg.overwrite, key)

    def _load_stages(self) -> "_Stages":
        """Every model file is read (and checked) before any work is done or any file written."""
        cfg, trust = self.cfg, self.cfg.trust_checkpoint
        return _Stages(
            encoder=(FaceEncoder(self.assets.deca, detector=cfg.detector, aligned=cfg.aligned,
                                 device=cfg.device, batch_size=cfg.batch_size, trust_checkpoint=trust)
                     if self.kind == "frames" else None),
            mapper=MorphMapper.from_assets(self.assets, cfg.mapping.value, cfg.device, trust),
            renderer=(AnimeRenderer(self.assets.generator, self.source, style=cfg.generator.value,
                                    use_ema=cfg.use_ema, source_composite=cfg.source_composite.value,
                                    device=cfg.device, trust_checkpoint=trust)
                      if self.render else None),
            painter=(MeshPainter(self.assets.flame, self.assets.landmark_embedding, cfg.device, trust)
                     if self.show_mesh else None),
        )

    # ------------------------------------------------------------------ stage 1: DECA codes
    def _driving_codes(self, encoder: Optional[FaceEncoder]) -> DrivingCodes:
        if self._codes is not None:
            return self._codes
        frames = self._frames
        named = ((frames.names[i], frame) for i, frame in frames)
        with self.progress.stage("detect+encode", len(frames)) as advance:
            faces = encoder.encode(named, len(frames), on_frames=advance)
        if not faces.found.any():
            raise ValueError(f"no face was found in any of the {len(frames)} driving frames of "
                             f"{self.driving}")
        held = hold_missing(faces.found)
        missing = [int(i) for i in np.flatnonzero(~faces.found)]
        return DrivingCodes(faces.code156[held], faces.cam[held], list(frames.names), missing,
                            frames.fps, frames)

    # ------------------------------------------------------------------ stage 3: generator
    def _render(self, stages: "_Stages", codes: DrivingCodes, poses: torch.Tensor,
                morphs: torch.Tensor, fps: float) -> None:
        cfg, renderer, painter = self.cfg, stages.renderer, stages.painter
        grid = None
        if self.grid or self.grid_out is not None:
            pictures = (frame for _, frame in codes.frames) if codes.frames is not None else None
            grid = GridFrames(pictures, poses, morphs, cfg.show_morphs)
        n = len(poses)
        with ExitStack() as stack:
            writer = stack.enter_context(FrameWriter(self.out, fps, overwrite=cfg.overwrite))
            grid_writer = (stack.enter_context(FrameWriter(self.grid_out, fps, overwrite=cfg.overwrite))
                           if self.grid_out is not None else None)
            advance = stack.enter_context(self.progress.stage("generate", n))
            for start in range(0, n, cfg.batch_size):
                stop = min(n, start + cfg.batch_size)
                anime = renderer.render(poses[start:stop])
                meshes = (painter.paint(codes.code156[start:stop], codes.cam[start:stop],
                                        renderer.image_size) if painter is not None else None)
                for k, frame in enumerate(anime):
                    grid_frame = (grid.compose(start + k, frame, meshes[k] if meshes else None)
                                  if grid is not None else None)
                    writer.write(grid_frame if self.grid else frame)
                    if grid_writer is not None:
                        grid_writer.write(grid_frame)
                advance(stop - start)

    # ------------------------------------------------------------------ run
    def __call__(self) -> InferenceResult:
        with ExitStack() as locks:  # one writer per output: a concurrent run fails fast
            for key, path in self._outputs().items():
                locks.enter_context(output_lock(path, key))
            t_start = time.perf_counter()
            return self._run(self._load_stages(), t_start)

    def _run(self, stages: "_Stages", t_start: float) -> InferenceResult:
        cfg = self.cfg
        seconds: dict[str, float] = {"load": time.perf_counter() - t_start}
        t0 = time.perf_counter()
        codes = self._driving_codes(stages.encoder)
        seconds["encode" if self.kind == "frames" else "read_codes"] = time.perf_counter() - t0
        fps = cfg.fps or codes.fps or cfg.default_fps

        t0 = time.perf_counter()
        mapping = cfg.mapping.value
        with self.progress.stage(mapping, len(codes.code156)) as advance:
            morphs = stages.mapper(codes.code156, on_frames=advance)
        seconds[mapping] = time.perf_counter() - t0

        t0 = time.perf_counter()
        global_pose = torch.from_numpy(codes.code156[:, CODE156_GLOBAL].copy())
        poses = build_pose_sequence(morphs, global_pose, pose_options(cfg, fps)).float()
        seconds["pose"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        raw = raw_pose_sequence(morphs, global_pose.to(morphs.dtype), cfg.angle_mode.value).float()
        write_pose_files(poses, self.pose_csv, self.pose_npy)
        if self.pose_plot is not None:
            write_pose_plot(self.pose_plot, poses, raw, codes.missing, fps, title=self.driving.name)
            write_output_marker(self.pose_plot)   # ours: a later run may replace it
        seconds["export"] = time.perf_counter() - t0
        if self.render:
            t0 = time.perf_counter()
            self._render(stages, codes, poses, morphs, fps)
            seconds["generate+write"] = time.perf_counter() - t0
        total = time.perf_counter() - t_start
        result = InferenceResult(poses.numpy(), morphs.numpy(), list(range(len(poses))), codes.missing,
                                 self.out, self.pose_csv, self.pose_npy, float(fps), seconds, total,
                                 raw.numpy(), codes, self.pose_plot, self.grid_out)
        _print_summary(result, self.driving)
        return result


@dataclass
class _Stages:
    """The loaded stages of one run (``None``: not needed by this config)."""

    encoder: Optional[FaceEncoder]
    mapper: MorphMapper
    renderer: Optional[AnimeRenderer]
    painter: Optional[MeshPainter]


def _print_summary(result: InferenceResult, driving: Path) -> None:
    if result.missing:
        shown = ", ".join(str(i) for i in result.missing[:MISSING_SHOWN])
        more = f", ... ({len(result.missing)} in all)" if len(result.missing) > MISSING_SHOWN else ""
        print(f"no face in {len(result.missing)} of {len(result.frames)} frames of {driving} "
              f"(previous pose held): {shown}{more}")
    stages = ", ".join(f"{k} {v:.2f}s" for k, v in result.seconds.items())
    print(f"done: {len(result.frames)} frames in {result.total_seconds:.2f} s "
          f"({result.frames_per_second:.2f} frames/s; {stages})"
          + (f" -> {result.out}" if result.out else ""))


def run(cfg: Any, progress: Optional[StageProgress] = None,
        callback: Optional[ProgressCallback] = None) -> InferenceResult:
    """Run the whole pipeline for an ``infer.yaml``-shaped config (DictConfig, dict or InferConfig).

    Args:
        cfg: the config; validated into a typed :class:`InferConfig` first.
        progress: stage progress reporter; default tqdm bars (when ``cfg.progress``) plus
            ``callback``.
        callback: ``callback(stage, frames_done, frames_total)`` (e.g. a UI progress bar).
    """
    typed = validate_infer_config(cfg)
    if progress is None:
        progress = StageProgress(bars=typed.progress, callback=callback)
    return ReenactmentPipeline(typed, progress)()
