#!/usr/bin/env python
"""Render an evaluation protocol with one morph mapping: PNG frames + 20-dim poses per pair.

    python scripts/render_protocol.py --protocol results/protocol.csv --vox-codes data/vox/deca/test \\
        --anime-root data/animeceleb --generator gen.ckpt --mapping edtn --edtn EDTN.pt \\
        --out results/render/EDTN
    # training-free baselines (no EDTN weights; vertex_fit needs FLAME)
    python scripts/render_protocol.py ... --mapping vertex_fit --out results/render/vertex_fit
    # a cluster job array: task i of n renders every n-th pair into the same folder
    python scripts/render_protocol.py ... --shard ${SLURM_ARRAY_TASK_ID}/8 --device cuda

Resumable: pairs whose poses.npy exists are skipped; every file is written atomically. A folder
rendered with another protocol or method is refused. Layout: reenact/evaluation/render.py.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from edtn.mappings import MAPPINGS
from infra.runtime import exit_on_user_error
from reenact.evaluation.protocol import VoxCodes, read_protocol
from reenact.evaluation.render import RenderSettings, render_protocol

PROGRAM = "render_protocol.py"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--protocol", required=True, type=Path, help="protocol CSV (scripts/make_protocol.py)")
    p.add_argument("--vox-codes", required=True, type=Path, help="<vox>/deca/test or a packed prefix")
    p.add_argument("--anime-root", required=True, type=Path, help="AnimeCeleb root (source images)")
    p.add_argument("--out", required=True, type=Path, help="output folder of this method")
    p.add_argument("--mapping", choices=MAPPINGS, default="edtn", help="morph mapping (default %(default)s)")
    p.add_argument("--edtn", default=None, help="EDTN checkpoint for --mapping edtn (default: asset edtn_weights)")
    p.add_argument("--basis", default=None, help="transform_matrix_08_30.npy (basis_fit / vertex_fit)")
    p.add_argument("--flame", default=None, help="FLAME generic_model.pkl (vertex_fit)")
    p.add_argument("--landmark-embedding", default=None, help="DECA landmark_embedding.npy (vertex_fit)")
    p.add_argument("--generator", default=None, help="generator checkpoint (default: asset generator_<style>)")
    p.add_argument("--style", choices=("default", "cartoon"), default="default", help="generator asset style")
    p.add_argument("--no-ema", action="store_true", help="raw generator weights instead of EMA")
    p.add_argument("--shard", default=None, help="i/n: render pairs k with k %% n == i")
    p.add_argument("--batch-size", type=int, default=16, help="frames per generator call")
    p.add_argument("--device", default="auto", help="auto (CUDA when present) | cpu | cuda | cuda:N")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return p


def run(args: argparse.Namespace) -> int:
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    settings = RenderSettings(mapping=args.mapping, edtn_path=args.edtn, basis_path=args.basis,
                              flame_path=args.flame, landmark_embedding_path=args.landmark_embedding,
                              generator_path=args.generator, generator_style=args.style,
                              use_ema=not args.no_ema, batch_size=args.batch_size, device=args.device)
    report = render_protocol(read_protocol(args.protocol), VoxCodes(args.vox_codes), args.anime_root, args.out,
                             settings, shard=args.shard, protocol_path=args.protocol,
                             progress=not args.no_progress)
    print(json.dumps(report))
    return 0


def main(argv: list[str] | None = None) -> int:
    return exit_on_user_error(PROGRAM, run, build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
