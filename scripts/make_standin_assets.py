"""Write a complete, deterministic set of stand-in asset files, so that every command and the demo
can be tried without the licensed / released files. Output made with them is noise.

    python scripts/make_standin_assets.py --out standin_assets
    EDTN_HOME=standin_assets python infer.py driving=clip.mp4 source=character.png out=anime.mp4

Files: a FLAME-format generic_model.pkl on DECA's public template topology, DECA's public
landmark_embedding.npy (copied), deca_model.tar (E_flame), EDTN.pt (``--edtn`` copies a real one),
transform_matrix_08_30.npy (``--transform-matrix`` copies a real one), generator_default.ckpt and
generator_cartoon.ckpt (the authors' Lightning layout) and vgg19-dcbb9e9d.pth. Each stand-in
carries a ``standin`` key and is listed in the folder's ``STANDIN`` note; check_assets.py shows
them as ``stand-in`` and infer.py / the demo print "stand-in weights: output is noise".

DECA's head_template.obj and landmark_embedding.npy are downloaded from the DECA repository unless
given with ``--head-template`` / ``--landmark-embedding`` (offline, that is required). Two runs
with the same inputs write byte-identical files. User errors print one line and exit 1.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from infra.download import DownloadError  # noqa: E402
from infra.runtime import exit_on_user_error  # noqa: E402
from infra.standin import STANDIN_NOTE, STANDIN_WARNING  # noqa: E402
from reenact.standin import DEFAULT_GENERATOR_SIZE, make_standin_kit  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="asset folder to write (use it as EDTN_HOME)")
    parser.add_argument("--head-template", help="DECA's head_template.obj (default: download)")
    parser.add_argument("--landmark-embedding", help="DECA's landmark_embedding.npy (default: download)")
    parser.add_argument("--edtn", help="a real EDTN.pt to copy in instead of a stand-in")
    parser.add_argument("--transform-matrix", help="a real transform_matrix_08_30.npy to copy in")
    parser.add_argument("--generator-size", type=int, default=DEFAULT_GENERATOR_SIZE,
                        help="resolution of the stand-in generators (a multiple of 32; smaller is faster)")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the DECA server")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)

    def run() -> None:
        try:
            files = make_standin_kit(args.out, args.head_template, args.landmark_embedding, args.edtn,
                                     args.transform_matrix, args.generator_size,
                                     progress=not args.no_progress, timeout=args.timeout)
        except DownloadError as exc:
            raise FileNotFoundError(str(exc)) from None
        out = Path(args.out)
        for name, entry in files.items():
            kind = "stand-in" if entry["standin"] else "copied"
            print(f"{kind:<9} {entry['size'] / 1e6:8.1f} MB  {out / name}")
        print(f"note: {out / STANDIN_NOTE}\n{STANDIN_WARNING}. Use it with EDTN_HOME={out}")

    exit_on_user_error("make_standin_assets.py", run)
    return 0


if __name__ == "__main__":
    sys.exit(main())
