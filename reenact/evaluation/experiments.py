"""The two tables in one call each: render every method, score it (FID, KDR, geometry), write the table.

:func:`run_table` (``kind='table1'`` or ``'ablation'``) for a list of :class:`Method`:

1. checks the protocol against the data and resolves every asset before any work;
2. renders each method into ``<out>/render/<method>/`` (:func:`.render.render_protocol`,
   resumable: finished pairs are skipped);
3. scores it: geometry errors on the protocol's frames, KDR (human landmarks cached once per
   protocol in ``<out>/human_landmarks_<box>/``, anime landmarks cached next to the frames),
   and for Table 1 the FID against the real set (prepared once in ``<out>/real_<size>px_.../``);
   scores are cached in ``<out>/scores/<kind>_<method>.json`` under a key of everything they
   depend on, so a second run recomputes nothing (idempotent);
4. writes ``<out>/<kind>.{md,csv,json,png}`` (:func:`.tables.write_table`).
"""
from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from infra.files import atomic_path, atomic_save_npy
from reenact.evaluation.metrics import (FEATURE_NAMES, FidScorer, anime_openness, check_image_sizes,
                                        detect_human_landmarks, geometry_errors, human_openness, kdr)
from reenact.evaluation.protocol import (DEFAULT_REAL_PER_IDENTITY, IMAGE_SUFFIX, AnimeCelebTest, EvalPair,
                                         VoxCodes, check_protocol, prepare_real_set, protocol_digest,
                                         read_protocol, real_image_paths)
from reenact.evaluation.render import RenderSettings, render_protocol
from reenact.evaluation.tables import (ABLATION_COLUMNS, PAPER_ABLATION_KDR, PAPER_TABLE1, TABLE1_COLUMNS,
                                       Column, write_table)

__all__ = ["KINDS", "HUMAN_BOXES", "Method", "EvalSettings", "human_features", "anime_features",
           "score_method", "run_table"]

log = logging.getLogger(__name__)

KINDS = ("table1", "ablation")
HUMAN_BOXES = ("auto", "fan", "dlib", "frame")   # face boxes for KDR's human side
ANIME_LANDMARKS_NAME = "anime_landmarks28.npy"


@dataclass(frozen=True)
class Method:
    """A table row: ``name`` (label and folder), the mapping and, for ``edtn``, its checkpoint."""

    name: str
    mapping: str = "edtn"
    edtn_path: Optional[str] = None


@dataclass
class EvalSettings:
    """Everything :func:`run_table` needs besides the methods (paths ``None`` = the asset cache).

    Attributes:
        protocol: the protocol CSV. vox_codes: DECA codes of the test videos (``<vox>/deca/test``
            or a packed file). vox_images: the driving frames ``<vox>/images/test`` (KDR).
        anime_root: AnimeCeleb root. out: the results folder.
        render: the render settings shared by the methods (generator, basis and FLAME files,
            batch size); each method sets its ``mapping`` / ``edtn_path``. Its basis and FLAME
            also define the geometry errors.
        inception_path: FID Inception weights. anime_landmarker_path: the 28-point anime model.
        face_landmarker_path: 2D-FAN-4. human_box: face boxes of the human side (``auto``: S3FD
            when present else dlib; ``frame``: the whole frame).
        trust_checkpoint: load a 2D-FAN-4 TorchScript file that is not the verified release.
        fid_feature_layer: Inception features of the FID (``2048`` = the standard FID).
        real_dir: a prepared FID real set (default: made in ``<out>/real_<size>px_<n>per_id_seed<s>``);
        real_per_identity / real_seed: its sampling.
        device, progress: runtime (``device`` also applies to the renders).
    """

    protocol: Path
    vox_codes: Path
    anime_root: Path
    out: Path
    vox_images: Optional[Path] = None
    render: RenderSettings = field(default_factory=RenderSettings)
    inception_path: Optional[str] = None
    anime_landmarker_path: Optional[str] = None
    face_landmarker_path: Optional[str] = None
    human_box: str = "auto"
    trust_checkpoint: bool = False
    fid_feature_layer: str = "2048"
    real_dir: Optional[Path] = None
    real_per_identity: Optional[int] = DEFAULT_REAL_PER_IDENTITY
    real_seed: int = 0
    device: str = "auto"
    progress: bool = True


# ----------------------------------------------------------------------------- KDR features
def _human_box_detector(kind: str, device):
    from deca_edit.crop import DlibFaceDetector, SfdFaceDetector
    from infra.assets import AssetError

    if kind == "frame":
        return None
    if kind == "dlib":
        return DlibFaceDetector()
    try:
        return SfdFaceDetector(None, device)
    except AssetError:
        if kind == "fan":
            raise
        log.warning("S3FD weights (asset face_detector) not found: human-side face boxes from dlib")
        return DlibFaceDetector()


