"""Evaluate an EDTN checkpoint on DECA codes: vertex / landmark / eye / lip errors.

Works for our training checkpoints (``.../checkpoints/best.pt``) and the authors' ``EDTN.pt``
(both through ``edtn.model.load_edtn``). Prints a table (one row per video and an ``ALL`` row,
frame-weighted) and writes ``<out>.json`` and ``<out>.csv``.

    python scripts/eval_edtn.py --checkpoint EDTN.pt --codes data/vox/packed/test
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
import math
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
from edtn.model import load_edtn  # noqa: E402
from infra.runtime import exit_on_user_error, resolve_device  # noqa: E402
from edtn.train_loop import LOSS_TERMS, build_geometry_loss, evaluate  # noqa: E402

DEFAULT_WEIGHTS = (100.0, 1.0, 1.0, 1.0)  # vertex, landmark, eye, lip (the paper's)
METRES_TO_MM = 1000.0
COLUMNS = ("video", "frames", *LOSS_TERMS, "vertex_rmse_mm")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--checkpoint", default=None,
                   help="EDTN.pt or one of our training checkpoints (default: the edtn_weights asset)")
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
    p.add_argument("--out", default="outputs/eval_edtn/metrics",
                   help="output prefix: writes <out>.json and <out>.csv")
    p.add_argument("--no-per-video", action="store_true", help="only the ALL row")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    device = resolve_device(args.device)
    model = load_edtn(args.checkpoint, device)
    loss_fn = build_geometry_loss(args.flame_model, args.landmark_embedding, args.basis,
                                  LossWeights(*args.weights), args.impl, device)
    source, videos = open_split(args.codes, args.list, progress=True)

    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="edtn_eval_cache_") as tmp_cache:
        targets = None
        if args.impl == "fast":
            cache_dir = args.cache_dir or (None if source.packed is not None else tmp_cache)
            targets = real_targets_for(source, loss_fn, cache_dir, progress=True)
        groups = [("ALL", videos)] + ([] if args.no_per_video else [(v.name, [v]) for v in videos])
        rows = []
        for name, group in groups:
            dataset = CodeFrames(source, group, targets)
            loader = build_loader(dataset, args.batch_size, train=False, device=device)
            metrics = evaluate(model, loader, loss_fn, device)
            metrics["vertex_rmse_mm"] = math.sqrt(metrics["vertex"]) * METRES_TO_MM
            rows.append({"video": name, "frames": len(dataset), **metrics})
    seconds = time.perf_counter() - start

    print_table(rows)
    report = {
        "checkpoint": str(args.checkpoint or "edtn_weights asset"),
        "codes": str(source.path),
        "list": args.list,
        "impl": args.impl,
        "weights": dict(zip(("vertex", "landmark", "eye", "lip"), args.weights)),
        "videos": len(videos),
        "frames": rows[0]["frames"],
        "metrics": {k: rows[0][k] for k in (*LOSS_TERMS, "vertex_rmse_mm")},
        "per_video": rows[1:],
        "seconds": seconds,
        "device": str(device),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_name(out.name + ".json").write_text(json.dumps(report, indent=1) + "\n")
    with open(out.with_name(out.name + ".csv"), "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {out}.json and {out}.csv")
    return report


def print_table(rows: list[dict]) -> None:
    """One line per row: video, frame count and every metric."""
    width = max(len(str(r["video"])) for r in rows)
    print(f"{'video':<{width}} {'frames':>7} " + " ".join(f"{c:>14}" for c in COLUMNS[2:]))
    for r in rows:
        print(f"{r['video']:<{width}} {r['frames']:>7} " + " ".join(f"{r[c]:>14.6g}" for c in COLUMNS[2:]))


if __name__ == "__main__":
    exit_on_user_error("eval_edtn.py", main)  # a missing / refused file: one line, no traceback
