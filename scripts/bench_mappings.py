"""Benchmark the morph mappings (frames/s) and the evaluation renderer, each against a ceiling
measured in the same run.

Mappings, at one batch of DECA codes (the 308 example codes, jittered and tiled to ``--batch``):

* ``edtn (MLP forward)`` — the ceiling: the EDTN network's forward pass;
* ``basis_fit`` — exact box-constrained fit in expression space;
* ``vertex_fit`` — the whole mapping (FLAME real targets + exact 17-variable solve), and its two
  parts: ``vertex_fit: real targets`` (``GeometryLoss.real_targets``) and ``vertex_fit: solve``.

Renderer (``--render-frames`` > 0): frames/s of ``reenact.evaluation.render.render_protocol``
(codes → basis_fit → poses → generator → PNG, at the generator's default 256²) on a one-pair
protocol built in a temporary folder, against the bare generator forward at the same batch. The
generator's weights are random (speed only).

Each case: ``--warmup`` untimed runs, median of ``--repeats`` timed runs. Prints a table (frames/s
and the ratio to the ceiling) and writes JSON (default ``bench_results/bench_mappings.json``).

    python scripts/bench_mappings.py --threads 2
    python scripts/bench_mappings.py --device cuda --batch 65536 --render-frames 64
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from deca_edit.codes import code156, edtn_input_from_code156, read_code_mat  # noqa: E402
from edtn.losses import LossWeights, load_basis  # noqa: E402
from edtn.mappings import BasisFit, VertexFit, solve_box_qp  # noqa: E402
from edtn.losses import REAL_SLICE_PROJ  # noqa: E402
from edtn.model import EDTN  # noqa: E402
from infra.assets import resolve_asset_or_fallback  # noqa: E402
from infra.runtime import resolve_device  # noqa: E402
from bench_flame import SHARED, SHARED_EMBEDDING, SYNTHETIC_MODEL, time_case  # noqa: E402  (scripts/)

SHARED_BASIS = SHARED / "reference" / "authors" / "transform_matrix_08_30.npy"
SHARED_CODES = SHARED / "reference" / "authors" / "vox_deca"
SHARED_SOURCE = SHARED / "reference" / "authors" / "basis.png"
JITTER = 0.1  # std of the noise added to the tiled example codes (so rows differ)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", help="cpu | cuda | auto (default: cpu)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op CPU threads")
    p.add_argument("--batch", type=int, default=4096, help="codes per mapping call (default 4096)")
    p.add_argument("--flame-model", default=None, help="FLAME model (default: cache, else the kit's synthetic one)")
    p.add_argument("--landmark-embedding", default=None, help="landmark_embedding.npy (default: cache, else kit)")
    p.add_argument("--basis", default=None, help="transform_matrix_08_30.npy (default: cache, else kit)")
    p.add_argument("--codes", default=str(SHARED_CODES), help="folder of DECA .mat codes to tile")
    p.add_argument("--render-frames", type=int, default=8, help="frames for the renderer case (0: skip)")
    p.add_argument("--render-batch", type=int, default=8, help="generator batch of the renderer case")
    p.add_argument("--warmup", type=int, default=2, help="untimed runs per case")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per case (>= 5)")
    p.add_argument("--out", default="bench_results/bench_mappings.json", help="JSON output")
    return p.parse_args()


def example_inputs(folder: Path, batch: int) -> torch.Tensor:
    files = sorted(Path(folder).glob("*.mat"))
    if not files:
        raise FileNotFoundError(f"no .mat codes in {folder}")
    base = np.stack([edtn_input_from_code156(code156(read_code_mat(f))) for f in files]).astype(np.float32)
    rng = np.random.default_rng(0)
    rows = base[rng.integers(0, len(base), batch)] + JITTER * rng.standard_normal((batch, base.shape[1]))
    return torch.from_numpy(rows.astype(np.float32))


def bench_mappings(args, device) -> list[dict]:
    from edtn.losses import build_geometry_loss

    flame, flame_source = resolve_asset_or_fallback("flame_model", args.flame_model, SYNTHETIC_MODEL)
    embedding, _ = resolve_asset_or_fallback("landmark_embedding", args.landmark_embedding, SHARED_EMBEDDING)
    basis, _ = resolve_asset_or_fallback("transform_matrix", args.basis, SHARED_BASIS)
    x = example_inputs(Path(args.codes), args.batch).to(device)
    torch.manual_seed(0)
    mlp = EDTN().to(device).eval()
    loss = build_geometry_loss(str(flame), str(embedding), str(basis), LossWeights(), "fast", device)
    basis_fit, vertex_fit = BasisFit(load_basis(basis), device), VertexFit(loss)
    targets = loss.real_targets(x)[:, REAL_SLICE_PROJ].to(torch.float64)
    linear = targets @ vertex_fit.r

    def mlp_step():
        with torch.inference_mode():
            mlp(x)

    cases = [("edtn (MLP forward) [ceiling]", mlp_step), ("basis_fit", lambda: basis_fit(x)),
             ("vertex_fit", lambda: vertex_fit(x)), ("vertex_fit: real targets", lambda: loss.real_targets(x)),
             ("vertex_fit: solve", lambda: solve_box_qp(vertex_fit.gram, linear))]
    rows = []
    for name, step in cases:
        seconds = time_case(step, device, args.warmup, args.repeats)
        rows.append({"case": name, "batch": args.batch, "median_ms": 1e3 * seconds,
                     "frames_per_s": args.batch / seconds})
    ceiling = rows[0]["frames_per_s"]
    for row in rows:
        row["ratio_to_ceiling"] = row["frames_per_s"] / ceiling
    rows[0]["flame_model_source"] = flame_source
    return rows


def bench_renderer(args, device) -> list[dict]:
    """render_protocol on a one-pair protocol vs the bare generator forward (random weights)."""
    from anime_generator.checkpoint import generator_checkpoint
    from anime_generator.model import AnimeGenerator
    from reenact.evaluation.protocol import EvalPair, VoxCodes
    from reenact.evaluation.render import RenderSettings, render_protocol
    from reenact.stages import AnimeRenderer

    frames = sorted(Path(args.codes).glob("*.mat"))[:args.render_frames]
    with tempfile.TemporaryDirectory(prefix="bench_render_") as tmp:
        tmp = Path(tmp)
        video = tmp / "deca" / "video.mp4"
        video.mkdir(parents=True)
        for f in frames:
            shutil.copy(f, video / f.name)
        anime = tmp / "anime" / "basis" / "char"
        anime.mkdir(parents=True)
        shutil.copy(SHARED_SOURCE, anime / "basis.png")
        torch.manual_seed(0)
        torch.save(generator_checkpoint(AnimeGenerator()), tmp / "generator.pt")
        pair = EvalPair("p0", "video.mp4", "0", "basis/char/basis.png", tuple(f.stem for f in frames))
        codes = VoxCodes(tmp / "deca")
        basis, _ = resolve_asset_or_fallback("transform_matrix", args.basis, SHARED_BASIS)
        settings = RenderSettings(mapping="basis_fit", basis_path=str(basis), generator_path=str(tmp / "generator.pt"),
                                  use_ema=False, batch_size=args.render_batch, device=str(device))
        runs = []
        for k in range(args.warmup + args.repeats):
            report = render_protocol([pair], codes, tmp / "anime", tmp / f"out{k}", settings, progress=False)
            runs.append(report["seconds"])
        seconds = statistics.median(runs[args.warmup:])
        renderer = AnimeRenderer(tmp / "generator.pt", anime / "basis.png", use_ema=False, device=device)
        poses = torch.zeros(args.render_batch, 20)
        bare = time_case(lambda: renderer.render(poses), device, args.warmup, args.repeats)
    n = len(frames)
    ceiling = args.render_batch / bare
    return [{"case": "generator forward [ceiling]", "batch": args.render_batch, "median_ms": 1e3 * bare,
             "frames_per_s": ceiling, "ratio_to_ceiling": 1.0},
            {"case": "render_protocol (basis_fit, PNG)", "batch": args.render_batch, "frames": n,
             "median_ms": 1e3 * seconds, "frames_per_s": n / seconds, "ratio_to_ceiling": n / seconds / ceiling}]


def main() -> None:
    args = parse_args()
    if args.repeats < 5:
        raise ValueError(f"--repeats must be >= 5, got {args.repeats}")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    rows = bench_mappings(args, device)
    render_rows = bench_renderer(args, device) if args.render_frames > 0 else []
    hardware = (torch.cuda.get_device_name(device) if device.type == "cuda"
                else platform.processor() or platform.machine())
    meta = {"hardware": hardware, "device": str(device), "threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version(),
            "batch": args.batch, "warmup": args.warmup, "repeats": args.repeats,
            "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None}
    print(f"morph mappings on {hardware} ({device}, {meta['threads']} threads, torch {torch.__version__}), "
          f"batch {args.batch}, load average {meta['load_average']}")
    print(f"{'case':<34} {'median ms':>10} {'frames/s':>12} {'x ceiling':>10}")
    for row in rows + render_rows:
        print(f"{row['case']:<34} {row['median_ms']:>10.2f} {row['frames_per_s']:>12.1f} "
              f"{row['ratio_to_ceiling']:>10.4f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "mappings": rows, "renderer": render_rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
