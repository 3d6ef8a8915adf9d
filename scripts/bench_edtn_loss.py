"""Benchmark EDTN training end to end: the training step, the real-target cache, and train.py.

All in one process run, from the same initial weights and data, so every ratio compares numbers
measured side by side:

1. **Training step** (forward, loss, backward, Adam) at ``--batch`` (512):

   * ``reference``          : the literal loss (two FLAME forwards, backward through the fake one);
   * ``fast (on the fly)``  : the fast loss with the real side computed every step;
   * ``fast (cached)``      : the fast loss from precomputed real targets (what training does);
   * ``fast (cached), autograd loss``: the same with the unfused loss (plain autograd ops);
   * ``mlp only``           : the same step with a trivial loss: the ceiling of the fast step;
   * ``loss only: ...``     : the loss forward + backward with respect to a alone.

   Cases that are compared are interleaved (each repeat times every case of the group once, in
   turn), so a change in the machine's load hits them alike: the fast step with its MLP-only
   ceiling; the fused loss with the autograd one; the FLAME cases apart (after them the heap is
   large and fragmented). Each value is the median over ``--repeats`` runs of ``--steps`` steps
   after ``--warmup`` untimed steps. Wall and process CPU time are both kept; the CPU time (all
   threads) is less sensitive to other jobs on a shared machine.
2. **Real-target cache**: ``GeometryLoss.real_targets`` at ``--cache-batch`` (2048), polynomial
   path vs the FLAME forward, interleaved likewise; then the whole cache build
   (``edtn.data.real_targets_for``: hashing, conversion, writing) of the tiled data set.
3. **train.py**: the authors' 308 example codes packed and tiled to ``--train-rows`` (>= 100k),
   then ``train.py`` run as a user runs it (subprocess, same thread count) for one epoch; its
   logged ``train/samples_per_s`` (TensorBoard) is compared with the fast step above.
4. **Projection** of the paper schedule (``--schedule-samples``, 185M samples = 50 epochs) and of
   the cache build for ``--dataset-frames`` (VoxCeleb ≈ 5.5M frames).

Prints tables and writes JSON (``--out``). Example::

    python scripts/bench_edtn_loss.py                 # all parts
    python scripts/bench_edtn_loss.py --threads 1 --skip-reference --skip-train-py

On a CPU shared with other jobs use ``--threads 1`` (or ``OMP_WAIT_POLICY=PASSIVE``): OpenMP
threads that spin at barriers while the other core is busy make the small ops of a step up to
100× slower.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from deca_edit.codes import (PackedCodes, code156, edtn_input_from_code156,  # noqa: E402
                             pack_code_tree, read_code_mat, write_packed_codes)
from deca_edit.flame import FLAME  # noqa: E402
from edtn.data import open_code_source, real_targets_for  # noqa: E402
from edtn.losses import LOSS_TERMS, GeometryLoss  # noqa: E402
from edtn.model import EDTN  # noqa: E402
from edtn.optim import OPTIMIZER_IMPLS, make_optimizer, make_train_step  # noqa: E402
from infra.assets import resolve_asset_or_fallback  # noqa: E402
from infra.runtime import resolve_device  # noqa: E402

SHARED = Path(os.environ.get("EDTN_SHARED", REPO_ROOT.parent / "shared"))
SYNTHETIC_MODEL = SHARED / "reference" / "parity" / "flame_deca" / "synthetic_generic_model.pkl"
SHARED_EMBEDDING = SHARED / "reference" / "deca" / "landmark_embedding.npy"
SHARED_BASIS = SHARED / "reference" / "authors" / "transform_matrix_08_30.npy"
SHARED_CODES = SHARED / "reference" / "authors" / "vox_deca"
PAPER_SCHEDULE_SAMPLES = 185e6   # ≈ 50 epochs of the VoxCeleb code set
VOXCELEB_FRAMES = 5.5e6          # frames of the VoxCeleb training codes (the cache to build)
TRAIN_PY_ROWS = 100_000
TRAIN_PY_LOG_EVERY = 15          # steps per logged samples/s window in the train.py run
TRAIN_PY_TIMEOUT_S = 1800
STEP_CASE, CEILING_CASE = "fast (cached)", "mlp only"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="auto | cpu | cuda (default: cpu)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op CPU threads, also for train.py (default: torch's choice)")
    parser.add_argument("--batch", type=int, default=512, help="training batch (default 512)")
    parser.add_argument("--cache-batch", type=int, default=2048,
                        help="batch of the real-target computation (default 2048)")
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
    parser.add_argument("--skip-reference", action="store_true",
                        help="do not time the reference step (FLAME every step)")
    parser.add_argument("--skip-train-py", action="store_true", help="do not run train.py")
    parser.add_argument("--train-rows", type=int, default=TRAIN_PY_ROWS,
                        help="rows of the tiled data set for the cache build and train.py")
    parser.add_argument("--schedule-samples", type=float, default=PAPER_SCHEDULE_SAMPLES,
                        help="samples of the training schedule to project (default 185e6)")
    parser.add_argument("--dataset-frames", type=float, default=VOXCELEB_FRAMES,
                        help="frames whose real targets the cache holds (default 5.5e6)")
    parser.add_argument("--work-dir", default=None,
                        help="folder for the tiled codes and the train.py run (default: a temp dir)")
    parser.add_argument("--out", default="bench_results/bench_edtn_loss.json", help="JSON output")
    args = parser.parse_args()
    if args.repeats < 5:
        parser.error("--repeats must be >= 5")
    if args.train_rows < args.batch:
        parser.error("--train-rows must be at least one batch")
    return args


# ----------------------------------------------------------------------------- data
def example_inputs(generator: torch.Generator) -> tuple[torch.Tensor, str]:
    """EDTN inputs (N, 53) of the kit's 308 real VoxCeleb codes, else N(0, 0.5²) rows."""
    files = sorted(SHARED_CODES.glob("*.mat")) if SHARED_CODES.is_dir() else []
    if not files:
        return torch.randn(308, 53, generator=generator) * 0.5, "random N(0, 0.5²)"
    rows = np.stack([code156(read_code_mat(f)) for f in files])
    return torch.from_numpy(edtn_input_from_code156(rows)), f"{len(files)} real VoxCeleb codes (kit)"


