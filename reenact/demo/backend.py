"""What the demo computes, without any UI: Video-tab runs through the inference pipeline
(:func:`reenact.pipeline.run`) and Live-tab sessions through :class:`reenact.reenactor.Reenactor`.

Options come from the typed inference config: :data:`CONTROLS` names config keys, and each
control's choices are read from the config schema's enums (:func:`field_choices`), its defaults
from ``configs/infer.yaml`` -- a new mapping or style in the schema appears in the UI by itself.
User errors (a missing asset, no face, a bad file or option) become :class:`UserError` with the
same message text ``infer.py`` prints after ``infer.py: error:``.
"""
from __future__ import annotations

import enum
import logging
import threading
import time
import typing
from collections import deque
from dataclasses import dataclass, is_dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np

from infra.runtime import USER_ERRORS
from infra.standin import STANDIN_WARNING, standin_paths
from reenact.config import InferConfig, pose_options, validate_infer_config
from reenact.demo.workdir import WorkDir

__all__ = [
    "CONFIG_FILE",
    "NO_COMPARISON",
    "ControlSpec",
    "CONTROLS",
    "LIVE_CONTROLS",
    "UserError",
    "field_choices",
    "default_values",
    "VideoResult",
    "LiveSession",
    "DemoBackend",
]

log = logging.getLogger(__name__)

CONFIG_FILE = Path(__file__).resolve().parents[2] / "configs" / "infer.yaml"
NO_COMPARISON = "none"
MB = 1 << 20
FPS_WINDOW = 20               # live fps: over the last N frames
MAPPING_KEY = "mapping"       # config key of the morph mapping
NO_FACE_YET = "no face found yet: look into the camera"
PLACEHOLDER = "<not used>"    # stands for input paths when only the options are validated


class UserError(ValueError):
    """A problem the user can fix; ``str()`` is the message ``infer.py`` prints for it."""


# ============================================================================ controls
@dataclass(frozen=True)
class ControlSpec:
    """One UI control bound to a config key (dotted for nested keys: ``smoothing.method``)."""

    key: str
    label: str
    kind: str                  # dropdown | radio | checkbox | slider | number
    minimum: Optional[float] = None
    maximum: Optional[float] = None
    step: Optional[float] = None
    precision: Optional[int] = None
    info: Optional[str] = None
    unset: Any = None          # a value that means "the config default" (browsers send 0 for empty)

    @property
    def choices(self) -> tuple[str, ...]:
        return field_choices(self.key)

    @property
    def default(self) -> Any:
        value = default_values().get(self.key)
        return self.unset if value is None else value


def _field_type(key: str, schema: type = InferConfig) -> Optional[type]:
    """The annotated type of a dotted config key in the schema (``None`` if the key is absent)."""
    head, _, rest = key.partition(".")
    hints = typing.get_type_hints(schema)
    if head not in hints:
        return None
    kind = hints[head]
    if rest:
        return _field_type(rest, kind) if is_dataclass(kind) else None
    args = [a for a in typing.get_args(kind) if a is not type(None)]   # Optional[X] -> X
    return args[0] if len(args) == 1 else kind


def field_choices(key: str, schema: type = InferConfig) -> tuple[str, ...]:
    """The allowed values of an enum config key, in schema order (``()`` for other keys)."""
    kind = _field_type(key, schema)
    if isinstance(kind, type) and issubclass(kind, enum.Enum):
        return tuple(str(member.value) for member in kind)
    return ()


def has_key(key: str) -> bool:
    """Whether the config schema has this (dotted) key."""
    return _field_type(key) is not None


def default_values() -> dict[str, Any]:
    """Every config key's default as ``infer.py`` sees it (``configs/infer.yaml``), dotted keys."""
    from omegaconf import OmegaConf

    raw = OmegaConf.to_container(OmegaConf.load(CONFIG_FILE), resolve=False)
    out: dict[str, Any] = {}

    def walk(node: Mapping[str, Any], prefix: str) -> None:
        for key, value in node.items():
            if key in ("defaults", "hydra"):
                continue
            if isinstance(value, Mapping):
                walk(value, f"{prefix}{key}.")
            else:
                out[f"{prefix}{key}"] = value

    walk(raw, "")
    return out


