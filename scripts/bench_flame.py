"""Benchmark the FLAME layer: forward and forward+backward throughput.

Forward+backward takes the gradient with respect to ``exp`` and ``pose`` (what the EDTN loss
needs). Reports vertices/s (batch * 5023 / time) and samples/s, median of ``--repeats`` timed
runs after ``--warmup`` untimed runs, prints a table and writes JSON.

Example::

    python scripts/bench_flame.py --device cpu --threads 2
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from deca_edit.flame import FLAME  # noqa: E402
from infra.assets import resolve_asset_or_fallback  # noqa: E402
from infra.runtime import resolve_device  # noqa: E402

SHARED = Path(os.environ.get("EDTN_SHARED", REPO_ROOT.parent / "shared"))
SYNTHETIC_MODEL = SHARED / "reference" / "parity" / "flame_deca" / "synthetic_generic_model.pkl"
SHARED_EMBEDDING = SHARED / "reference" / "deca" / "landmark_embedding.npy"
DEFAULT_BATCHES = (1, 64, 512)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda (default: auto)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op CPU threads (default: torch's choice)")
    parser.add_argument("--flame-model", default=None,
                        help="FLAME generic_model.pkl (default: asset cache, else the synthetic "
                             "model in ../shared)")
    parser.add_argument("--landmark-embedding", default=None,
                        help="landmark_embedding.npy (default: asset cache, else ../shared)")
    parser.add_argument("--batches", type=int, nargs="+", default=list(DEFAULT_BATCHES),
                        help="batch sizes (default: 1 64 512)")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    parser.add_argument("--warmup", type=int, default=3, help="untimed runs per case")
    parser.add_argument("--repeats", type=int, default=7, help="timed runs per case (>= 5)")
    parser.add_argument("--out", default="bench_results/bench_flame.json", help="JSON output")
    return parser.parse_args()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_case(step, device: torch.device, warmup: int, repeats: int) -> float:
    """Median seconds of ``step()`` over ``repeats`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        step()
    sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    args = parse_args()
    if args.repeats < 5:
        raise ValueError(f"--repeats must be >= 5, got {args.repeats}")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    dtype = getattr(torch, args.dtype)
    model_path, model_source = resolve_asset_or_fallback("flame_model", args.flame_model, SYNTHETIC_MODEL)
    emb_path, _ = resolve_asset_or_fallback("landmark_embedding", args.landmark_embedding, SHARED_EMBEDDING)
    flame = FLAME(model_path, emb_path, dtype=dtype, check_finite=False).to(device)
    n_vertices = flame.v_template.shape[0]
    generator = torch.Generator().manual_seed(0)

    rows = []
    cases = [(b, mode) for b in args.batches for mode in ("forward", "forward+backward")]
    for batch, mode in tqdm(cases, desc="bench_flame", leave=False):
        shape = torch.randn(batch, flame.n_shape, generator=generator, dtype=dtype).to(device)
        exp = (0.8 * torch.randn(batch, flame.n_exp, generator=generator, dtype=dtype)).to(device)
        pose = (0.2 * torch.randn(batch, 6, generator=generator, dtype=dtype)).to(device)
        if mode == "forward":
            def step():
                with torch.no_grad():
                    flame(shape, exp, pose)
        else:
            exp_g, pose_g = exp.clone().requires_grad_(True), pose.clone().requires_grad_(True)

            def step():
                out = flame(shape, exp_g, pose_g)
                loss = out.vertices.square().mean() + out.landmarks2d.abs().mean()
                loss.backward()
                exp_g.grad = pose_g.grad = None
        seconds = time_case(step, device, args.warmup, args.repeats)
        rows.append({"batch": batch, "mode": mode, "median_ms": 1e3 * seconds,
                     "samples_per_s": batch / seconds,
                     "vertices_per_s": batch * n_vertices / seconds})

    if device.type == "cuda":
        hardware = torch.cuda.get_device_name(device)
    else:
        hardware = platform.processor() or platform.machine()
    meta = {
        "hardware": hardware, "device": str(device), "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(), "torch": torch.__version__,
        "python": platform.python_version(),
        "dtype": args.dtype, "flame_model": str(model_path), "flame_model_source": model_source,
        "warmup": args.warmup, "repeats": args.repeats,
    }
    print(f"FLAME benchmark on {hardware} ({device}, {meta['threads']} threads, torch "
          f"{torch.__version__}, {args.dtype}); model: {model_source} ({model_path})")
    print(f"{'batch':>6} {'mode':<17} {'median ms':>10} {'samples/s':>12} {'vertices/s':>12}")
    for row in rows:
        print(f"{row['batch']:>6} {row['mode']:<17} {row['median_ms']:>10.2f} "
              f"{row['samples_per_s']:>12.1f} {row['vertices_per_s']:>12.3e}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "results": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