def human_features(pairs: Sequence[EvalPair], images_root: Path, cache_dir: Path, *,
                   landmarker_path: Optional[str] = None, box: str = "auto", device="cpu",
                   trust_checkpoint: bool = False,
                   progress: bool = True) -> dict[str, np.ndarray]:
    """KDR's human features (T, 3) per pair, from 68 landmarks of the driving frames (cached as
    ``<cache_dir>/<pair>.npy``, (T, 68, 2), NaN rows where no face was found)."""
    from tqdm.auto import tqdm

    from deca_edit.crop import FanLandmarker
    from infra.image_io import read_image

    if box not in HUMAN_BOXES:
        raise ValueError(f"human_box must be one of {HUMAN_BOXES}, got {box!r}")
    out, landmarker, detector = {}, None, None
    for pair in tqdm(pairs, desc="human landmarks", unit="pair", disable=not progress):
        cache = cache_dir / f"{pair.pair}.npy"
        if cache.is_file():
            points = np.load(cache)
        else:
            if landmarker is None:
                landmarker = FanLandmarker(landmarker_path, device, trust_checkpoint=trust_checkpoint)
                detector = _human_box_detector(box, device)
            points = np.full((len(pair.frames), 68, 2), np.nan, np.float32)
            for t, frame in enumerate(pair.frames):
                image = read_image(images_root / pair.video / f"{frame}{IMAGE_SUFFIX}")
                found = detect_human_landmarks(image, landmarker, detector)
                if found is not None:
                    points[t] = found
            atomic_save_npy(points, cache)
        out[pair.pair] = human_openness(points)
    return out


def anime_features(pairs: Sequence[EvalPair], render_dir: Path, *, landmarker_path: Optional[str] = None,
                   device="cpu", detector=None, progress: bool = True) -> dict[str, np.ndarray]:
    """KDR's anime features (T, 3) per pair, from the 28 anime landmarks of the generated frames
    (whole frame = face box; cached as ``<render_dir>/<pair>/anime_landmarks28.npy``)."""
    from tqdm.auto import tqdm

    from infra.image_io import read_image
    from reenact.evaluation.anime_landmarks import AnimeLandmarkDetector

    out = {}
    for pair in tqdm(pairs, desc="anime landmarks", unit="pair", disable=not progress):
        cache = render_dir / pair.pair / ANIME_LANDMARKS_NAME
        if cache.is_file():
            points = np.load(cache)
        else:
            if detector is None:
                detector = AnimeLandmarkDetector(landmarker_path, device)
            images = [read_image(render_dir / pair.pair / f"{f}{IMAGE_SUFFIX}") for f in pair.frames]
            points, _ = detector(images)
            atomic_save_npy(points, cache)
        out[pair.pair] = anime_openness(points)
    return out


# ----------------------------------------------------------------------------- one method
class _Lazy:
    """Builds an expensive callable (a network) on its first call only."""

    def __init__(self, factory) -> None:
        self.factory, self.built = factory, None

    def __call__(self, *args, **kwargs):
        if self.built is None:
            self.built = self.factory()
        return self.built(*args, **kwargs)


class _RealSetFid:
    """FID against one real set: the Inception network and the real statistics are made on first
    use (not at all when every score comes from the cache) and shared by the methods."""

    def __init__(self, real: list[Path], settings: "EvalSettings") -> None:
        self.real, self.settings = real, settings
        self.scorer, self.stats = None, None

    def __call__(self, fake: list[Path]) -> dict:
        check_image_sizes(fake, check_image_sizes(self.real), self.real[0])
        if self.scorer is None:
            self.scorer = FidScorer(self.settings.inception_path, device=self.settings.device,
                                    progress=self.settings.progress, feature_layer=self.settings.fid_feature_layer)
            self.stats = self.scorer.statistics(self.real, "real")
        return self.scorer.compare(self.stats, fake)


def _file_key(path) -> Optional[str]:
    if path in (None, ""):
        return None
    p = Path(path).expanduser()
    return f"{p.resolve()}:{p.stat().st_size}:{int(p.stat().st_mtime)}" if p.is_file() else str(p)


