#!/usr/bin/env python
"""Fix the evaluation pairs once: VoxCeleb test videos × AnimeCeleb test identities, as a CSV.

    python scripts/make_protocol.py --vox-codes data/vox/deca/test --anime-root data/animeceleb \\
        --test-list data/animeceleb/test_list.txt --out results/protocol.csv

Every video of the DECA code tree (or packed file) gets ``--pairs-per-video`` identities from a
seeded permutation of the test list (cycled, so identities are used evenly) and ``--frames``
frames (``uniform``: spread over the video; ``window``: a seeded run of consecutive frames). The
CSV lists every frame explicitly (format: reenact/evaluation/protocol.py). An existing protocol is
never replaced unless ``--overwrite`` is given: every method must be scored on the same pairs.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from infra.runtime import exit_on_user_error
from reenact.evaluation.protocol import (DEFAULT_FRAMES_PER_PAIR, FRAME_SAMPLINGS, AnimeCelebTest, VoxCodes,
                                         make_protocol, write_protocol)

PROGRAM = "make_protocol.py"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vox-codes", required=True, type=Path,
                   help="DECA codes of the VoxCeleb test videos: <vox>/deca/test (<video>/<frame>.mat) "
                        "or a packed prefix")
    p.add_argument("--anime-root", required=True, type=Path,
                   help="AnimeCeleb root (combined_pose.csv, rotation/, basis/)")
    p.add_argument("--test-list", required=True, type=Path, help="the authors' test_list.txt (AnimeCeleb org_ids)")
    p.add_argument("--out", required=True, type=Path, help="protocol CSV to write")
    p.add_argument("--seed", type=int, default=0, help="seed of the assignment and sampling (default %(default)s)")
    p.add_argument("--frames", type=int, default=DEFAULT_FRAMES_PER_PAIR,
                   help="frames per pair (default %(default)s; shorter videos give all their frames)")
    p.add_argument("--sampling", choices=FRAME_SAMPLINGS, default="uniform",
                   help="frame sampling (default %(default)s)")
    p.add_argument("--max-videos", type=int, default=None, help="a seeded subset of this many videos (default: all)")
    p.add_argument("--pairs-per-video", type=int, default=1, help="identities per video (default %(default)s)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing protocol file")
    return p


def run(args: argparse.Namespace) -> int:
    if args.out.exists() and not args.overwrite:
        raise ValueError(f"{args.out} exists; a protocol is made once (pass --overwrite to replace it)")
    pairs = make_protocol(VoxCodes(args.vox_codes), AnimeCelebTest(args.anime_root, args.test_list),
                          seed=args.seed, frames_per_pair=args.frames, max_videos=args.max_videos,
                          pairs_per_video=args.pairs_per_video, sampling=args.sampling)
    write_protocol(args.out, pairs)
    identities = len({p.identity for p in pairs})
    print(f"wrote {args.out}: {len(pairs)} pairs ({len({p.video for p in pairs})} videos x {identities} identities), "
          f"{sum(len(p.frames) for p in pairs)} frames")
    return 0


def main(argv: list[str] | None = None) -> int:
    return exit_on_user_error(PROGRAM, run, build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
