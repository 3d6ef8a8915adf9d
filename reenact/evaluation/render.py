"""Render an evaluation protocol with one morph mapping, on the inference stages.

For every pair of the protocol (:mod:`.protocol`): the DECA codes of its frames →
:class:`reenact.stages.MorphMapper` (EDTN checkpoint, ``basis_fit`` or ``vertex_fit``) → pose
post-processing (:func:`reenact.pose.build_pose_sequence`, the original's defaults) →
:class:`reenact.stages.AnimeRenderer` (the generator, animating the pair's source image, in
batches; CUDA when present with ``device=auto``). Output::

    <out>/render.json                 what was rendered (protocol digest, mapping, checkpoints)
    <out>/<pair>/<frame>.png          generated frames (RGB, the generator's resolution)
    <out>/<pair>/poses.npy            (T, 20) float32 poses; written last: its presence = pair done

* Resumable: a pair whose ``poses.npy`` exists is skipped; every file is written atomically, so an
  interrupted run leaves no half-written file and the next run redoes only unfinished pairs.
* Sharded: ``shard=(i, n)`` renders the pairs k with k % n == i (cluster job arrays); shards
  share ``<out>``.
* Consistent: ``render.json`` records the protocol digest and the method; rendering into a folder
  made with another protocol or method is refused (one clear message).
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from infra.files import atomic_path, atomic_save_npy
from reenact.evaluation.protocol import EvalPair, VoxCodes, check_protocol, protocol_digest
from reenact.pose import PoseOptions

__all__ = ["MANIFEST_NAME", "POSES_NAME", "RenderSettings", "pair_done", "render_protocol"]

MANIFEST_NAME = "render.json"
POSES_NAME = "poses.npy"
MANIFEST_FORMAT = "edtn-eval-render/1"
FRAME_SUFFIX = ".png"
CODE156_GLOBAL = slice(150, 153)


@dataclass
class RenderSettings:
    """What a render uses (every path through the asset resolver; ``None`` = the asset cache).

    Attributes:
        mapping: ``edtn`` | ``basis_fit`` | ``vertex_fit``.
        edtn_path: EDTN checkpoint (``edtn``). basis_path: the morph basis (the fits).
        flame_path, landmark_embedding_path: FLAME (``vertex_fit``).
        generator_path: generator checkpoint. generator_style: ``default`` / ``cartoon`` (asset
            name when ``generator_path`` is None). use_ema: EMA generator weights.
        source_composite: ``round`` / ``truncate`` for RGBA source images.
        pose: pose post-processing (default: the original's).
        batch_size: frames per generator call. device: ``auto`` (CUDA when present) / ``cpu`` / ``cuda``.
    """

    mapping: str = "edtn"
    edtn_path: Optional[str] = None
    basis_path: Optional[str] = None
    flame_path: Optional[str] = None
    landmark_embedding_path: Optional[str] = None
    generator_path: Optional[str] = None
    generator_style: str = "default"
    use_ema: bool = True
    source_composite: str = "round"
    pose: PoseOptions = field(default_factory=PoseOptions)
    batch_size: int = 16
    device: str = "auto"

    def identity(self) -> dict:
        """The fields that decide the pictures (recorded in ``render.json``)."""
        def describe(path: Optional[str]) -> Optional[str]:
            if path is None:
                return None
            p = Path(path).expanduser()
            return f"{p.resolve()} ({p.stat().st_size} bytes)" if p.is_file() else str(p)

        return {"mapping": self.mapping, "edtn": describe(self.edtn_path) if self.mapping == "edtn" else None,
                "generator": describe(self.generator_path), "generator_style": self.generator_style,
                "use_ema": self.use_ema, "source_composite": self.source_composite, "pose": asdict(self.pose)}


def pair_done(out_dir: str | os.PathLike, pair: EvalPair) -> bool:
    """Whether ``pair`` is fully rendered in ``out_dir``."""
    return (Path(out_dir) / pair.pair / POSES_NAME).is_file()


def _check_manifest(out_dir: Path, manifest: dict) -> None:
    path = out_dir / MANIFEST_NAME
    if path.is_file():
        old = json.loads(path.read_text(encoding="utf-8"))
        for key in ("protocol", "settings"):
            if old.get(key) != manifest[key]:
                raise ValueError(f"{out_dir} holds a render of another {key} ({path}: {old.get(key)} vs "
                                 f"{manifest[key]}); render into a new folder or delete it")
        return
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")


def render_protocol(pairs: Sequence[EvalPair], codes: VoxCodes, anime_root: str | os.PathLike,
                    out_dir: str | os.PathLike, settings: RenderSettings, *,
                    shard: tuple[int, int] | str | None = None, protocol_path: str | os.PathLike = "protocol",
                    progress: bool = True) -> dict:
    """Render this shard's pairs (see the module docstring).

    Returns:
        ``{"pairs", "rendered", "skipped", "frames", "seconds", "frames_per_second"}`` for the work
        done in this call.
    Raises:
        ValueError: the protocol names a missing video / frame / source image, or ``out_dir``
        holds another render (one message each). AssetError: a checkpoint is missing.
    """
    from tqdm.auto import tqdm

    from deca_edit.extract import parse_shard
    from infra.assets import resolve_asset
    from infra.runtime import resolve_device
    from reenact.pose import build_pose_sequence
    from reenact.stages import AnimeRenderer, MorphMapper

    index, count = parse_shard(shard)
    anime_root = Path(anime_root).expanduser()
    out_dir = Path(out_dir)
    check_protocol(pairs, protocol_path, codes=codes, anime_root=anime_root)
    mine = [p for k, p in enumerate(pairs) if k % count == index]
    todo = [p for p in mine if not pair_done(out_dir, p)]
    _check_manifest(out_dir, {"format": MANIFEST_FORMAT, "protocol": protocol_digest(pairs),
                              "settings": settings.identity()})
    report = {"pairs": len(mine), "rendered": 0, "skipped": len(mine) - len(todo), "frames": 0,
              "seconds": 0.0, "frames_per_second": float("nan")}
    if not todo:
        return report
    device = resolve_device(settings.device)
    generator = resolve_asset(f"generator_{settings.generator_style}", settings.generator_path)
    mapper = MorphMapper(settings.edtn_path, device, mapping=settings.mapping, basis_path=settings.basis_path,
                         flame_path=settings.flame_path, landmark_embedding_path=settings.landmark_embedding_path)
    renderer = AnimeRenderer(generator, anime_root / todo[0].source, style=settings.generator_style,
                             use_ema=settings.use_ema, source_composite=settings.source_composite, device=device)
    start = time.perf_counter()
    bar = tqdm(todo, desc=f"render {settings.mapping}", unit="pair", disable=not progress)
    for pair in bar:
        code156 = codes.code156(pair.video, pair.frames)
        morphs = mapper(code156)
        poses = build_pose_sequence(morphs, torch.from_numpy(code156[:, CODE156_GLOBAL].copy()),
                                    settings.pose).float()
        renderer.set_source(anime_root / pair.source, settings.source_composite)
        folder = out_dir / pair.pair
        folder.mkdir(parents=True, exist_ok=True)
        for lo in range(0, len(poses), settings.batch_size):
            frames = renderer.render(poses[lo:lo + settings.batch_size])
            for name, frame in zip(pair.frames[lo:lo + settings.batch_size], frames):
                _write_png(folder / f"{name}{FRAME_SUFFIX}", frame)
        atomic_save_npy(poses.numpy().astype(np.float32), folder / POSES_NAME)
        report["rendered"] += 1
        report["frames"] += len(poses)
    report["seconds"] = time.perf_counter() - start
    report["frames_per_second"] = report["frames"] / report["seconds"] if report["seconds"] > 0 else float("nan")
    return report


def _write_png(path: Path, frame: np.ndarray) -> None:
    from PIL import Image

    with atomic_path(path) as tmp:
        Image.fromarray(frame).save(tmp, format="PNG")
