"""Inference pipeline: a video of a person → the same head motion on an anime character.

Stages (each shows a tqdm bar and is timed)::

    driving input ──► [face crop 224² → DECA coarse encoder]  (skipped for DECA code inputs)
                  ──► EDTN (exp 50 ⊕ jaw 3 → 17 morphs)
                  ──► pose post-processing (reenact.pose: angle mode, relative, mouth gain, smoothing)
                  ──► anime generator (source image + pose → frame)   (skipped with render=none)
                  ──► writer (.mp4 / .gif / image / PNG folder) + pose export (CSV / NPY)

Driving inputs: a video file, a folder of frames (sorted by name), one image, a folder of DECA
``.mat`` code files (one per frame, sorted; the encoder is skipped) or a packed code file
(``<prefix>.npy`` / ``.json``, see :mod:`deca_edit.codes`; pick a video with ``driving_video``).

Frames where no face is found are reported and the previous frame's DECA code is held (frames
before the first detected face take the first detected one). No face at all is an error.

Every external file comes through :func:`infra.assets.resolve_asset`, and all of them are resolved
(and the output paths checked) *before* any frame is read, so a missing file stops the run at once
with :class:`infra.assets.AssetError`'s message. The output checks refuse an output that is an input
(:func:`infra.runtime.check_outputs_distinct`) or an existing file this program did not write
(unless ``overwrite``); while running, every output's advisory lock is held, so a second run on
the same output stops at once. Model files load with allow-lists only, unless ``trust_checkpoint``.

Source image preparation (:func:`load_source_image`): RGBA is composited over white with rounding
(``source_composite: truncate`` reproduces the original's truncation), grayscale is replicated, a
non-square image is padded with white to a centred square and then resized to the generator's
``image_size`` (area filter when shrinking, bicubic when enlarging); a 256² RGB(A) image is used
as is. Pixels become float32 ``u8 · float32(1/255)`` in [0,1] (the original's multiply).
"""
from __future__ import annotations

import logging
import math
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional

import numpy as np
import torch

from infra.assets import resolve_asset
from reenact.pose import PoseOptions, build_pose_sequence, pose_table
from reenact.render import LAYOUTS, compose_grid, render_mesh
from infra.runtime import (atomic_path, check_input_path, check_outputs_distinct, check_replaceable,
                           output_lock, resolve_device, write_output_marker)
from infra.image_io import read_image
from reenact.video_io import FrameWriter, DrivingSource, check_output_path, open_driving

__all__ = [
    "RENDER_MODES",
    "GENERATOR_STYLES",
    "InferenceResult",
    "ReenactmentPipeline",
    "load_source_image",
    "hold_missing",
    "run",
]

log = logging.getLogger(__name__)

RENDER_MODES = ("anime", "none")
GENERATOR_STYLES = ("default", "cartoon")
SOURCE_COMPOSITES = ("round", "truncate")
_COMPOSITE_MODE = {"round": "round", "truncate": "original"}  # config name -> composite_rgba mode
DEFAULT_FPS = 25.0                 # VoxCeleb frame rate; used for inputs without one
DECA_CROP_SIZE = 224
CODE156_GLOBAL = slice(150, 153)   # DECA global head rotation (axis-angle) inside code156
UNIT_TO_U8 = np.float32(1.0 / 255.0)


# ============================================================================ small pure helpers
def load_source_image(path: str | Path, size: int, composite: str = "round") -> torch.Tensor:
    """Read the anime source image → (1,3,size,size) float32 in [0,1] (see module docstring).

    Args:
        path: PNG/JPG file. size: generator resolution. composite: ``round`` (ours) or
            ``truncate`` (original ``rgba2rgb``: float32 ``c·a + (1−a)·255`` then ``astype(uint8)``).
    """
    import cv2

    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"source image not found: {path}")
    if composite not in SOURCE_COMPOSITES:
        raise ValueError(f"source_composite must be one of {SOURCE_COMPOSITES}, got {composite!r}")
    img = read_image(path, composite=_COMPOSITE_MODE[composite])
    h, w = img.shape[:2]
    if h != w:
        side = max(h, w)
        canvas = np.full((side, side, 3), 255, np.uint8)
        top, left = (side - h) // 2, (side - w) // 2
        canvas[top:top + h, left:left + w] = img
        img = canvas
    if img.shape[0] != size:
        interp = cv2.INTER_AREA if img.shape[0] > size else cv2.INTER_CUBIC
        img = cv2.resize(img, (size, size), interpolation=interp)
    unit = img.astype(np.float32) * UNIT_TO_U8
    return torch.from_numpy(np.ascontiguousarray(unit.transpose(2, 0, 1)))[None]


