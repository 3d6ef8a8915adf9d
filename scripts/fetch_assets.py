"""Download the publicly downloadable assets into the asset cache ($EDTN_HOME, or the torch hub
cache for torchvision / face-alignment weights), with resume, a progress bar and sha256 checks.

    python scripts/fetch_assets.py                 # every asset that has a public address
    python scripts/fetch_assets.py vgg19 landmark_embedding

Every public file is tried, even when an earlier one fails (offline, HTTP error, checksum), and
every licensed file that is still missing (FLAME generic_model.pkl, DECA deca_model.tar, the
authors' EDTN / generator releases) is listed with where to get it.

Exit status: 2 when a download failed, else 1 when licensed files are still missing, else 0.
To try the programs without the licensed files, see scripts/make_standin_assets.py.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from infra.assets import ASSETS, AssetError, asset_home, resolve_asset, torch_hub_dir  # noqa: E402
from infra.download import DownloadError, download  # noqa: E402

EXIT_MANUAL_MISSING = 1
EXIT_DOWNLOAD_FAILED = 2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*",
                        help=f"assets to fetch (default: all, public ones downloaded): {', '.join(ASSETS)}")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for a server")
    parser.add_argument("--force", action="store_true", help="download even if the file is present")
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n not in ASSETS]
    if unknown:
        parser.error(f"unknown asset(s) {unknown}; known: {', '.join(ASSETS)}")

    manual, failed = [], []
    for name in args.names or list(ASSETS):
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
            failed.append(name)
            continue
        print(f"{name}: downloaded to {dest}")
    for spec in manual:
        print(f"{spec.name}: {spec.filename} must be obtained by hand: {spec.obtain}")
    if failed:
        print(f"failed to download: {', '.join(failed)} (see the errors above)", file=sys.stderr)
        return EXIT_DOWNLOAD_FAILED
    return EXIT_MANUAL_MISSING if manual else 0


if __name__ == "__main__":
    sys.exit(main())
