"""Print which external files (FLAME, DECA, EDTN, generator, VGG19, face-alignment) are present,
and what they are enough for.

    python scripts/check_assets.py [--json out.json] [--path flame_model=/path/generic_model.pkl ...]
    python scripts/check_assets.py --require infer_video      # exit 1 unless infer.py can run on videos

For every asset: where it was found, its size, and a content check (keys / shapes); for missing
ones, where to obtain them. The check never runs code from a file: torch files load with
``weights_only`` and the FLAME / landmark pickles with allow-lists; a file that needs more is
reported INVALID, naming the offending global. Files of the stand-in kit
(scripts/make_standin_assets.py) are shown as ``stand-in``: they run, but their output is noise.
Then, per use (infer from DECA codes, infer from video, EDTN training, generator training,
evaluation): enough or not, and what is missing.

Exit status: 1 when a present file is invalid (a wrong or corrupt file at an asset's place) or
when a use named with ``--require`` lacks files; 0 otherwise (missing files a user does not need
are no failure); 2 for bad arguments.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # allow `python scripts/<name>.py` from a checkout
    sys.path.insert(0, str(REPO_ROOT))

from infra.assets import ASSETS, AssetStatus, asset_home, check_asset  # noqa: E402
from infra.standin import STANDIN_WARNING  # noqa: E402

# use -> (label, assets it needs). Face-alignment weights are optional everywhere (dlib fallback).
USES: dict[str, tuple[str, tuple[str, ...]]] = {
    "infer_codes": ("infer from codes", ("edtn_weights", "generator_default")),
    "infer_video": ("infer from video", ("edtn_weights", "generator_default", "deca_model")),
    "edtn_training": ("EDTN training", ("flame_model", "landmark_embedding", "transform_matrix")),
    "generator_training": ("generator training", ("vgg19",)),
    "evaluation": ("evaluation", ("edtn_weights", "flame_model", "landmark_embedding", "transform_matrix")),
}
EXIT_PROBLEM = 1


def status_word(row: AssetStatus) -> str:
    """``ok`` / ``stand-in`` / ``INVALID`` / ``missing``."""
    if not row.present:
        return "missing"
    if not row.ok:
        return "INVALID"
    return "stand-in" if row.standin else "ok"


def use_report(rows: dict[str, AssetStatus]) -> dict[str, dict]:
    """Per use: ``enough`` (every needed file present and valid), ``lacking`` and ``standins``."""
    report = {}
    for use, (label, needs) in USES.items():
        lacking = [ASSETS[n].filename for n in needs if not rows[n].ok]
        standins = [ASSETS[n].filename for n in needs if rows[n].ok and rows[n].standin]
        report[use] = {"label": label, "enough": not lacking, "lacking": lacking, "standins": standins}
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--path", action="append", default=[], metavar="NAME=PATH",
                        help="check NAME at an explicit PATH instead of the cache (repeatable)")
    parser.add_argument("--only", nargs="*", choices=sorted(ASSETS), help="list only these assets")
    parser.add_argument("--require", action="append", default=[], choices=list(USES), metavar="USE",
                        help=f"exit 1 unless the files for USE are present and valid; one of {', '.join(USES)} "
                             "(repeatable)")
    parser.add_argument("--json", help="also write the table and the per-use report as JSON to this file")
    args = parser.parse_args(argv)

    explicit = dict(item.split("=", 1) for item in args.path)
    unknown = set(explicit) - set(ASSETS)
    if unknown:
        parser.error(f"unknown asset name(s) in --path: {sorted(unknown)}")
    rows = {name: check_asset(name, explicit.get(name)) for name in ASSETS}
    shown = args.only or list(ASSETS)

    print(f"asset cache: {asset_home()}  (set EDTN_HOME to change)")
    print(f"{'asset':<20} {'status':<8} {'size':>12}  {'location / check'}")
    for name in shown:
        row = rows[name]
        size = f"{row.size / 1e6:.1f} MB" if row.present else "-"
        print(f"{row.name:<20} {status_word(row):<8} {size:>12}  {row.path or ''}")
        detail = row.detail if row.present else f"get it: {ASSETS[row.name].obtain}"
        print(f"{'':<20} {'':<8} {'':>12}  {detail}")

    report = use_report(rows)
    print("\nenough for:")
    for use, item in report.items():
        if item["enough"]:
            verdict = "yes" + (f" (stand-ins: {', '.join(item['standins'])})" if item["standins"] else "")
        else:
            verdict = f"no: needs {', '.join(item['lacking'])}"
        print(f"  {item['label']:<20} {verdict}")
    if any(rows[n].standin for n in rows):
        print(f"\nwarning: {STANDIN_WARNING} (files marked stand-in above)")

    invalid = [n for n in shown if rows[n].present and not rows[n].ok]
    unmet = [u for u in args.require if not report[u]["enough"]]
    for name in invalid:
        print(f"error: {ASSETS[name].filename} at {rows[name].path} is not valid", file=sys.stderr)
    for use in unmet:
        print(f"error: not enough for {report[use]['label']}: needs {', '.join(report[use]['lacking'])}",
              file=sys.stderr)
    if args.json:
        table = [{**vars(rows[n]), "path": str(rows[n].path) if rows[n].path else None,
                  "status": status_word(rows[n])} for n in shown]
        with open(args.json, "w") as handle:
            json.dump({"assets": table, "uses": report}, handle, indent=2)
    return EXIT_PROBLEM if invalid or unmet else 0


if __name__ == "__main__":
    sys.exit(main())