def score_method(method: Method, pairs: Sequence[EvalPair], codes: VoxCodes, settings: EvalSettings, *,
                 kind: str, loss_fn, human: dict, real: Optional[_RealSetFid], render_dir: Path,
                 anime_detector=None) -> dict:
    """Geometry, KDR and (``table1``) FID of one rendered method; cached (see the module docstring)."""
    from edtn.mappings import build_mapping

    digest = protocol_digest(pairs)
    key = {"kind": kind, "protocol": digest, "method": asdict(method), "edtn": _file_key(method.edtn_path),
           "render": json.loads((render_dir / "render.json").read_text(encoding="utf-8")),
           "flame": _file_key(settings.render.flame_path), "human_box": settings.human_box,
           "real": [len(real.real), str(real.real[0].parent)] if real else None,
           "inception": _file_key(settings.inception_path), "fid_layer": settings.fid_feature_layer}
    cache = settings.out / "scores" / f"{kind}_{method.name}.json"
    if cache.is_file():
        stored = json.loads(cache.read_text(encoding="utf-8"))
        if stored.get("key") == key:
            return stored["scores"]
    files = settings.render
    mapping = build_mapping(method.mapping, edtn_path=method.edtn_path, basis_path=files.basis_path,
                            flame_path=files.flame_path, landmark_embedding_path=files.landmark_embedding_path,
                            device=loss_fn.basis.device)
    inputs = torch.from_numpy(np.concatenate([_inputs53(codes, p) for p in pairs]))
    scores = {k: v for k, v in geometry_errors(mapping, inputs, loss_fn).items()
              if k in ("vertex", "vertex_rmse_mm", "landmark", "eye", "lip", "frames")}
    if human is not None:
        anime = anime_features(pairs, render_dir, landmarker_path=settings.anime_landmarker_path,
                               device=loss_fn.basis.device, detector=anime_detector, progress=settings.progress)
        result = kdr([human[p.pair] for p in pairs], [anime[p.pair] for p in pairs])
        scores.update(kdr=result["kdr"], kdr_frames=result["frames"], kdr_frames_skipped=result["frames_skipped"])
    if kind == "table1":
        fake = [render_dir / p.pair / f"{f}{IMAGE_SUFFIX}" for p in pairs for f in p.frames]
        fid = real(fake)
        scores.update(fid=fid["fid"], fid_real_images=fid["real_images"], fid_fake_images=fid["fake_images"])
    with atomic_path(cache) as tmp:
        tmp.write_text(json.dumps({"key": key, "scores": scores}, indent=1) + "\n", encoding="utf-8")
    return scores


def _inputs53(codes: VoxCodes, pair: EvalPair) -> np.ndarray:
    from deca_edit.codes import edtn_input_from_code156

    return edtn_input_from_code156(codes.code156(pair.video, pair.frames))


# ----------------------------------------------------------------------------- the tables
def run_table(kind: str, methods: Sequence[Method], settings: EvalSettings) -> dict:
    """Render, score and tabulate ``methods`` (see the module docstring). Returns
    ``{"rows", "paths", "render"}``."""
    from edtn.losses import LossWeights
    from edtn.losses import build_geometry_loss
    from infra.assets import resolve_asset
    from infra.runtime import resolve_device

    if kind not in KINDS:
        raise ValueError(f"table kind must be one of {KINDS}, got {kind!r}")
    if not methods:
        raise ValueError("no method to evaluate")
    names = [m.name for m in methods]
    if len(set(names)) != len(names):
        raise ValueError(f"method names must be unique, got {names}")
    if settings.vox_images is None:
        raise ValueError("KDR needs the driving frames: pass the VoxCeleb test images folder (vox_images)")
    out = Path(settings.out)
    pairs = read_protocol(settings.protocol)
    codes = VoxCodes(settings.vox_codes)
    check_protocol(pairs, settings.protocol, codes=codes, anime_root=settings.anime_root,
                   images_root=settings.vox_images)
    device = resolve_device(settings.device)
    # Every file before any work: a missing one stops here, naming it.
    template = replace(settings.render, device=settings.device)
    resolve_asset(f"generator_{template.generator_style}", template.generator_path)
    for method in methods:
        if method.mapping == "edtn":
            resolve_asset("edtn_weights", method.edtn_path)
    resolve_asset("anime_landmarker", settings.anime_landmarker_path)
    resolve_asset("face_landmarker", settings.face_landmarker_path)
    if kind == "table1":
        resolve_asset("inception_fid", settings.inception_path)
    loss_fn = build_geometry_loss(template.flame_path, template.landmark_embedding_path, template.basis_path,
                                  LossWeights(), "fast", device)

    render_reports = {}
    for method in methods:
        render_settings = replace(template, mapping=method.mapping, edtn_path=method.edtn_path)
        render_reports[method.name] = render_protocol(pairs, codes, settings.anime_root,
                                                      out / "render" / method.name, render_settings,
                                                      protocol_path=settings.protocol, progress=settings.progress)
    human = human_features(pairs, Path(settings.vox_images), out / f"human_landmarks_{settings.human_box}",
                           landmarker_path=settings.face_landmarker_path, box=settings.human_box,
                           trust_checkpoint=settings.trust_checkpoint,
                           device=device, progress=settings.progress)
    real = None
    if kind == "table1":
        real = _RealSetFid(_real_set(pairs, settings, out / "render" / methods[0].name), settings)
    from reenact.evaluation.anime_landmarks import AnimeLandmarkDetector

    detector = _Lazy(lambda: AnimeLandmarkDetector(settings.anime_landmarker_path, device))
    rows = []
    for method in methods:
        scores = score_method(method, pairs, codes, settings, kind=kind, loss_fn=loss_fn, human=human,
                              real=real, render_dir=out / "render" / method.name, anime_detector=detector)
        row = {"method": method.name, **scores}
        if kind == "ablation":
            row["paper_kdr"] = PAPER_ABLATION_KDR.get(method.name)
        rows.append(row)
    paths = _write(kind, rows, pairs, settings, real.real if real else None)
    return {"rows": rows, "paths": paths, "render": render_reports}


