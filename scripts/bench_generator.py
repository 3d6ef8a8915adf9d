#!/usr/bin/env python
"""Benchmark the anime generator: original-equivalent mode vs the optimised inference mode.

Both modes (and optional variants) run in the same process on the same weights and inputs,
interleaved run by run so that load from other processes hits them alike. For each mode and batch
size: median wall time, median process CPU time and best wall time of ``--runs`` runs after ``--warmup`` warm-up
runs, frames/s (batch / median wall time), speed-ups over ``original`` (median wall, median CPU, best
wall) and the max abs difference
of every output to ``original``. Prints a table and writes JSON.

Modes:
  original        the model as built (dead branch computed), under torch.no_grad, NCHW.
  dead_only       only the dead branch skipped, torch.inference_mode.
  optimised       anime_generator.inference.prepare_for_inference defaults (what infer.py uses).
  optimised_nhwc  optimised + channels_last model/input.

Example:
  python scripts/bench_generator.py --batches 1 8 --runs 5 --json bench_results/bench_generator.json
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch
from tqdm import tqdm

from anime_generator import AnimeGenerator, GeneratorConfig
from anime_generator.checkpoint import load_generator
from anime_generator.inference import generate, prepare_for_inference

REFERENCE_INIT_STD = 0.02  # the authors' weights_init('normal', gain=0.02)
ANGLE_RANGE_DEG = 20.0
MODES = ("original", "dead_only", "optimised", "optimised_nhwc")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8], help="batch sizes to time")
    parser.add_argument("--runs", type=int, default=5, help="timed runs per mode and batch (median)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed warm-up runs per mode and batch")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--image-size", type=int, default=256, help="image side in pixels")
    parser.add_argument("--stage", choices=("gen", "warp"), default="gen", help="generator stage to time")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=["original", "dead_only", "optimised"],
                        help="modes to time ('original' is always included as the baseline)")
    parser.add_argument("--checkpoint", default=None,
                        help="generator checkpoint to load (default: reference-style random init)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random init and inputs")
    parser.add_argument("--json", default="bench_results/bench_generator.json", help="where to write the JSON results")
    return parser.parse_args()


def build_model(args: argparse.Namespace) -> AnimeGenerator:
    """Weights from --checkpoint, else the authors' init (conv/linear N(0, 0.02), bias 0)."""
    config = GeneratorConfig(image_size=args.image_size)
    if args.checkpoint:
        return load_generator(args.checkpoint, use_ema=False, config=config)
    torch.manual_seed(args.seed)
    model = AnimeGenerator(config)
    for module in model.modules():
        if isinstance(module, (torch.nn.Conv2d, torch.nn.ConvTranspose2d, torch.nn.Linear)):
            torch.nn.init.normal_(module.weight, 0.0, REFERENCE_INIT_STD)
            torch.nn.init.zeros_(module.bias)
    return model.eval()


def make_runner(name: str, base: AnimeGenerator, stage: str):
    """Return ``run(image, pose) -> outputs`` for mode ``name``."""
    if name == "original":
        def run(image, pose):
            with torch.no_grad():
                return base(image, pose, stage)
        return run
    options = {"dead_only": dict(subpixel_upsample=False, fused_norms=False, nhwc_final_conv=False),
               "optimised": {}, "optimised_nhwc": dict(channels_last=True)}[name]
    model = prepare_for_inference(copy.deepcopy(base), **options)
    return lambda image, pose: generate(model, image, pose, stage)


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    modes = ["original"] + [m for m in args.modes if m != "original"]
    base = build_model(args)
    runners = {name: make_runner(name, base, args.stage) for name in modes}
    gen = torch.Generator().manual_seed(args.seed)

    results = []
    for batch in args.batches:
        image = torch.rand(batch, 3, args.image_size, args.image_size, generator=gen)
        pose = torch.rand(batch, 20, generator=gen)
        pose[:, 17:] = (pose[:, 17:] * 2 - 1) * ANGLE_RANGE_DEG
        outputs = {name: run(image, pose) for name, run in runners.items()}  # also the first warm-up
        for _ in range(args.warmup - 1):
            for run in runners.values():
                run(image, pose)
        wall = {name: [] for name in modes}
        cpu = {name: [] for name in modes}
        for _ in tqdm(range(args.runs), desc=f"batch {batch}", leave=False):
            for name, run in runners.items():  # interleaved
                w0, c0 = time.perf_counter(), time.process_time()
                run(image, pose)
                wall[name].append(time.perf_counter() - w0)
                cpu[name].append(time.process_time() - c0)
        base_wall, base_cpu = statistics.median(wall["original"]), statistics.median(cpu["original"])
        for name in modes:
            med_wall, med_cpu = statistics.median(wall[name]), statistics.median(cpu[name])
            diffs = {k: (outputs[name][k].float() - outputs["original"][k].float()).abs().max().item()
                     for k in outputs["original"]}
            results.append({
                "mode": name, "batch": batch, "median_wall_s": med_wall, "median_cpu_s": med_cpu,
                "frames_per_s": batch / med_wall, "speedup_wall": base_wall / med_wall,
                "speedup_cpu": base_cpu / med_cpu, "min_wall_s": min(wall[name]),
                "speedup_min_wall": min(wall["original"]) / min(wall[name]), "max_abs_diff": diffs,
                "wall_s": wall[name], "cpu_s": cpu[name]})

    header = f"{'mode':<16}{'batch':>6}{'wall s':>9}{'cpu s':>9}{'frames/s':>10}{'x wall':>8}{'x cpu':>8}{'x best':>8}{'max|diff|':>11}"
    print(f"\nanime generator, {args.image_size}², stage {args.stage}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}, {platform.processor() or platform.machine()}")
    print(header)
    print("-" * len(header))
    for r in results:
        print(f"{r['mode']:<16}{r['batch']:>6}{r['median_wall_s']:>9.3f}{r['median_cpu_s']:>9.3f}"
              f"{r['frames_per_s']:>10.2f}{r['speedup_wall']:>8.2f}{r['speedup_cpu']:>8.2f}{r['speedup_min_wall']:>8.2f}"
              f"{max(r['max_abs_diff'].values()):>11.2e}")

    report = {
        "benchmark": "anime_generator", "image_size": args.image_size, "stage": args.stage,
        "runs": args.runs, "warmup": args.warmup, "threads": torch.get_num_threads(),
        "torch": torch.__version__, "python": platform.python_version(),
        "machine": platform.machine(), "processor": platform.processor(), "platform": platform.platform(),
        "cpu_count": os.cpu_count(), "weights": args.checkpoint or f"reference init N(0,{REFERENCE_INIT_STD})",
        "load_average": list(os.getloadavg()), "results": results,
    }
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