CONTROLS: tuple[ControlSpec, ...] = (
    ControlSpec("generator", "Generator style", "dropdown"),
    ControlSpec(MAPPING_KEY, "Mapping", "dropdown", info="DECA expression → anime morphs"),
    ControlSpec("mouth_gain", "Mouth gain", "slider", 0.0, 3.0, 0.05, info="factor on the 5 mouth morphs"),
    ControlSpec("relative", "Relative to the first frame", "checkbox",
                info="the first frame is the neutral face"),
    ControlSpec("smoothing.method", "Smoothing", "radio"),
    ControlSpec("smoothing.ema_alpha", "EMA weight of the new frame", "slider", 0.05, 1.0, 0.05),
    ControlSpec("smoothing.min_cutoff", "One-euro min cutoff (Hz)", "number", 0.01, 30.0),
    ControlSpec("smoothing.beta", "One-euro beta", "number", 0.0, 10.0),
    ControlSpec("angle_mode", "Angle conversion", "radio"),
    ControlSpec("fps", "Output fps (0: the video's)", "number", 0.0, 240.0, unset=0),
    ControlSpec("max_frames", "Max frames (0: all)", "number", 0, 100000, precision=0, unset=0,
                info="CPU: about a second per frame"),
)
UNSET = {c.key: c.unset for c in CONTROLS if c.unset is not None}
LIVE_CONTROL_KEYS = ("generator", MAPPING_KEY, "mouth_gain", "relative", "smoothing.method",
                     "smoothing.ema_alpha")
LIVE_CONTROLS: tuple[ControlSpec, ...] = tuple(c for c in CONTROLS if c.key in LIVE_CONTROL_KEYS)


