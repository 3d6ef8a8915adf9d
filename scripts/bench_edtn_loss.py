"""Benchmark one EDTN training step (forward, loss, backward, Adam) for each loss implementation.

Cases, all at the same batch, in the same process, from the same initial weights:

* ``reference``      : the literal loss (two FLAME forwards, backward through the fake one);
* ``fast (on the fly)``: exact affine loss, real-side targets computed by FLAME every step;
* ``fast (cached)``  : exact affine loss from precomputed real targets (what training uses);
* ``mlp only``       : the same step with a trivial loss, i.e. the ceiling the loss can approach;
* ``loss only: ...`` : the loss forward + backward with respect to a alone (no MLP, no Adam).

Each case: ``--warmup`` untimed steps, then the median over ``--repeats`` timed runs of
``--steps`` steps. Also reports the largest relative difference between the reference and fast
loss terms on the same batch and weights, and the projected time of the paper's schedule
(``--schedule-samples``, default 50 epochs ≈ 185M samples). Prints a table, writes JSON.

Example::

    python scripts/bench_edtn_loss.py --threads 1 --optim-sweep

On a CPU shared with other jobs use ``--threads 1`` (or ``OMP_WAIT_POLICY=PASSIVE``): OpenMP
threads that spin at barriers while the other core is busy make the small ops of a step up to
100× slower. The CPU-time columns are less sensitive to other jobs than the wall-clock ones.
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

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from deca_edit.codes import edtn_input_from_code156, read_code_mat, code156  # noqa: E402
from deca_edit.flame import FLAME  # noqa: E402
from infra.assets import resolve_asset_or_fallback  # noqa: E402
from edtn.losses import GeometryLoss  # noqa: E402
from edtn.model import EDTN  # noqa: E402
from edtn.optim import OPTIMIZER_IMPLS, make_optimizer, make_train_step  # noqa: E402
from infra.runtime import resolve_device  # noqa: E402

SHARED = Path(os.environ.get("EDTN_SHARED", REPO_ROOT.parent / "shared"))
SYNTHETIC_MODEL = SHARED / "reference" / "parity" / "flame_deca" / "synthetic_generic_model.pkl"
SHARED_EMBEDDING = SHARED / "reference" / "deca" / "landmark_embedding.npy"
SHARED_BASIS = SHARED / "reference" / "authors" / "transform_matrix_08_30.npy"
SHARED_CODES = SHARED / "reference" / "authors" / "vox_deca"
PAPER_SCHEDULE_SAMPLES = 185e6  # ≈ 50 epochs of the VoxCeleb code set
LOSS_TERMS = ("vertex", "landmark", "eye", "lip", "total")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="auto | cpu | cuda (default: cpu)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op CPU threads (default: torch's choice)")
    parser.add_argument("--batch", type=int, default=512, help="batch size (default 512)")
    parser.add_argument("--flame-model", default=None,
                        help="FLAME generic_model.pkl (default: asset cache, else the synthetic "
                             "model in ../shared)")
    parser.add_argument("--landmark-embedding", default=None,
                        help="landmark_embedding.npy (default: asset cache, else ../shared)")
    parser.add_argument("--basis", default=None,
                        help="transform_matrix_08_30.npy (default: asset cache, else ../shared)")
    parser.add_argument("--optim", choices=OPTIMIZER_IMPLS, default="auto",
                        help="Adam implementation for every case (default auto = fused)")
    parser.add_argument("--optim-sweep", action="store_true",
                        help="also time 'fast (cached)' with every Adam implementation")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per case")
    parser.add_argument("--repeats", type=int, default=7, help="timed runs per case (>= 5)")
    parser.add_argument("--steps", type=int, default=10,
                        help="steps per timed run for the fast cases (reference: 1)")
    parser.add_argument("--skip-reference", action="store_true", help="do not time the reference")
    parser.add_argument("--schedule-samples", type=float, default=PAPER_SCHEDULE_SAMPLES,
                        help="samples of the training schedule to project (default 185e6)")
    parser.add_argument("--out", default="bench_results/bench_edtn_loss.json", help="JSON output")
    args = parser.parse_args()
    if args.repeats < 5:
        parser.error("--repeats must be >= 5")
    return args


def driving_batch(batch: int, generator: torch.Generator) -> tuple[torch.Tensor, str]:
    """EDTN inputs (batch, 53): rows drawn from the kit's real VoxCeleb codes, else N(0, 1)."""
    files = sorted(SHARED_CODES.glob("*.mat")) if SHARED_CODES.is_dir() else []
    if not files:
        return torch.randn(batch, 53, generator=generator) * 0.5, "random N(0, 0.5²)"
    rows = np.stack([code156(read_code_mat(f)) for f in files])
    pool = torch.from_numpy(edtn_input_from_code156(rows))
    pick = torch.randint(len(pool), (batch,), generator=generator)
    return pool[pick].contiguous(), f"{len(files)} real VoxCeleb codes (kit), sampled"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_case(step, device: torch.device, warmup: int, repeats: int,
              steps: int) -> tuple[list[float], list[float]]:
    """Wall and process-CPU seconds per step of ``repeats`` runs of ``steps`` steps (after
    ``warmup`` steps). CPU time (all threads of this process) is much less sensitive than wall
    time to other jobs on a shared machine."""
    for _ in range(warmup):
        step()
    sync(device)
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(steps):
            step()
        sync(device)
        walls.append((time.perf_counter() - wall) / steps)
        cpus.append((time.process_time() - cpu) / steps)
    return walls, cpus


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> int:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    flame_path, flame_source = resolve_asset_or_fallback("flame_model", args.flame_model, SYNTHETIC_MODEL)
    emb_path, _ = resolve_asset_or_fallback("landmark_embedding", args.landmark_embedding, SHARED_EMBEDDING)
    basis_path, basis_source = resolve_asset_or_fallback("transform_matrix", args.basis, SHARED_BASIS)
    print(f"FLAME: {flame_path} ({flame_source}); basis: {basis_path} ({basis_source})")

    flame = FLAME(flame_path, emb_path, n_shape=100, n_exp=50, check_finite=False).to(device)
    basis = np.load(basis_path)
    loss_ref = GeometryLoss(flame, basis, impl="reference")
    loss_fast = GeometryLoss(flame, basis, impl="fast")
    generator = torch.Generator().manual_seed(0)
    x, data_source = driving_batch(args.batch, generator)
    x = x.to(device)
    real_targets = loss_fast.real_targets(x)  # what the cache holds for this batch

    torch.manual_seed(0)
    initial = EDTN().state_dict()

    # Same batch, same weights: how far apart are the two loss implementations?
    probe = EDTN().to(device)
    probe.load_state_dict(initial)
    with torch.no_grad():
        a = probe(x)
        ref_terms, fast_terms = loss_ref(a, x), loss_fast(a, x, real_targets)
    rel_diff = {k: abs(float(fast_terms[k]) / float(ref_terms[k]) - 1.0) for k in LOSS_TERMS}

    def make_step(loss_fn, use_targets: bool, optim: str):
        model = EDTN().to(device)
        model.load_state_dict(initial)
        step = make_train_step(model, loss_fn, make_optimizer(model.parameters(), impl=optim))
        targets = real_targets if use_targets else None
        return lambda: step(x, targets)

    def mlp_only(a53, _x, _targets=None):
        total = a53.square().mean()
        return {"total": total}

    cases = []
    if not args.skip_reference:
        cases.append(("reference", make_step(loss_ref, False, args.optim), 1, args.optim))
    cases.append(("fast (on the fly)", make_step(loss_fast, False, args.optim), 1, args.optim))
    cases.append(("fast (cached)", make_step(loss_fast, True, args.optim), args.steps, args.optim))
    if args.optim_sweep:
        for impl in OPTIMIZER_IMPLS[1:]:
            if impl != args.optim:
                cases.append((f"fast (cached), adam {impl}", make_step(loss_fast, True, impl),
                              args.steps, impl))
    cases.append(("mlp only", make_step(mlp_only, False, args.optim), args.steps, args.optim))

    def loss_only(loss_fn, use_targets: bool):
        targets = real_targets if use_targets else None

        def run():
            morphs = a.detach().clone().requires_grad_(True)
            loss_fn(morphs, x, targets)["total"].backward()
        return run

    if not args.skip_reference:
        cases.append(("loss only: reference", loss_only(loss_ref, False), 1, "-"))
    cases.append(("loss only: fast (cached)", loss_only(loss_fast, True), args.steps, "-"))

    load_before = os.getloadavg()
    results = []
    for name, step, steps, optim in cases:
        walls, cpus = time_case(step, device, args.warmup, args.repeats, steps)
        median, cpu_median = statistics.median(walls), statistics.median(cpus)
        results.append({"case": name, "adam": optim, "batch": args.batch, "step_ms": median * 1e3,
                        "samples_per_s": args.batch / median,
                        "cpu_ms_per_step": cpu_median * 1e3,
                        "samples_per_cpu_s": args.batch / cpu_median,
                        "runs_ms": [t * 1e3 for t in walls],
                        "schedule_hours": args.schedule_samples / (args.batch / median) / 3600})
        print(f"  timed {name}: {median * 1e3:.2f} ms/step wall, {cpu_median * 1e3:.2f} ms CPU",
              flush=True)
    load_after = os.getloadavg()

    by_name = {r["case"]: r for r in results}
    ratio = cpu_ratio = None
    if "reference" in by_name:
        ratio = by_name["fast (cached)"]["samples_per_s"] / by_name["reference"]["samples_per_s"]
        cpu_ratio = (by_name["fast (cached)"]["samples_per_cpu_s"]
                     / by_name["reference"]["samples_per_cpu_s"])
    print(f"\nEDTN training step, batch {args.batch}, {device}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}; FLAME from {flame_source}; data: {data_source}")
    print(f"load average before/after: {load_before[0]:.2f} / {load_after[0]:.2f} "
          f"({os.cpu_count()} CPUs; other jobs inflate the numbers)")
    header = (f"{'case':<30} {'adam':<9} {'ms/step':>10} {'samples/s':>12} {'CPU ms':>9} "
              f"{'samples/CPU-s':>14} {'schedule h':>11}")
    print(header)
    print("-" * len(header))
    for r in results:
        print(f"{r['case']:<30} {r['adam']:<9} {r['step_ms']:>10.2f} {r['samples_per_s']:>12.0f} "
              f"{r['cpu_ms_per_step']:>9.2f} {r['samples_per_cpu_s']:>14.0f} "
              f"{r['schedule_hours']:>11.2f}")
    loss_ratio = None
    if ratio is not None:
        loss_ratio = (by_name["loss only: fast (cached)"]["samples_per_cpu_s"]
                      / by_name["loss only: reference"]["samples_per_cpu_s"])
        print(f"full step, fast (cached) / reference: {ratio:.1f}x samples/s (wall), "
              f"{cpu_ratio:.1f}x samples per CPU-second")
        print(f"loss alone (forward + backward), fast (cached) / reference: {loss_ratio:.0f}x "
              "samples per CPU-second")
    print("max relative difference fast vs reference: "
          + ", ".join(f"{k} {v:.2e}" for k, v in rel_diff.items()))
    print(f"projected schedule ({args.schedule_samples:.3g} samples) with fast (cached): "
          f"{by_name['fast (cached)']['schedule_hours']:.2f} h")

    report = {
        "benchmark": "edtn_training_step",
        "hardware": {"cpu": cpu_name(), "cpus": os.cpu_count(), "device": str(device),
                     "cuda": torch.cuda.get_device_name(device) if device.type == "cuda" else None},
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "flame_model": {"path": str(flame_path), "source": flame_source},
        "data": data_source,
        "batch": args.batch,
        "warmup": args.warmup, "repeats": args.repeats, "steps_per_run": args.steps,
        "load_average_before_after": [load_before[0], load_after[0]],
        "results": results,
        "fast_over_reference": ratio,
        "fast_over_reference_cpu_time": cpu_ratio,
        "loss_only_fast_over_reference_cpu_time": loss_ratio,
        "loss_max_relative_difference": max(rel_diff.values()),
        "loss_relative_difference": rel_diff,
        "schedule_samples": args.schedule_samples,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
