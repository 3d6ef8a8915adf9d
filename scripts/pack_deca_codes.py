#!/usr/bin/env python
"""Pack per-frame DECA ``.mat`` codes into one memory-mappable array per split.

Examples::

    # VoxCeleb tree <root>/deca/{train,test}/<video>/*.mat -> out/train.{npy,json}, out/test.{npy,json}
    python scripts/pack_deca_codes.py /data/vox out/codes --workers 8 --skip-bad

    # one flat folder of .mat files (a single video) -> out/example.{npy,json}
    python scripts/pack_deca_codes.py ../shared/reference/authors/vox_deca out/example

The format and the reader (``PackedCodes``) are documented in ``deca_edit/codes.py``.
Exit status: 0 on success, 1 when a bad file stopped packing (re-run with --skip-bad to leave it out)
or the source / columns are wrong (one line on stderr, no traceback); 130 on Ctrl-C.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # allow `python scripts/<name>.py` from a checkout
    sys.path.insert(0, str(REPO_ROOT))

from deca_edit.codes import (DEFAULT_PACK_COLUMNS, CodeFileError, find_code_splits,  # noqa: E402
                             pack_code_tree)
from infra.runtime import exit_on_user_error  # noqa: E402

DEFAULT_SPLITS = ("train", "test")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path,
                        help="dataset root with deca/<split>/ (or <split>/) folders, or one code folder")
    parser.add_argument("out", type=Path,
                        help="output folder (split mode: writes <out>/<split>.npy/.json) or output prefix "
                             "(single folder mode: writes <out>.npy/.json)")
    parser.add_argument("--splits", nargs="+", default=None,
                        help="splits to pack; each must exist (default: whichever of train, test exist; "
                             "if neither does, SOURCE itself is packed to the prefix OUT)")
    parser.add_argument("--columns", nargs="+", default=list(DEFAULT_PACK_COLUMNS),
                        help="keys to store, starting with shape exp pose (default: %(default)s)")
    parser.add_argument("--skip-bad", action="store_true",
                        help="leave out corrupt / wrong-shaped / NaN files and list them, instead of stopping")
    parser.add_argument("--workers", type=int, default=0, help="reader processes (0 = this process)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.source.is_dir():
        parser.error(f"source {args.source} is not a folder" if args.source.exists()
                     else f"source {args.source} does not exist")
    splits = find_code_splits(args.source, args.splits or DEFAULT_SPLITS)
    if args.splits and set(splits) != set(args.splits):
        missing = sorted(set(args.splits) - set(splits))
        print(f"error: split(s) {missing} not found under {args.source} (looked for deca/<split> and <split>)",
              file=sys.stderr)
        return 1
    jobs = {split: (folder, args.out / split) for split, folder in splits.items()} or \
        {args.source.name: (args.source, args.out)}
    kwargs = dict(columns=args.columns, skip_bad=args.skip_bad, workers=args.workers,
                  progress=not args.no_progress)
    results = {}
    try:
        for name, (folder, prefix) in jobs.items():
            results[name] = pack_code_tree(folder, prefix, **kwargs)
    except CodeFileError as exc:
        print(f"error: {exc}\n(re-run with --skip-bad to leave bad files out)", file=sys.stderr)
        return 1
    print(f"{'split':<12}{'videos':>8}{'frames':>10}{'skipped':>9}  output")
    for name, res in results.items():
        print(f"{name:<12}{res.num_videos:>8}{res.num_frames:>10}{len(res.skipped):>9}  {res.prefix}.npy")
    for name, res in results.items():
        for path, reason in res.skipped:
            print(f"skipped [{name}] {reason}")
    return 0


if __name__ == "__main__":
    sys.exit(exit_on_user_error("pack_deca_codes.py", main))