def _nest(values: Mapping[str, Any]) -> dict[str, Any]:
    """``{'smoothing.method': 'ema'}`` → ``{'smoothing': {'method': 'ema'}}``; drops keys the
    schema does not have and empty / unset values (→ default)."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        if not has_key(key) or value is None or value == "" or (key in UNSET and value == UNSET[key]):
            continue
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = int(value) if key == "max_frames" else value
    return out


# ============================================================================ video tab
@dataclass
class VideoResult:
    """Files of one Video-tab run and a Markdown summary."""

    anime: Path
    grid: Path
    plot: Path
    csv: Path
    side_by_side: Optional[Path]
    summary: str
    frames: int


def _check_upload(path: Optional[str], what: str, max_bytes: int) -> Path:
    if not path:
        raise UserError(f"{what}: nothing uploaded")
    file = Path(path)
    if not file.is_file():
        raise UserError(f"{what} not found: {file}")
    size = file.stat().st_size
    if size > max_bytes:
        raise UserError(f"{what} is {size / MB:.1f} MB, more than the demo's upload limit of "
                        f"{max_bytes / MB:g} MB (start it with --max-upload-mb to change that)")
    return file


PLAYABLE = {(".mp4", "h264"), (".mp4", "av1"), (".webm", "vp8"), (".webm", "vp9"), (".webm", "av1"),
            (".ogg", "theora")}   # container / codec pairs browsers play


def browser_playable(path: str | Path, out_dir: Path) -> Path:
    """``path`` itself when browsers can play it, else an H.264 MP4 copy in ``out_dir`` (made with
    imageio-ffmpeg's ffmpeg; Gradio's own conversion needs a system ffmpeg). Unreadable files are
    returned unchanged: the run reports them."""
    import subprocess

    import imageio_ffmpeg

    path = Path(path)
    try:
        frames = imageio_ffmpeg.read_frames(str(path))
        codec = next(frames).get("codec", "")
        frames.close()
    except (OSError, RuntimeError, StopIteration):
        return path
    if (path.suffix.lower(), codec) in PLAYABLE:
        return path
    out = out_dir / f"{path.stem}.mp4"   # same name: plot titles and summaries show the user's file
    proc = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y",
                           "-i", str(path), "-c:v", "libx264", "-pix_fmt", "yuv420p", "-vf",
                           "pad=ceil(iw/2)*2:ceil(ih/2)*2", "-an", str(out)], capture_output=True, text=True)
    return out if proc.returncode == 0 and out.is_file() else path


def side_by_side(left: Path, right: Path, out: Path, fps: float, labels: Sequence[str]) -> Path:
    """Two videos of equal frame count → one MP4 with them next to each other, labelled."""
    import cv2
    import imageio.v3 as iio

    from reenact.video_io import FrameWriter

    with FrameWriter(out, fps) as writer:
        for a, b in zip(iio.imiter(left), iio.imiter(right)):
            panels = []
            for frame, label in zip((a, b), labels):
                frame = np.ascontiguousarray(frame[..., :3])
                cv2.putText(frame, label, (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 2, cv2.LINE_AA)
                cv2.putText(frame, label, (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
                panels.append(frame)
            writer.write(np.concatenate(panels, axis=1))
    return out


# ============================================================================ live tab
class LiveSession:
    """One browser session of the Live tab: a :class:`Reenactor` plus fps bookkeeping.

    Frames arriving while the previous one is still being processed are dropped (the stream
    sends more than a CPU can process); ``step`` then returns ``(None, stats)`` -- leave the
    output as it is.
    """

    def __init__(self, reenactor, key: tuple, backend: "DemoBackend"):
        self.reenactor = reenactor
        self.key = key
        self.backend = backend
        self.times: deque[float] = deque(maxlen=FPS_WINDOW)
        self.compute: deque[float] = deque(maxlen=FPS_WINDOW)
        self.frames = 0
        self.dropped = 0
        self._lock = threading.Lock()

    def fps(self) -> float:
        """Anime frames produced per second over the last :data:`FPS_WINDOW` frames."""
        if len(self.times) < 2 or self.times[-1] <= self.times[0]:
            return 0.0
        return (len(self.times) - 1) / (self.times[-1] - self.times[0])

    def stats(self, note: str = "") -> str:
        ms = 1000 * sum(self.compute) / len(self.compute) if self.compute else float("nan")
        text = (f"achieved: **{self.fps():.2f} frames/s** ({ms:.0f} ms per frame, {self.frames} frames, "
                f"{self.dropped} dropped; {self.backend.device_note})")
        return f"{text} -- {note}" if note else text

    def step(self, frame: Optional[np.ndarray]):
        """Webcam frame (H,W,3) uint8 → ``(anime frame or None, stats markdown)``."""
        if frame is None:
            return None, self.stats()
        if not self._lock.acquire(blocking=False):
            self.dropped += 1
            return None, self.stats()
        try:
            start = time.perf_counter()
            _, image = self.reenactor.step(np.asarray(frame)[..., :3])
            end = time.perf_counter()
        finally:
            self._lock.release()
        if image is None:
            return None, self.stats(NO_FACE_YET)
        self.compute.append(end - start)
        self.times.append(end)
        self.frames += 1
        self.backend.count_live_frame()
        return image, self.stats("" if self.reenactor.face_found else "no face in this frame: pose held")


# ============================================================================ backend
class DemoBackend:
    """Everything the app calls (see the module docstring).

    Args:
        workdir: temporary folders. device: ``auto`` / ``cpu`` / ``cuda``.
        max_upload_mb: largest accepted upload. overrides: config values applied to every run
            (e.g. asset paths), dotted keys.
    """

    def __init__(self, workdir: WorkDir, device: str = "auto", max_upload_mb: float = 200.0,
                 overrides: Optional[Mapping[str, Any]] = None) -> None:
        from infra.runtime import resolve_device

        self.workdir = workdir
        self.device = str(resolve_device(device))
        self.max_upload_bytes = int(max_upload_mb * MB)
        self.overrides = dict(overrides or {})
        self.mappings = field_choices(MAPPING_KEY)
        self.device_note = ("CPU: about a second per frame with 256² generators; webcam rate needs a "
                            "CUDA GPU" if self.device == "cpu" else f"device {self.device}")
        self._lock = threading.Lock()
        self._live_frames = 0
        self._video_runs = 0
        self._stages: dict[tuple, Any] = {}
        self.standin_files = [p.name for p in standin_paths(self._asset_paths())]
        self.standin_warning = STANDIN_WARNING if self.standin_files else ""

    # ------------------------------------------------------------------ shared
    def _asset_paths(self) -> list[Path]:
        from infra.assets import AssetError, resolve_asset

        paths = []
        for name in ("edtn_weights", "deca_model", "generator_default", "generator_cartoon"):
            try:
                paths.append(resolve_asset(name))
            except AssetError:
                pass
        return paths

    def config(self, values: Mapping[str, Any], **paths: Any) -> InferConfig:
        """A validated config: the YAML defaults, then ``overrides``, then ``values`` and ``paths``."""
        merged = _nest({**self.overrides, **dict(values)})
        merged.update({k: v for k, v in paths.items() if v is not None})
        merged.setdefault("device", self.device)
        merged["progress"] = False
        try:
            return validate_infer_config(merged)
        except USER_ERRORS as exc:
            raise UserError(str(exc)) from None

    def check_overrides(self) -> None:
        """Validate the fixed ``--set`` values now (raises :class:`UserError` naming the key)."""
        self.config({}, driving=PLACEHOLDER, source=PLACEHOLDER)

    def stats(self) -> dict[str, int]:
        """Server counters: anime frames sent by the Live tab, Video-tab runs, live sessions."""
        with self._lock:
            return {"live_frames": self._live_frames, "video_runs": self._video_runs}

    def count_live_frame(self) -> None:
        with self._lock:
            self._live_frames += 1

    # ------------------------------------------------------------------ video tab
    def playable_upload(self, driving: Optional[str]) -> Optional[str]:
        """An uploaded driving video as browsers can show it (see :func:`browser_playable`)."""
        if not driving:
            return driving
        return str(browser_playable(driving, self.workdir.new_run()))

    def run_video(self, driving: Optional[str], source: Optional[str], values: Mapping[str, Any],
                  compare: Optional[str] = None,
                  progress: Optional[Callable[[float, str], None]] = None) -> VideoResult:
        """Run the pipeline on an uploaded / recorded video; optionally a second mapping beside it."""
        from reenact.pipeline import run

        driving_file = _check_upload(driving, "driving video", self.max_upload_bytes)
        source_file = _check_upload(source, "anime source image", self.max_upload_bytes)
        run_dir = self.workdir.new_run()
        paths = {"driving": str(driving_file), "source": str(source_file), "out": str(run_dir / "anime.mp4"),
                 "grid_out": str(run_dir / "grid.mp4"), "pose_csv": str(run_dir / "poses.csv"),
                 "pose_plot": str(run_dir / "poses.png")}
        cfg = self.config(values, **paths)
        compare = None if compare in (None, "", NO_COMPARISON) else compare
        mapping = cfg.mapping.value
        if compare is not None and compare == mapping:
            raise UserError(f"the side-by-side mapping must differ from the mapping ({mapping})")

        def report(stage: str, done: int, total: Optional[int]) -> None:
            if progress is not None:
                fraction = done / total if total else 0.0
                progress(fraction, f"{stage}: {done}/{total if total else '?'} frames")

        try:
            result = run(cfg, callback=report)
            side = None
            if compare is not None:
                side = self._compare(result, cfg, values, compare, run_dir, report)
        except USER_ERRORS as exc:
            raise UserError(str(exc)) from None
        with self._lock:
            self._video_runs += 1
        missing = (f"; no face in {len(result.missing)} frame(s), previous pose held" if result.missing else "")
        warn = f"\n\n**Warning: {self.standin_warning}**" if self.standin_warning else ""
        stages = ", ".join(f"{k} {v:.1f} s" for k, v in result.seconds.items())
        summary = (f"{len(result.frames)} frames at {result.fps:g} fps in {result.total_seconds:.1f} s "
                   f"({result.frames_per_second:.2f} frames/s on {self.device}; {stages}){missing}{warn}")
        return VideoResult(result.out, result.grid_out, result.pose_plot, result.pose_csv, side, summary,
                           len(result.frames))

    def _compare(self, first, cfg: InferConfig, values: Mapping[str, Any], mapping: str, run_dir: Path,
                 report) -> Path:
        """The same DECA codes through a second mapping (a packed-code run of the pipeline), then
        both animations side by side."""
        from deca_edit.codes import write_packed_codes
        from reenact.pipeline import run

        codes = first.codes
        code156 = codes.code156
        cam = codes.cam if codes.cam is not None else np.zeros((len(code156), 3), np.float32)
        prefix = write_packed_codes(run_dir / "codes", [(
            "driving", [str(n) for n in codes.names],
            {"shape": code156[:, :100], "exp": code156[:, 100:150], "pose": code156[:, 150:156], "cam": cam})])
        second = self.config({**dict(values), MAPPING_KEY: mapping, "max_frames": None},
                             driving=str(prefix), source=cfg.source, out=str(run_dir / f"anime_{mapping}.mp4"),
                             fps=first.fps)
        result = run(second, callback=report)
        return side_by_side(first.out, result.out, run_dir / "side_by_side.mp4", first.fps,
                            (cfg.mapping.value, mapping))

    # ------------------------------------------------------------------ live tab
    def _stage(self, key: tuple, build: Callable[[], Any]) -> Any:
        """Stages are shared between sessions (they hold no session state); built once per key."""
        with self._lock:
            if key not in self._stages:
                self._stages[key] = build()
            return self._stages[key]

    def live_session(self, state: Optional[LiveSession], source: Optional[str],
                     values: Mapping[str, Any]) -> LiveSession:
        """The session for these options: ``state`` itself when nothing that needs other models
        changed (new pose options are swapped in, restarting the session), else a new one."""
        from reenact.reenactor import LIVE_DRIVING, LIVE_FPS, Reenactor

        if not source:
            raise UserError("upload an anime source image first")
        source_file = _check_upload(source, "anime source image", self.max_upload_bytes)
        cfg = self.config(values, source=str(source_file), driving=LIVE_DRIVING)
        options = pose_options(cfg, cfg.fps or LIVE_FPS)
        key = (str(source_file), cfg.generator.value, cfg.mapping.value)
        if state is not None and state.key == key:
            if state.reenactor.options != options:
                state.reenactor.set_options(options)
            return state
        try:
            reenactor = Reenactor.from_config(cfg, stage_cache=self._stage)
        except USER_ERRORS as exc:
            raise UserError(str(exc)) from None
        return LiveSession(reenactor, key, self)

    def reset_live(self, state: Optional[LiveSession]) -> Optional[LiveSession]:
        """The next frame becomes the neutral face; the smoothing starts afresh."""
        if state is not None:
            state.reenactor.reset()
        return state