def _real_set(pairs: Sequence[EvalPair], settings: EvalSettings, rendered: Path) -> list[Path]:
    """The FID real set: ``settings.real_dir``, else prepared once in
    ``<out>/real_<size>px_<n>per_id_seed<seed>/`` from the protocol's identities."""
    from PIL import Image

    from reenact.evaluation.metrics import list_images

    if settings.real_dir is not None:
        return list_images(settings.real_dir, "real image folder")
    first = rendered / pairs[0].pair / f"{pairs[0].frames[0]}{IMAGE_SUFFIX}"
    with Image.open(first) as img:
        size = img.size[0]
    per = settings.real_per_identity
    folder = settings.out / f"real_{size}px_{per or 'all'}per_id_seed{settings.real_seed}"
    anime = AnimeCelebTest(settings.anime_root, ids=list(dict.fromkeys(p.identity for p in pairs)))
    paths = real_image_paths(anime, per_identity=per, seed=settings.real_seed)
    prepare_real_set(paths, size, folder, progress=settings.progress)
    return list_images(folder, "real image folder")


def _write(kind: str, rows: list[dict], pairs: Sequence[EvalPair], settings: EvalSettings,
           real: Optional[list[Path]]) -> list[Path]:
    frames = sum(len(p.frames) for p in pairs)
    notes = [
        f"Protocol {settings.protocol} (digest {protocol_digest(pairs)}): {len(pairs)} pairs, {frames} frames.",
        "KDR: our definition (README *Evaluation*, reenact/evaluation/metrics.py): mean over frames t >= 1 "
        "and 3 features (eye, eye, mouth openness) of |Δhuman − Δanime|, Δ relative to the first frame. "
        "The paper's KDR definition is not published: KDR values are NOT comparable with the paper's.",
        "Geometry: EDTN's loss terms between FLAME driven by the DECA codes and by the predicted morphs "
        "(vertex RMSE in mm; landmark, eye, lip in projected units), over the protocol's frames.",
        f"Human landmarks: face-alignment 2D-FAN-4 on face boxes '{settings.human_box}'; anime landmarks: "
        "anime-face-detector HRNetV2 (whole frame as the box, flip test, DARK decoding).",
    ]
    if kind == "table1":
        layer = settings.fid_feature_layer
        notes.insert(1, f"FID: torch-fidelity InceptionV3 ({layer}-d features"
                        + ("" if layer == "2048" else ": NOT the standard FID, a quick check only")
                        + f"), real = {len(real)} AnimeCeleb test images "
                        f"({settings.real_per_identity} per identity, seed {settings.real_seed}) at the generator's "
                        "resolution, fake = every generated frame. Same metric as the paper's FID; the paper's "
                        "real/fake set sizes are not published.")
        paper = {"columns": [Column("method", "Method", "s"), Column("fid", "FID ↓", ".2f"),
                             Column("kdr", "KDR ↓", ".3f")],
                 "rows": [{"method": k, "fid": f, "kdr": r} for k, (f, r) in PAPER_TABLE1.items()]}
        return write_table(rows, TABLE1_COLUMNS, settings.out / "table1",
                           title="Table 1: cross-domain reenactment (VoxCeleb → AnimeCeleb)", notes=notes,
                           paper=paper, extra={"features": list(FEATURE_NAMES)})
    return write_table(rows, ABLATION_COLUMNS, settings.out / "ablation", title="Loss ablation (EDTN)",
                       notes=notes + ["Paper KDR: the paper's ablation values (not comparable, see KDR above)."],
                       extra={"features": list(FEATURE_NAMES)})
