"""Pose curves: the 20 anime pose channels over time (``infer.py pose_plot=poses.png``, the demo).

Four panels share the time axis: eye morphs (00–05), eyebrow morphs (06–11), mouth morphs
(12–16) and the three head angles (degrees). In each, the mapping's raw output is a thin line and
the post-processed pose that drove the generator (relative mode, mouth gain, smoothing) a thick
line of the same colour; frames without a face (their pose is held) are shaded.

Drawn with matplotlib's object API on an Agg canvas (no pyplot state, safe in a web server's
threads). Every line carries a ``gid`` -- ``pose:<column>`` or ``raw:<column>`` with the CSV
column names of :data:`reenact.pose.POSE_COLUMNS` -- so tests and tools can read the data back.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from infra.files import atomic_path
from reenact.pose import MOUTH_SLICE, NUM_MORPHS, POSE_COLUMNS, POSE_DIM

__all__ = ["PANELS", "pose_figure", "save_figure", "write_pose_plot", "missing_runs"]

# (title, y label, pose columns) per panel; AnimeCeleb order: 6 eye, 6 eyebrow, 5 mouth morphs
PANELS: tuple[tuple[str, str, slice], ...] = (
    ("eyes (morph_00-05)", "morph", slice(0, 6)),
    ("brows (morph_06-11)", "morph", slice(6, 12)),
    ("mouth (morph_12-16)", "morph", MOUTH_SLICE),
    ("head angles (angle_0-2)", "degrees", slice(NUM_MORPHS, POSE_DIM)),
)
RAW_WIDTH, POSE_WIDTH = 0.9, 2.4
RAW_ALPHA = 0.75
MISSING_COLOUR, MISSING_ALPHA = "tab:red", 0.15
MORPH_YLIM = (-0.05, 1.05)
FIG_SIZE_IN = (10.0, 9.0)
DPI = 100


def missing_runs(missing: Sequence[int]) -> list[tuple[int, int]]:
    """Sorted frame indices → ``[(first, last), ...]`` runs of consecutive frames (inclusive)."""
    runs: list[tuple[int, int]] = []
    for frame in sorted(set(int(m) for m in missing)):
        if runs and frame == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], frame)
        else:
            runs.append((frame, frame))
    return runs


def _as_array(x, name: str, width: Sequence[int]) -> np.ndarray:
    arr = x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)
    if arr.ndim != 2 or arr.shape[1] not in width:
        raise ValueError(f"{name} must have shape (T, {' or '.join(map(str, width))}), got {arr.shape}")
    return arr.astype(np.float64)


def pose_figure(poses, raw=None, missing: Sequence[int] = (), fps: Optional[float] = None,
                title: Optional[str] = None):
    """The pose-curves figure (see the module docstring).

    Args:
        poses: (T,20) poses that drove the generator.
        raw: optional (T,20) raw mapping output as a pose (:func:`reenact.pose.raw_pose_sequence`),
            or (T,17) raw morphs only (then the angle panel has no thin lines).
        missing: frame indices without a face.
        fps: when given the time axis is in seconds (frame / fps), else in frames.
        title: figure title.
    Returns:
        ``matplotlib.figure.Figure`` with four axes (one per :data:`PANELS` entry).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    poses = _as_array(poses, "poses", (POSE_DIM,))
    raw = None if raw is None else _as_array(raw, "raw", (NUM_MORPHS, POSE_DIM))
    if raw is not None and len(raw) != len(poses):
        raise ValueError(f"raw has {len(raw)} frames, poses {len(poses)}")
    n = len(poses)
    scale = 1.0 / fps if fps else 1.0
    t = np.arange(n) * scale
    fig = Figure(figsize=FIG_SIZE_IN, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(PANELS), 1, sharex=True)
    for ax, (panel_title, ylabel, cols) in zip(axes, PANELS):
        for offset, col in enumerate(range(cols.start, cols.stop)):
            colour = f"C{offset}"
            name = POSE_COLUMNS[col]
            if raw is not None and col < raw.shape[1]:
                ax.plot(t, raw[:, col], color=colour, lw=RAW_WIDTH, alpha=RAW_ALPHA, gid=f"raw:{name}",
                        label="_nolegend_")
            ax.plot(t, poses[:, col], color=colour, lw=POSE_WIDTH, gid=f"pose:{name}", label=name)
        for first, last in missing_runs(missing):
            ax.axvspan((first - 0.5) * scale, (last + 0.5) * scale, color=MISSING_COLOUR,
                       alpha=MISSING_ALPHA, lw=0, gid="missing")
        ax.set_title(panel_title, fontsize=10, loc="left")
        ax.set_ylabel(ylabel)
        if ylabel == "morph":
            ax.set_ylim(*MORPH_YLIM)
        ax.grid(True, alpha=0.3)
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False)
    axes[-1].set_xlabel("time (s)" if fps else "frame")
    if n:
        axes[-1].set_xlim(t[0] - 0.5 * scale, t[-1] + 0.5 * scale)
    note = "thin: raw mapping output, thick: pose that drove the generator"
    if len(missing):
        note += f"; shaded: {len(set(missing))} frame(s) without a face (pose held)"
    fig.suptitle((f"{title}\n" if title else "") + note, fontsize=10)
    return fig


def save_figure(fig, path: str | os.PathLike) -> Path:
    """Write a figure atomically; the format follows the suffix (``.png``, ``.svg``, ``.pdf``)."""
    path = Path(path)
    fmt = path.suffix.lstrip(".").lower() or "png"
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=fmt)
    return path


def write_pose_plot(path: str | os.PathLike, poses, raw=None, missing: Sequence[int] = (),
                    fps: Optional[float] = None, title: Optional[str] = None) -> Path:
    """:func:`pose_figure` saved to ``path`` (see :func:`save_figure`)."""
    return save_figure(pose_figure(poses, raw, missing, fps, title), path)
