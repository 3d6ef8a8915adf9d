"""Evaluate morph mappings on DECA codes: vertex / landmark / eye / lip errors.

The mappings (``--mapping``, several at once on the same codes): ``edtn`` — an EDTN checkpoint,
ours (``.../checkpoints/best.pt``) or the authors' ``EDTN.pt`` (``edtn.model.load_edtn``);
``basis_fit`` and ``vertex_fit`` — the training-free baselines of ``edtn.mappings``. Prints a
table (per mapping: an ``ALL`` row, frame-weighted, and one row per video) and writes
``<out>.json`` and ``<out>.csv``. An existing output is never overwritten silently: an explicit
``--out`` that exists stops the run unless ``--overwrite`` is given; the default output gets the
next free name (``metrics``, ``metrics_1``, ...).

    python scripts/eval_edtn.py --checkpoint EDTN.pt --codes data/vox/packed/test
    python scripts/eval_edtn.py --checkpoint EDTN.pt --codes data/vox/packed/test \\
        --mapping edtn basis_fit vertex_fit --out results/geometry_test
    python scripts/eval_edtn.py --checkpoint outputs/edtn/.../checkpoints/best.pt \\
        --codes data/vox/deca/test --cache-dir /tmp/edtn_cache --out results/edtn_test

Columns: ``vertex`` mean squared vertex error (m²), ``vertex_rmse_mm`` its root in millimetres,
``landmark`` the weighted L1 of the projected 2-D landmarks, ``eye`` / ``lip`` the mean absolute
eyelid / outer-lip distance error (projected units), ``total`` the weighted training loss.
"""
from __future__ import annotations

import argparse
import csv
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # allow `python scripts/eval_edtn.py` from a checkout
    sys.path.insert(0, str(REPO_ROOT))

from edtn.data import CodeFrames, build_loader, open_split, real_targets_for  # noqa: E402
from edtn.losses import LossWeights  # noqa: E402
from edtn.mappings import MAPPINGS, BasisFit, VertexFit  # noqa: E402
from edtn.model import load_edtn  # noqa: E402
from infra.files import atomic_path  # noqa: E402
from infra.runtime import exit_on_user_error, resolve_device  # noqa: E402
from edtn.losses import build_geometry_loss  # noqa: E402
from edtn.train_loop import LOSS_TERMS, evaluate  # noqa: E402
from reenact.evaluation.metrics import vertex_rmse_mm  # noqa: E402

PROGRAM = "eval_edtn.py"
DEFAULT_WEIGHTS = (100.0, 1.0, 1.0, 1.0)  # vertex, landmark, eye, lip (the paper's)
DEFAULT_OUT = "outputs/eval_edtn/metrics"
COLUMNS = ("mapping", "video", "frames", *LOSS_TERMS, "vertex_rmse_mm")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--checkpoint", default=None,
                   help="EDTN.pt or one of our training checkpoints, for --mapping edtn "
                        "(default: the edtn_weights asset)")
    p.add_argument("--mapping", nargs="+", choices=MAPPINGS, default=["edtn"],
                   help="mappings to evaluate on the same codes (edtn: the checkpoint; basis_fit / "
                        "vertex_fit: training-free, edtn/mappings.py)")
    p.add_argument("--codes", required=True,
                   help="packed code prefix (<prefix>.npy/.json) or a folder of DECA .mat files")
    p.add_argument("--list", default=None, help="optional text file of video names to evaluate")
    p.add_argument("--flame-model", default=None, help="FLAME generic_model.pkl (default: asset cache)")
    p.add_argument("--landmark-embedding", default=None, help="DECA landmark_embedding.npy")
    p.add_argument("--basis", default=None, help="transform_matrix_08_30.npy (17x50 morph basis)")
    p.add_argument("--weights", type=float, nargs=4, default=DEFAULT_WEIGHTS,
                   metavar=("VERTEX", "LANDMARK", "EYE", "LIP"), help="loss weights of 'total'")
    p.add_argument("--impl", choices=("fast", "reference"), default="fast",
                   help="loss implementation (identical numbers; fast uses the real-target cache)")
    p.add_argument("--cache-dir", default=None,
                   help="real-target cache folder (default: next to packed codes; a temporary "
                        "folder for .mat folders)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--batch-size", type=int, default=4096, help="frames per forward pass")
    p.add_argument("--out", default=None,
                   help=f"output prefix: writes <out>.json and <out>.csv; an existing one is refused "
                        f"unless --overwrite (default: {DEFAULT_OUT}, or {DEFAULT_OUT}_N when taken)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing <out>.json / <out>.csv")
    p.add_argument("--no-per-video", action="store_true", help="only the ALL row")
    return p.parse_args(argv)