def hold_missing(found: np.ndarray) -> np.ndarray:
    """For each frame, the index of the frame whose code it uses.

    Args:
        found: (T,) bool, True where a face / code is available.
    Returns:
        (T,) int64: ``t`` where found, else the last found frame before ``t``, or the first found
        frame for leading gaps. Raises ``ValueError`` when nothing is found.
    """
    found = np.asarray(found, dtype=bool)
    if not found.any():
        raise ValueError("no face was found in any driving frame")
    idx = np.where(found, np.arange(len(found)), -1)
    idx = np.maximum.accumulate(idx)
    idx[idx < 0] = int(np.argmax(found))
    return idx


def _to_u8(images: torch.Tensor) -> np.ndarray:
    """(B,3,H,W) in [0,1] → (B,H,W,3) uint8, rounded."""
    return (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def _cfg_get(cfg: Any, key: str, default: Any = None) -> Any:
    """``cfg.key`` for a DictConfig / dict / namespace, with a default for absent keys."""
    if isinstance(cfg, Mapping):
        value = cfg.get(key, default)
    else:
        value = getattr(cfg, key, default)
    return default if value is None and default is not None else value


def _none_if_empty(value: Any) -> Any:
    return None if value in (None, "", "null", "none", "None") else value


def _progress(iterable, total: Optional[int], desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, unit="frame", disable=not enabled, leave=False)


# ============================================================================ driving codes
@dataclass
class DrivingCodes:
    """DECA codes of every driving frame (after holding frames without a face).

    Attributes:
        code156: (T,156) float32 shape ⊕ exp ⊕ pose. cam: (T,3) or None.
        names: per-frame names. missing: indices of frames without a face / code (held).
        fps: frame rate of the input or None. frames: the frame source (None for code inputs).
    """

    code156: np.ndarray
    cam: Optional[np.ndarray]
    names: list[str]
    missing: list[int]
    fps: Optional[float]
    frames: Optional[DrivingSource] = None


def _is_packed(path: Path) -> bool:
    if path.suffix in (".npy", ".json"):
        return path.with_suffix(".json").is_file() and path.with_suffix(".npy").is_file()
    return (path.parent / f"{path.name}.npy").is_file() and (path.parent / f"{path.name}.json").is_file()


def _is_code_folder(path: Path) -> bool:
    return path.is_dir() and any(p.suffix == ".mat" for p in path.iterdir())


def driving_kind(path: str | Path) -> str:
    """``packed`` / ``mat`` (DECA code inputs) or ``frames`` (video, image folder, image)."""
    path = Path(path).expanduser()
    if _is_packed(path):
        return "packed"
    if not path.exists():
        raise FileNotFoundError(f"driving input not found: {path}")
    if _is_code_folder(path):
        return "mat"
    return "frames"


def _read_code_folder(path: Path, max_frames: Optional[int]) -> DrivingCodes:
    from deca_edit.codes import code156, read_code_mat

    files = sorted(p for p in path.iterdir() if p.suffix == ".mat" and p.is_file())
    files = files[:max_frames] if max_frames else files
    codes, cams = [], []
    for file in files:
        mat = read_code_mat(file, keys=("shape", "exp", "pose"))
        codes.append(code156(mat))
        cams.append(mat["cam"].reshape(3) if "cam" in mat else None)
    cam = np.stack(cams).astype(np.float32) if all(c is not None for c in cams) else None
    return DrivingCodes(np.stack(codes).astype(np.float32), cam, [f.stem for f in files], [], None)


def _read_packed(path: Path, video: Any, max_frames: Optional[int]) -> DrivingCodes:
    from deca_edit.codes import PackedCodes

    packed = PackedCodes(path)
    if video in (None, ""):
        if len(packed.videos) != 1:
            shown = ", ".join(packed.video_names[:5])
            raise ValueError(f"driving {path} holds {len(packed.videos)} videos ({shown}...); "
                             "choose one with driving_video=<name or index>")
        video = 0
    if isinstance(video, str) and video.isdigit() and video not in packed.video_names:
        video = int(video)
    try:
        info = packed.video_info(video)
    except (KeyError, IndexError):
        raise ValueError(f"driving_video={video!r} is not in {path} "
                         f"(videos: {', '.join(packed.video_names[:5])}...)") from None
    rows = np.asarray(packed.video(info.name, check_finite=True, limit=max_frames or None),
                      dtype=np.float32)
    cam = None
    if "cam" in packed.columns:
        a, b = packed.columns["cam"]
        cam = rows[:, a:b].copy()
    return DrivingCodes(rows[:, :156].copy(), cam, list(info.frames[: len(rows)]), [], None)


# ============================================================================ the pipeline
@dataclass
class InferenceResult:
    """What :func:`run` returns.

    Attributes:
        poses: (T,20) float32 anime poses fed to the generator (morph_00…morph_16, angle_0..2).
        morphs_raw: (T,17) EDTN outputs before post-processing.
        frames: frame indices (0..T-1). missing: frames without a face (their code was held).
        out: written animation path or None. pose_csv / pose_npy: written pose files or None.
        fps: frame rate of the output. seconds: per-stage wall time. total_seconds: end to end.
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

    @property
    def frames_per_second(self) -> float:
        return len(self.frames) / self.total_seconds if self.total_seconds > 0 else float("nan")


class ReenactmentPipeline:
    """The inference pipeline, configured once from an ``infer.yaml``-shaped config.

    Construction validates every option, checks the output paths and resolves every needed asset
    (raising before any work); :meth:`__call__` runs the stages. See the module docstring.
    """

    def __init__(self, cfg: Any):
        self.cfg = cfg
        get = lambda key, default=None: _cfg_get(cfg, key, default)  # noqa: E731
        self.progress = bool(get("progress", True))
        # ---------------------------------------------------------------- options
        self.driving = _none_if_empty(get("driving"))
        if self.driving is None:
            raise ValueError("config key 'driving' is required (video, frame folder, image, "
                             ".mat code folder or packed codes)")
        self.driving = Path(str(self.driving)).expanduser()
        self.render = str(get("render", "anime"))
        if self.render not in RENDER_MODES:
            raise ValueError(f"config key 'render' must be one of {RENDER_MODES}, got {self.render!r}")
        self.layout = str(get("layout", "single"))
        if self.layout not in LAYOUTS:
            raise ValueError(f"config key 'layout' must be one of {LAYOUTS}, got {self.layout!r}")
        self.show_morphs = bool(get("show_morphs", True))
        self.show_mesh = bool(get("show_mesh", False)) and self.layout == "grid" and self.render != "none"
        self.batch_size = int(get("batch_size", 8))
        if self.batch_size < 1:
            raise ValueError(f"config key 'batch_size' must be >= 1, got {self.batch_size}")
        max_frames = _none_if_empty(get("max_frames"))
        self.max_frames = int(max_frames) if max_frames is not None else None
        if self.max_frames is not None and self.max_frames < 1:
            raise ValueError(f"config key 'max_frames' must be >= 1 or null, got {self.max_frames}")
        self.aligned = bool(get("aligned", False))
        self.detector_name = str(get("detector", "auto"))
        self.generator_style = str(get("generator", "default"))
        if self.generator_style not in GENERATOR_STYLES:
            raise ValueError(f"config key 'generator' must be one of {GENERATOR_STYLES}, "
                             f"got {self.generator_style!r} (use generator_path= for another file)")
        self.use_ema = bool(get("use_ema", True))
        self.overwrite = bool(get("overwrite", False))
        self.trust_checkpoint = bool(get("trust_checkpoint", False))
        self.strict_frames = bool(get("strict_frames", False))
        self.source_composite = str(get("source_composite", "round"))
        if self.source_composite not in SOURCE_COMPOSITES:
            raise ValueError(f"config key 'source_composite' must be one of {SOURCE_COMPOSITES}, "
                             f"got {self.source_composite!r}")
        fps = _none_if_empty(get("fps"))
        self.fps_override = float(fps) if fps is not None else None
        if self.fps_override is not None and not (self.fps_override > 0 and math.isfinite(self.fps_override)):
            raise ValueError(f"config key 'fps' must be > 0, got {self.fps_override}")
        self.default_fps = float(get("default_fps", DEFAULT_FPS))
        smoothing = get("smoothing", {}) or {}
        self._pose_kwargs = dict(
            angle_mode=str(get("angle_mode", "reference")),
            mouth_gain=float(get("mouth_gain", 1.0)),
            relative=bool(get("relative", False)),
            smoothing=str(_cfg_get(smoothing, "method", "none")),
            ema_alpha=float(_cfg_get(smoothing, "ema_alpha", 0.5)),
            min_cutoff=float(_cfg_get(smoothing, "min_cutoff", 1.0)),
            beta=float(_cfg_get(smoothing, "beta", 0.0)),
            d_cutoff=float(_cfg_get(smoothing, "d_cutoff", 1.0)),
        )
        PoseOptions(**self._pose_kwargs)  # validate now; fps is filled in once known
        self.device = resolve_device(get("device", "auto"))
        # ---------------------------------------------------------------- outputs
        out = _none_if_empty(get("out"))
        self.out = check_output_path(out, "out") if out is not None and self.render != "none" else None
        self.pose_csv = self._check_pose_path(get("pose_csv"), ".csv", "pose_csv")
        self.pose_npy = self._check_pose_path(get("pose_npy"), ".npy", "pose_npy")
        if self.render != "none" and self.out is None:
            raise ValueError("config key 'out' is required unless render=none")
        # ---------------------------------------------------------------- inputs and assets
        self.kind = driving_kind(self.driving)
        self.source = None
        if self.render != "none":
            source = _none_if_empty(get("source"))
            if source is None:
                raise ValueError("config key 'source' (the anime image) is required unless render=none")
            self.source = check_input_path(str(source), "source image")
            if self.source.is_dir():
                raise ValueError(f"source image {self.source} is a folder; give one image file")
        if self.kind != "packed":
            check_input_path(self.driving, "driving input")
        self.assets: dict[str, Path] = {}
        self.assets["edtn_weights"] = resolve_asset("edtn_weights", _none_if_empty(get("edtn_path")))
        if self.kind == "frames":
            self.assets["deca_model"] = resolve_asset("deca_model", _none_if_empty(get("deca_path")))
        if self.render != "none":
            name = f"generator_{self.generator_style}"
            self.assets["generator"] = resolve_asset(name, _none_if_empty(get("generator_path")))
        if self.show_mesh:
            self.assets["flame_model"] = resolve_asset("flame_model", _none_if_empty(get("flame_path")))
            self.assets["landmark_embedding"] = resolve_asset(
                "landmark_embedding", _none_if_empty(get("landmark_embedding_path")))
        # ---------------------------------------------------------------- outputs vs inputs
        from deca_edit.codes import packed_paths

        driving_files = (dict(zip(("driving", "driving (index)"), packed_paths(self.driving)))
                         if self.kind == "packed" else {"driving": self.driving})
        check_outputs_distinct(self._outputs(),
                               {**driving_files, "source": self.source, **self.assets})
        for key, path in self._outputs().items():
            check_replaceable(path, self.overwrite, key)

    def _outputs(self) -> dict[str, Path]:
        """``{config key: path}`` of every file this run writes."""
        return {k: v for k, v in (("out", self.out), ("pose_csv", self.pose_csv),
                                  ("pose_npy", self.pose_npy)) if v is not None}

    @staticmethod
    def _check_pose_path(value: Any, suffix: str, key: str) -> Optional[Path]:
        value = _none_if_empty(value)
        if value is None:
            return None
        path = Path(str(value)).expanduser()
        if path.suffix.lower() != suffix:
            raise ValueError(f"config key {key!r} must end in {suffix}, got {path}")
        if not path.parent.is_dir():
            raise FileNotFoundError(f"{key} {path}: directory {path.parent} does not exist (create it first)")
        return path

    # ------------------------------------------------------------------ stage 1: DECA codes
    def _encode_frames(self, frames: DrivingSource) -> DrivingCodes:
        from deca_edit.crop import make_detector
        from deca_edit.encoder import load_deca_checkpoint
        from deca_edit.extract import extract_codes

        encoder = load_deca_checkpoint(self.assets["deca_model"], device=self.device,
                                       trust_checkpoint=self.trust_checkpoint)
        detector = None if self.aligned else make_detector(self.detector_name, device=self.device)
        named = ((frames.names[i], frame) for i, frame in frames)
        result = extract_codes(named, encoder, detector, batch_size=self.batch_size,
                               device=self.device, progress=self.progress, desc="detect+encode")
        n = len(frames)
        found = np.zeros(n, bool)
        found[result.kept] = True
        if not found.any():
            raise ValueError(f"no face was found in any of the {n} driving frames of {self.driving}")
        codes = np.zeros((n, 156), np.float32)
        cams = np.zeros((n, 3), np.float32)
        codes[result.kept] = np.concatenate(
            [result.codes["shape"], result.codes["exp"], result.codes["pose"]], axis=1)
        cams[result.kept] = result.codes["cam"]
        missing = [int(i) for i in np.nonzero(~found)[0]]
        if missing:
            shown = ", ".join(str(i) for i in missing[:20]) + (" ..." if len(missing) > 20 else "")
            log.warning("no face found in %d of %d frames (%s); holding the previous pose",
                        len(missing), n, shown)
        src = hold_missing(found)
        return DrivingCodes(codes[src], cams[src], list(frames.names), missing, frames.fps, frames)

    def _driving_codes(self) -> DrivingCodes:
        if self.kind == "packed":
            return _read_packed(self.driving, _none_if_empty(_cfg_get(self.cfg, "driving_video")),
                                self.max_frames)
        if self.kind == "mat":
            return _read_code_folder(self.driving, self.max_frames)
        return self._encode_frames(open_driving(self.driving, self.max_frames, self.strict_frames))

    # ------------------------------------------------------------------ stage 2: EDTN
    def _run_edtn(self, code156: np.ndarray) -> torch.Tensor:
        from deca_edit.codes import edtn_input_from_code156
        from edtn.model import load_edtn

        model = load_edtn(self.assets["edtn_weights"], device=self.device,
                          trust_checkpoint=self.trust_checkpoint)
        inputs = torch.from_numpy(edtn_input_from_code156(code156)).to(self.device)
        out = []
        with torch.inference_mode():
            for start in _progress(range(0, len(inputs), max(self.batch_size, 256)), None, "edtn",
                                   self.progress):
                out.append(model(inputs[start:start + max(self.batch_size, 256)]))
        return torch.cat(out).float().cpu()

    # ------------------------------------------------------------------ stage 3: generator
    def _load_generator(self):
        from anime_generator.checkpoint import load_generator

        model = load_generator(self.assets["generator"], use_ema=self.use_ema, device=self.device,
                               asset=f"generator_{self.generator_style}",
                               trust_checkpoint=self.trust_checkpoint)
        try:
            from anime_generator.inference import prepare_for_inference
            model = prepare_for_inference(model)
        except ImportError:
            model.set_skip_dead_branch(True)  # bit-identical output, less work
        return model.eval()

    def _load_flame(self):
        from deca_edit.flame import FLAME

        return FLAME(self.assets["flame_model"], self.assets["landmark_embedding"],
                     trust_checkpoint=self.trust_checkpoint).to(self.device)

    def _iter_driving_images(self, codes: DrivingCodes, size: int) -> Iterator[np.ndarray]:
        if codes.frames is not None:
            for _, frame in codes.frames:
                yield frame
        else:  # code inputs have no pictures: a grey placeholder panel
            while True:
                yield np.full((size, size, 3), 128, np.uint8)

    def _render(self, codes: DrivingCodes, poses: torch.Tensor, morphs: torch.Tensor, fps: float) -> None:
        generator = self._load_generator()
        size = generator.config.image_size
        source = load_source_image(self.source, size, self.source_composite).to(self.device)
        flame = self._load_flame() if self.show_mesh else None
        if self.show_mesh and codes.cam is None:
            raise ValueError(f"show_mesh needs the DECA camera, which {self.driving} does not hold")
        driving_images = self._iter_driving_images(codes, size) if self.layout == "grid" else None
        n = len(poses)
        with FrameWriter(self.out, fps, overwrite=self.overwrite) as writer:
            bar = _progress(None, n, "generate", self.progress)
            for start in range(0, n, self.batch_size):
                stop = min(n, start + self.batch_size)
                pose = poses[start:stop].to(self.device)
                with torch.inference_mode():
                    fake = generator(source.expand(len(pose), -1, -1, -1), pose, stage="gen")["fake_image"]
                    anime = _to_u8(generator.to_unit(fake).float())
                    verts = None
                    if flame is not None:
                        c = torch.from_numpy(codes.code156[start:stop]).to(self.device)
                        verts = flame(c[:, :100], c[:, 100:150], c[:, 150:156]).vertices.cpu().numpy()
                for k in range(stop - start):
                    frame = anime[k]
                    if self.layout == "grid":
                        mesh = None
                        if verts is not None:
                            mesh = render_mesh(verts[k], flame.faces.cpu().numpy(),
                                               codes.cam[start + k], size)
                        frame = compose_grid(next(driving_images), frame,
                                             morphs[start + k].numpy() if self.show_morphs else None, mesh)
                    writer.write(frame)
                bar.update(stop - start)
            bar.close()

    # ------------------------------------------------------------------ run
    def __call__(self) -> InferenceResult:
        with ExitStack() as locks:  # one writer per output: a concurrent run fails fast
            for key, path in self._outputs().items():
                locks.enter_context(output_lock(path, key))
            return self._run()

    def _run(self) -> InferenceResult:
        seconds: dict[str, float] = {}
        t_start = time.perf_counter()
        t0 = t_start
        codes = self._driving_codes()
        seconds["encode" if self.kind == "frames" else "read_codes"] = time.perf_counter() - t0
        fps = self.fps_override or codes.fps or self.default_fps
        t0 = time.perf_counter()
        morphs = self._run_edtn(codes.code156)
        seconds["edtn"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        options = PoseOptions(**self._pose_kwargs, fps=fps)
        global_pose = torch.from_numpy(codes.code156[:, CODE156_GLOBAL].copy())
        poses = build_pose_sequence(morphs, global_pose, options).float()
        seconds["pose"] = time.perf_counter() - t0
        frames = list(range(len(poses)))
        t0 = time.perf_counter()
        if self.pose_csv is not None:
            with atomic_path(self.pose_csv) as tmp:
                pose_table(poses, frames).to_csv(tmp, index=False, float_format="%.9g")
            write_output_marker(self.pose_csv)
        if self.pose_npy is not None:
            with atomic_path(self.pose_npy) as tmp:
                with open(tmp, "wb") as handle:
                    np.save(handle, poses.numpy())
            write_output_marker(self.pose_npy)
        seconds["export"] = time.perf_counter() - t0
        if self.render != "none":
            t0 = time.perf_counter()
            self._render(codes, poses, morphs, fps)
            seconds["generate+write"] = time.perf_counter() - t0
        total = time.perf_counter() - t_start
        result = InferenceResult(poses.numpy(), morphs.numpy(), frames, codes.missing,
                                 self.out if self.render != "none" else None,
                                 self.pose_csv, self.pose_npy, float(fps), seconds, total)
        if codes.missing:
            print(f"frames without a face (previous pose held): {codes.missing}")
        stages = ", ".join(f"{k} {v:.2f}s" for k, v in seconds.items())
        print(f"done: {len(frames)} frames in {total:.2f} s ({result.frames_per_second:.2f} frames/s; "
              f"{stages})" + (f" -> {self.out}" if result.out else ""))
        return result


def run(cfg: Any) -> InferenceResult:
    """Run the whole pipeline for an ``infer.yaml``-shaped config (DictConfig or dict)."""
    return ReenactmentPipeline(cfg)()
