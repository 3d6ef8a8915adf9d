#!/usr/bin/env python
"""Extract DECA codes (one .mat per frame, or one packed file) from videos, image folders or images.

Examples::

    # a video -> out/codes/clip.mp4/0000000.mat, 0000001.mat, ...
    python scripts/extract_deca.py clip.mp4 --out out/codes

    # VoxCeleb frames that are already face-centred (256²): no detection, DECA's exact resize
    python scripts/extract_deca.py /data/vox/images/train --out /data/vox/deca/train --no-detect

    # cluster job array: task i of n processes every n-th input (videos / images), deterministically
    python scripts/extract_deca.py /data/videos --out /data/deca --shard ${SLURM_ARRAY_TASK_ID}/16 --device cuda

Weights: DECA's deca_model.tar (asset ``deca_model``: $EDTN_HOME/deca_model.tar or --checkpoint).
Face boxes: face-alignment's S3FD if its weights are present (asset ``face_detector``), else dlib's
HOG detector (warning). Frames without a face and unreadable inputs are reported in
<out>/extract_report[.shard-i-of-n].json and skipped. Exit status 1 if any input could not be read.
"""
from __future__ import annotations

import argparse
import logging
import math
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # allow `python scripts/<name>.py` from a checkout
    sys.path.insert(0, str(REPO_ROOT))

from deca_edit.crop import CROP_SCALE, DETECTOR_CHOICES, make_detector  # noqa: E402
from deca_edit.encoder import load_deca_checkpoint  # noqa: E402
from deca_edit.extract import DEFAULT_BATCH_SIZE, parse_shard, run_extraction  # noqa: E402
from infra.runtime import exit_on_user_error  # noqa: E402


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    value = float(text)
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="+", type=Path, help="video files, image files and/or folders")
    parser.add_argument("--out", type=Path, required=True, help="output root for .mat files and the report")
    parser.add_argument("--packed", type=Path, default=None,
                        help="write one packed file at this prefix (<prefix>.npy/.json) instead of .mat files")
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="deca_model.tar (default: asset lookup, $EDTN_HOME/deca_model.tar)")
    parser.add_argument("--with-detail", action="store_true", help="also run E_detail and store 'detail' (128)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: %(default)s)")
    parser.add_argument("--batch-size", type=positive_int, default=DEFAULT_BATCH_SIZE, help="crops per encoder call")
    parser.add_argument("--shard", default=None, help="i/n: process only job k with k %% n == i (0-based)")
    parser.add_argument("--detector", choices=DETECTOR_CHOICES, default="auto",
                        help="face detector (auto: face-alignment S3FD if its weights exist, else dlib)")
    parser.add_argument("--no-detect", "--aligned", dest="aligned", action="store_true",
                        help="frames are face-centred (VoxCeleb): resize the whole frame to 224, no detection")
    parser.add_argument("--scale", type=positive_float, default=CROP_SCALE,
                        help="face square enlargement, > 0 (%(default)s)")
    parser.add_argument("--max-frames", type=positive_int, default=None,
                        help="at most this many frames per video (>= 1; default: all)")
    parser.add_argument("--trust-checkpoint", action="store_true",
                        help="ONLY for a checkpoint you created: allow a full unpickle (can run code "
                             "hidden in the file); by default it loads with torch weights_only")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.out.exists() and not args.out.is_dir():
        parser.error(f"--out {args.out} is an existing file; it must be a folder (created if missing)")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        shard = parse_shard(args.shard)
        loaded = load_deca_checkpoint(args.checkpoint, device=args.device, with_detail=args.with_detail,
                                      trust_checkpoint=args.trust_checkpoint)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    encoder, detail = loaded if args.with_detail else (loaded, None)
    detector = None if args.aligned else make_detector(args.detector, device=encoder.layers[0].weight.device)
    try:
        report = run_extraction(args.inputs, args.out, encoder, detector, batch_size=args.batch_size,
                                device=args.device, detail_encoder=detail, shard=shard, packed=args.packed,
                                max_frames=args.max_frames, scale=args.scale, progress=not args.no_progress)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"shard {report['shard']}: {report['jobs']} job(s), {report['frames_written']} frame(s) written, "
          f"{len(report['missing'])} without a face, {len(report['failed'])} unreadable -> {', '.join(report['outputs'])}")
    for entry in report["missing"]:
        print(f"  no face: {entry['source']} frame {entry['frame']}")
    for entry in report["failed"]:
        print(f"  FAILED: {entry['error']}", file=sys.stderr)
    return 1 if report["failed"] else 0


if __name__ == "__main__":
    sys.exit(exit_on_user_error("extract_deca.py", main))