def _outputs(prefix: Path) -> tuple[Path, Path]:
    return prefix.with_name(prefix.name + ".json"), prefix.with_name(prefix.name + ".csv")


def output_prefix(out, overwrite: bool) -> Path:
    """``--out``, refused when it exists (unless ``overwrite``); the default takes the next free name."""
    if out is not None:
        prefix = Path(out)
        taken = [p for p in _outputs(prefix) if p.exists()]
        if taken and not overwrite:
            raise ValueError(f"{taken[0]} exists; pass --overwrite to replace it or choose another --out")
        return prefix
    prefix, k = Path(DEFAULT_OUT), 0
    while any(p.exists() for p in _outputs(prefix)):
        k += 1
        prefix = Path(f"{DEFAULT_OUT}_{k}")
    return prefix


def build_mappings(names, checkpoint, loss_fn, device) -> dict:
    """The mappings to evaluate; the fits use the evaluation's own FLAME and (float32) basis."""
    out = {}
    for name in names:
        if name == "edtn":
            out[name] = load_edtn(checkpoint, device)
        elif name == "basis_fit":
            out[name] = BasisFit(loss_fn.basis, device)
        else:
            out[name] = VertexFit(loss_fn)
    return out


def main(argv=None) -> dict:
    args = parse_args(argv)
    prefix = output_prefix(args.out, args.overwrite)
    names = list(dict.fromkeys(args.mapping))
    device = resolve_device(args.device)
    loss_fn = build_geometry_loss(args.flame_model, args.landmark_embedding, args.basis,
                                  LossWeights(*args.weights), args.impl, device)
    mappings = build_mappings(names, args.checkpoint, loss_fn, device)
    source, videos = open_split(args.codes, args.list, progress=True)

    start = time.perf_counter()
    results = {}
    with tempfile.TemporaryDirectory(prefix="edtn_eval_cache_") as tmp_cache:
        targets = None
        if args.impl == "fast":
            cache_dir = args.cache_dir or (None if source.packed is not None else tmp_cache)
            targets = real_targets_for(source, loss_fn, cache_dir, progress=True)
        groups = [("ALL", videos)] + ([] if args.no_per_video else [(v.name, [v]) for v in videos])
        for name, mapping in mappings.items():
            rows = []
            for video, group in groups:
                dataset = CodeFrames(source, group, targets)
                loader = build_loader(dataset, args.batch_size, train=False, device=device)
                metrics = evaluate(mapping, loader, loss_fn, device)
                metrics["vertex_rmse_mm"] = vertex_rmse_mm(metrics["vertex"])
                rows.append({"mapping": name, "video": video, "frames": len(dataset), **metrics})
            results[name] = rows
    seconds = time.perf_counter() - start

    all_rows = [row for rows in results.values() for row in rows]
    print_table(all_rows)
    report = {
        "checkpoint": str(args.checkpoint or "edtn_weights asset") if "edtn" in names else None,
        "mappings": names,
        "codes": str(source.path),
        "list": args.list,
        "impl": args.impl,
        "weights": dict(zip(("vertex", "landmark", "eye", "lip"), args.weights)),
        "videos": len(videos),
        "frames": all_rows[0]["frames"],
        "metrics": {name: {k: rows[0][k] for k in (*LOSS_TERMS, "vertex_rmse_mm")} for name, rows in results.items()},
        "per_video": {name: rows[1:] for name, rows in results.items()},
        "seconds": seconds,
        "device": str(device),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    json_path, csv_path = _outputs(prefix)
    with atomic_path(json_path) as tmp:
        tmp.write_text(json.dumps(report, indent=1) + "\n")
    with atomic_path(csv_path) as tmp:
        with open(tmp, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=COLUMNS)
            writer.writeheader()
            writer.writerows(all_rows)
    print(f"wrote {json_path} and {csv_path}")
    return report


def print_table(rows: list[dict]) -> None:
    """One line per row: mapping, video, frame count and every metric."""
    width = max(len(str(r["video"])) for r in rows)
    print(f"{'mapping':<10} {'video':<{width}} {'frames':>7} " + " ".join(f"{c:>14}" for c in COLUMNS[3:]))
    for r in rows:
        print(f"{r['mapping']:<10} {r['video']:<{width}} {r['frames']:>7} "
              + " ".join(f"{r[c]:>14.6g}" for c in COLUMNS[3:]))


if __name__ == "__main__":
    exit_on_user_error(PROGRAM, main)  # a missing / refused file: one line, no traceback
