"""Print which external files (FLAME, DECA, EDTN, generator, VGG19, face-alignment) are present.

    python scripts/check_assets.py [--json out.json] [--name flame_model=/path/generic_model.pkl ...]

For every asset: where it was found, its size, and a content check (keys / shapes); for missing
ones, where to obtain them. The check never runs code from a file: torch files load with
``weights_only`` and the FLAME / landmark pickles with allow-lists; a file that needs more is
reported INVALID, naming the offending global. Exit status 0 when every listed asset is present and valid, else 1.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # allow `python scripts/<name>.py` from a checkout
    sys.path.insert(0, str(REPO_ROOT))

from infra.assets import ASSETS, asset_home, check_asset  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--path", action="append", default=[], metavar="NAME=PATH",
                        help="check NAME at an explicit PATH instead of the cache (repeatable)")
    parser.add_argument("--only", nargs="*", choices=sorted(ASSETS), help="check only these assets")
    parser.add_argument("--json", help="also write the table as JSON to this file")
    args = parser.parse_args(argv)

    explicit = dict(item.split("=", 1) for item in args.path)
    unknown = set(explicit) - set(ASSETS)
    if unknown:
        parser.error(f"unknown asset name(s) in --path: {sorted(unknown)}")
    names = args.only or list(ASSETS)
    rows = [check_asset(name, explicit.get(name)) for name in names]

    print(f"asset cache: {asset_home()}  (set EDTN_HOME to change)")
    print(f"{'asset':<20} {'status':<8} {'size':>12}  {'location / check'}")
    for row in rows:
        status = "ok" if row.ok else ("INVALID" if row.present else "missing")
        size = f"{row.size / 1e6:.1f} MB" if row.present else "-"
        print(f"{row.name:<20} {status:<8} {size:>12}  {row.path or ''}")
        detail = row.detail if row.present else f"get it: {ASSETS[row.name].obtain}"
        print(f"{'':<20} {'':<8} {'':>12}  {detail}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump([{**vars(r), "path": str(r.path) if r.path else None} for r in rows], handle, indent=2)
    return 0 if all(r.ok for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
