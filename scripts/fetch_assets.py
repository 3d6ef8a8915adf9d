"""Download the publicly downloadable assets into the asset cache ($EDTN_HOME, or the torch hub
cache for torchvision / face-alignment weights), with resume, a progress bar and sha256 checks.

    python scripts/fetch_assets.py                 # every asset that has a public address
    python scripts/fetch_assets.py vgg19 landmark_embedding

Licensed files (FLAME generic_model.pkl, DECA deca_model.tar) and the authors' EDTN / generator
releases cannot be fetched automatically: the script prints where to get each of them.
Offline, it stops at the first unreachable address with a clear message (exit status 2).
"""
from __future__ import annotations

import argparse
import sys

from infra.assets import ASSETS, AssetError, asset_home, resolve_asset, torch_hub_dir
from infra.download import DownloadError, download


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*",
                        help=f"assets to fetch (default: all with a public address): {', '.join(ASSETS)}")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for a server")
    parser.add_argument("--force", action="store_true", help="download even if the file is present")
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n not in ASSETS]
    if unknown:
        parser.error(f"unknown asset(s) {unknown}; known: {', '.join(ASSETS)}")

    names = args.names or [n for n, s in ASSETS.items() if s.url]
    manual = []
    for name in names:
        spec = ASSETS[name]
        if not args.force:
            try:
                print(f"{name}: present at {resolve_asset(name)}")
                continue
            except AssetError:
                pass
        if spec.url is None:
            manual.append(spec)
            continue
        dest = (torch_hub_dir() if spec.in_torch_hub else asset_home()) / spec.filename
        try:
            download(spec.url, dest, sha256=spec.sha256, timeout=args.timeout)
        except DownloadError as exc:
            print(f"error: {name}: {exc}", file=sys.stderr)
            return 2
        print(f"{name}: downloaded to {dest}")
    for spec in manual:
        print(f"{spec.name}: {spec.filename} must be obtained by hand: {spec.obtain}")
    return 1 if manual else 0


if __name__ == "__main__":
    sys.exit(main())