def tile_example_codes(work: Path, rows: int) -> tuple[Path, Path]:
    """Pack the kit's ``.mat`` codes, then write them tiled into >= ``rows`` rows (one video
    per copy) and once as a one-video test split. Returns the (train, test) prefixes."""
    if not SHARED_CODES.is_dir():
        raise SystemExit(f"train.py / cache parts need the example codes in {SHARED_CODES}")
    packed = PackedCodes(pack_code_tree(SHARED_CODES, work / "example", progress=False).prefix)
    video = packed.videos[0]
    columns = {name: packed.column(name) for name in packed.columns}
    copies = -(-rows // len(packed))
    train = write_packed_codes(work / "tiled_train", [
        (f"{video.name}_tile{k:04d}", video.frames, columns) for k in range(copies)])
    test = write_packed_codes(work / "tiled_test", [(video.name, video.frames, columns)])
    return train, test


# ----------------------------------------------------------------------------- timing
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(cases: list[tuple[str, Callable[[], object], int]], device: torch.device,
                     warmup: int, repeats: int) -> dict[str, tuple[list[float], list[float]]]:
    """Wall and process-CPU seconds per call, per case, of ``repeats`` timed runs taken in
    turns across the cases (run r of every case before run r+1 of any), after ``warmup`` calls.
    ``cases``: (name, fn, calls per timed run)."""
    for _, fn, _ in cases:
        for _ in range(warmup):
            fn()
    sync(device)
    times = {name: ([], []) for name, _, _ in cases}
    for _ in range(repeats):
        for name, fn, calls in cases:
            wall, cpu = time.perf_counter(), time.process_time()
            for _ in range(calls):
                fn()
            sync(device)
            times[name][0].append((time.perf_counter() - wall) / calls)
            times[name][1].append((time.process_time() - cpu) / calls)
    return times


def summarise(name: str, walls: list[float], cpus: list[float], batch: int, **extra) -> dict:
    wall, cpu = statistics.median(walls), statistics.median(cpus)
    return {"case": name, "batch": batch, "ms": wall * 1e3, "samples_per_s": batch / wall,
            "cpu_ms": cpu * 1e3, "samples_per_cpu_s": batch / cpu,
            "runs_ms": [t * 1e3 for t in walls], **extra}


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# ----------------------------------------------------------------------------- parts
def bench_steps(args, device, loss_ref, loss_fast, x, real_targets) -> tuple[list[dict], dict]:
    """Part 1: the training-step cases; returns the rows and the fast / reference differences."""
    torch.manual_seed(0)
    initial = EDTN().state_dict()
    probe = EDTN().to(device)
    probe.load_state_dict(initial)
    with torch.no_grad():
        a = probe(x)
        fast_terms = loss_fast(a, x, real_targets)
        ref_terms = loss_ref(a, x) if loss_ref is not None else None
    rel_diff = ({k: abs(float(fast_terms[k]) / float(ref_terms[k]) - 1.0) for k in LOSS_TERMS}
                if ref_terms is not None else {})

    def make_step(loss_fn, use_targets: bool, optim: str):
        model = EDTN().to(device)
        model.load_state_dict(initial)
        step = make_train_step(model, loss_fn, make_optimizer(model.parameters(), impl=optim))
        targets = real_targets if use_targets else None
        return lambda: step(x, targets)

    def unfused(morphs, x53, targets=None):
        return loss_fast.forward_fast_autograd(morphs, targets)

    def mlp_only(morphs, _x, _targets=None):
        return {"total": morphs.square().mean()}

    def loss_only(fn, use_targets: bool):
        targets = real_targets if use_targets else None

        def run():
            morphs = a.detach().clone().requires_grad_(True)
            fn(morphs, x, targets)["total"].backward()
        return run

    # Groups timed separately, the light ones first: a case that runs right after a FLAME case
    # inherits its freed heap (page faults, allocator trimming) and reads slow and erratic.
    fast_steps = [(STEP_CASE, make_step(loss_fast, True, args.optim), args.steps, args.optim),
                  ("fast (cached), autograd loss", make_step(unfused, True, args.optim),
                   args.steps, args.optim)]
    if args.optim_sweep:
        for impl in OPTIMIZER_IMPLS[1:]:
            if impl != args.optim:
                fast_steps.append((f"{STEP_CASE}, adam {impl}", make_step(loss_fast, True, impl),
                                   args.steps, impl))
    fast_steps.append((CEILING_CASE, make_step(mlp_only, False, args.optim), args.steps, args.optim))
    groups = [fast_steps,
              [("loss only: fast (cached)", loss_only(loss_fast, True), args.steps, "-"),
               ("loss only: fast, autograd", loss_only(unfused, True), args.steps, "-")]]
    flame_steps = [("fast (on the fly)", make_step(loss_fast, False, args.optim), 1, args.optim)]
    if loss_ref is not None:
        flame_steps.insert(0, ("reference", make_step(loss_ref, False, args.optim), 1, args.optim))
        groups.append([("loss only: reference", loss_only(loss_ref, False), 1, "-")])
    groups.insert(2, flame_steps)

    rows = []
    for cases in groups:
        times = time_interleaved([(n, fn, k) for n, fn, k, _ in cases], device, args.warmup,
                                 args.repeats)
        for name, _, _, optim in cases:
            row = summarise(name, *times[name], args.batch, adam=optim)
            row["schedule_hours"] = args.schedule_samples / row["samples_per_s"] / 3600
            rows.append(row)
    return rows, rel_diff


def bench_real_targets(args, device, loss_fast, pool: torch.Tensor) -> list[dict]:
    """Part 2a: real_targets at the cache batch, polynomial vs FLAME, interleaved."""
    pick = torch.randint(len(pool), (args.cache_batch,), generator=torch.Generator().manual_seed(1))
    x = pool[pick].contiguous().to(device)
    loss_fast.real_targets(x[:2])  # builds the polynomial map once (not part of the rate)
    cases = [("real targets: fast", lambda: loss_fast.real_targets(x), 2),
             ("real targets: FLAME", lambda: loss_fast.real_targets(x, impl="flame"), 1)]
    times = time_interleaved(cases, device, warmup=1, repeats=5)
    return [summarise(name, *times[name], args.cache_batch) for name, _, _ in cases]


def bench_cache_build(loss_fast, train_prefix: Path) -> dict:
    """Part 2b: the whole cache build of the tiled set, as train.py does it on its first run."""
    source = open_code_source(train_prefix)
    for stale in train_prefix.parent.glob(f"{train_prefix.name}.real_targets.*.npy"):
        stale.unlink()
    start_wall, start_cpu = time.perf_counter(), time.process_time()
    table = real_targets_for(source, loss_fast)
    wall, cpu = time.perf_counter() - start_wall, time.process_time() - start_cpu
    rows = len(table)
    return {"case": "cache build (real_targets_for, end to end)", "rows": rows, "s": wall,
            "cpu_s": cpu, "samples_per_s": rows / wall, "samples_per_cpu_s": rows / cpu}


def bench_train_py(args, paths: dict, train_prefix: Path, test_prefix: Path, work: Path) -> dict:
    """Part 3: train.py for one epoch of the tiled set; its logged samples/s from TensorBoard."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = work / "train_py_run"
    rows = len(PackedCodes(train_prefix))
    steps = rows // args.batch
    overrides = [f"data.train={train_prefix}", f"data.test={test_prefix}",
                 f"data.batch_size={args.batch}", f"device={args.device}",
                 f"loss.flame_model={paths['flame']}", f"loss.landmark_embedding={paths['embedding']}",
                 f"loss.basis={paths['basis']}", "epochs=1", f"log.every={TRAIN_PY_LOG_EVERY}",
                 "checkpoint.every=0", f"run_dir={run_dir}"]
    env = dict(os.environ)
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, str(REPO_ROOT / "train.py"), *overrides], cwd=work,
                          env=env, capture_output=True, text=True, timeout=TRAIN_PY_TIMEOUT_S)
    total_s = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"train.py failed:\n{proc.stderr[-3000:]}")
    events = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0}).Reload()
    logged = {tag: [e.value for e in events.Scalars(f"train/{tag}")]
              for tag in ("samples_per_s", "samples_per_cpu_s")}
    # the first window holds the warm-up
    median = {tag: statistics.median(values[1:] or values) for tag, values in logged.items()}
    return {"rows": rows, "steps": steps, "log_every": TRAIN_PY_LOG_EVERY,
            "logged_samples_per_s": logged["samples_per_s"],
            "logged_samples_per_cpu_s": logged["samples_per_cpu_s"],
            "samples_per_s_median": median["samples_per_s"],
            "samples_per_cpu_s_median": median["samples_per_cpu_s"],
            "process_s": total_s, "overrides": overrides}


# ----------------------------------------------------------------------------- report
def print_table(title: str, rows: list[dict], columns: list[tuple[str, str, str]]) -> None:
    print(f"\n{title}")
    header = " ".join(f"{label:>{width}}" if i else f"{label:<{width}}"
                      for i, (label, _, width) in enumerate(columns))
    print(header)
    print("-" * len(header))
    for row in rows:
        cells = []
        for i, (_, key, width) in enumerate(columns):
            value = row.get(key, "")
            text = f"{value:.2f}" if isinstance(value, float) and abs(value) < 1e3 else (
                f"{value:.0f}" if isinstance(value, float) else str(value))
            cells.append(f"{text:>{width}}" if i else f"{text:<{width}}")
        print(" ".join(cells))


def main() -> int:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    flame_path, flame_source = resolve_asset_or_fallback("flame_model", args.flame_model, SYNTHETIC_MODEL)
    emb_path, _ = resolve_asset_or_fallback("landmark_embedding", args.landmark_embedding, SHARED_EMBEDDING)
    basis_path, basis_source = resolve_asset_or_fallback("transform_matrix", args.basis, SHARED_BASIS)
    print(f"FLAME: {flame_path} ({flame_source}); basis: {basis_path} ({basis_source}); "
          f"{torch.get_num_threads()} threads")

    flame = FLAME(flame_path, emb_path, n_shape=100, n_exp=50, check_finite=False).to(device)
    basis = np.load(basis_path)
    loss_fast = GeometryLoss(flame, basis, impl="fast")
    loss_ref = None if args.skip_reference else GeometryLoss(flame, basis, impl="reference")
    generator = torch.Generator().manual_seed(0)
    pool, data_source = example_inputs(generator)
    x = pool[torch.randint(len(pool), (args.batch,), generator=generator)].contiguous().to(device)
    real_targets = loss_fast.real_targets(x)  # what the cache holds for this batch

    load_before = os.getloadavg()
    steps, rel_diff = bench_steps(args, device, loss_ref, loss_fast, x, real_targets)
    cache_rows = bench_real_targets(args, device, loss_fast, pool)
    by_name = {r["case"]: r for r in steps + cache_rows}

    with tempfile.TemporaryDirectory(prefix="bench_edtn_") as tmp:
        work = Path(args.work_dir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        train_prefix, test_prefix = tile_example_codes(work, args.train_rows)
        cache_build = bench_cache_build(loss_fast, train_prefix)
        train_py = None
        if not args.skip_train_py:
            paths = {"flame": flame_path, "embedding": emb_path, "basis": basis_path}
            train_py = bench_train_py(args, paths, train_prefix, test_prefix, work)
            # the fast step again, right after train.py: the comparison uses the mean of both
            step_fn = _fast_step(args, device, loss_fast, x, real_targets)
            again = time_interleaved([(STEP_CASE, step_fn, args.steps)], device, args.warmup,
                                     args.repeats)
            fast_after = summarise(f"{STEP_CASE}, after train.py", *again[STEP_CASE], args.batch,
                                   adam=args.optim)
            steps.append(fast_after)
    load_after = os.getloadavg()

    # ---------------------------------------------------------------- derived numbers
    fast, ceiling = by_name[STEP_CASE], by_name[CEILING_CASE]
    step_over_ceiling = {"cpu_time": fast["samples_per_cpu_s"] / ceiling["samples_per_cpu_s"],
                         "wall": fast["samples_per_s"] / ceiling["samples_per_s"]}
    cache_fast, cache_flame = by_name["real targets: fast"], by_name["real targets: FLAME"]
    cache = {"batch": args.cache_batch,
             "fast_samples_per_s": cache_fast["samples_per_s"],
             "flame_samples_per_s": cache_flame["samples_per_s"],
             "fast_over_flame": cache_fast["samples_per_s"] / cache_flame["samples_per_s"],
             "fast_samples_per_cpu_s": cache_fast["samples_per_cpu_s"],
             "flame_samples_per_cpu_s": cache_flame["samples_per_cpu_s"],
             "build_end_to_end": cache_build}
    train_summary = None
    if train_py is not None:
        fast_mean = (fast["samples_per_s"] + fast_after["samples_per_s"]) / 2
        fast_cpu_mean = (fast["samples_per_cpu_s"] + fast_after["samples_per_cpu_s"]) / 2
        train_summary = {**train_py, "bench_fast_step_samples_per_s": fast_mean,
                         "bench_fast_step_samples_per_cpu_s": fast_cpu_mean,
                         "over_fast_step": train_py["samples_per_s_median"] / fast_mean,
                         "over_fast_step_cpu_time": (train_py["samples_per_cpu_s_median"]
                                                     / fast_cpu_mean)}

    def hours(samples: float, rate: float) -> float:
        return samples / rate / 3600

    train_rate = train_py["samples_per_s_median"] if train_py else fast["samples_per_s"]
    projection = {
        "schedule_samples": args.schedule_samples, "dataset_frames": args.dataset_frames,
        "training_h_fast_step": hours(args.schedule_samples, fast["samples_per_s"]),
        "training_h_train_py": hours(args.schedule_samples, train_rate),
        "cache_h_fast": hours(args.dataset_frames, cache_build["samples_per_s"]),
        "cache_h_flame": hours(args.dataset_frames, cache_flame["samples_per_s"]),
    }
    projection["total_h_with_cache"] = projection["training_h_train_py"] + projection["cache_h_fast"]
    projection["total_h_with_flame_cache"] = (projection["training_h_train_py"]
                                              + projection["cache_h_flame"])

    # ---------------------------------------------------------------- report
    print(f"\nEDTN training, batch {args.batch}, {device}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}; FLAME from {flame_source}; data: {data_source}")
    print(f"load average before/after: {load_before[0]:.2f} / {load_after[0]:.2f} "
          f"({os.cpu_count()} CPUs; other jobs inflate the numbers)")
    print_table("training step (median, interleaved)", steps, [
        ("case", "case", 34), ("adam", "adam", 6), ("ms/step", "ms", 9),
        ("samples/s", "samples_per_s", 10), ("CPU ms", "cpu_ms", 8),
        ("samples/CPU-s", "samples_per_cpu_s", 13), ("schedule h", "schedule_hours", 10)])
    print_table(f"real targets, batch {args.cache_batch}", cache_rows + [cache_build], [
        ("case", "case", 44), ("ms/batch", "ms", 9), ("samples/s", "samples_per_s", 10),
        ("samples/CPU-s", "samples_per_cpu_s", 13)])
    print(f"\nfast step / mlp only: {step_over_ceiling['cpu_time']:.1%} (CPU time), "
          f"{step_over_ceiling['wall']:.1%} (wall)")
    if "reference" in by_name:
        print(f"fast (cached) / reference: {fast['samples_per_s'] / by_name['reference']['samples_per_s']:.1f}x")
    print(f"real targets: fast {cache['fast_samples_per_s']:.0f} vs FLAME "
          f"{cache['flame_samples_per_s']:.0f} samples/s ({cache['fast_over_flame']:.1f}x); "
          f"whole build {cache_build['samples_per_s']:.0f} samples/s ({cache_build['rows']} rows)")
    if train_summary is not None:
        print(f"train.py ({train_summary['rows']} rows, {train_summary['steps']} steps): logged "
              f"{train_summary['samples_per_s_median']:.0f} samples/s (median) = "
              f"{train_summary['over_fast_step']:.1%} of the fast step "
              f"({train_summary['bench_fast_step_samples_per_s']:.0f}); per CPU second "
              f"{train_summary['samples_per_cpu_s_median']:.0f} = "
              f"{train_summary['over_fast_step_cpu_time']:.1%} of the fast step's "
              f"({train_summary['bench_fast_step_samples_per_cpu_s']:.0f})")
    if rel_diff:
        print("max relative difference fast vs reference: "
              + ", ".join(f"{k} {v:.2e}" for k, v in rel_diff.items()))
    print(f"projected: {args.schedule_samples:.3g} samples {projection['training_h_train_py']:.2f} h "
          f"+ cache of {args.dataset_frames:.3g} frames {projection['cache_h_fast']:.2f} h = "
          f"{projection['total_h_with_cache']:.2f} h (FLAME cache: "
          f"{projection['total_h_with_flame_cache']:.2f} h)")

    report = {
        "benchmark": "edtn_training",
        "hardware": {"cpu": cpu_name(), "cpus": os.cpu_count(), "device": str(device),
                     "cuda": torch.cuda.get_device_name(device) if device.type == "cuda" else None},
        "threads": torch.get_num_threads(),
        "omp_num_threads_env": os.environ.get("OMP_NUM_THREADS"),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "flame_model": {"path": str(flame_path), "source": flame_source},
        "data": data_source,
        "batch": args.batch,
        "warmup": args.warmup, "repeats": args.repeats, "steps_per_run": args.steps,
        "load_average_before_after": [load_before[0], load_after[0]],
        "results": steps,
        "fast_step_over_mlp_only": step_over_ceiling,
        "fast_over_reference": (fast["samples_per_s"] / by_name["reference"]["samples_per_s"]
                                if "reference" in by_name else None),
        "loss_max_relative_difference": max(rel_diff.values()) if rel_diff else None,
        "loss_relative_difference": rel_diff,
        "cache": {**cache, "rows": cache_rows},
        "train_py": train_summary,
        "projection": projection,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=str))
    print(f"wrote {out}")
    return 0


def _fast_step(args, device, loss_fast, x, real_targets):
    """A fresh 'fast (cached)' step closure (same initial weights as part 1)."""
    torch.manual_seed(0)
    model = EDTN().to(device)
    step = make_train_step(model, loss_fast, make_optimizer(model.parameters(), impl=args.optim))
    return lambda: step(x, real_targets)


if __name__ == "__main__":
    sys.exit(main())
