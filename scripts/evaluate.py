#!/usr/bin/env python
"""Evaluation metrics and the paper's tables (reenact/evaluation).

Subcommands::

    # the FID real set: AnimeCeleb test images at the generator's resolution, composited over white
    python scripts/evaluate.py real --anime-root data/animeceleb --test-list test_list.txt --size 256 \\
        --out results/real_256
    # FID with torch-fidelity and our Inception weights asset
    python scripts/evaluate.py fid --real results/real_256 --fake results/render/EDTN --inception PATH --out fid.json
    # KDR of one rendered method
    python scripts/evaluate.py kdr --protocol results/protocol.csv --vox-images data/vox/images/test \\
        --fake results/render/EDTN --out kdr.json
    # Table 1: renders EDTN, basis_fit, vertex_fit (and every --extra checkpoint), then FID, KDR, geometry
    python scripts/evaluate.py table1 --protocol results/protocol.csv --vox-codes data/vox/deca/test \\
        --vox-images data/vox/images/test --anime-root data/animeceleb --generator gen.ckpt --edtn EDTN.pt --out results
    # the loss ablation: four checkpoints trained with the four presets -> KDR and geometry
    python scripts/evaluate.py ablation ... --vertex v.pt --landmark l.pt --vertex-landmark vl.pt \\
        --all all.pt --out results

Every file not given explicitly comes from the asset cache ($EDTN_HOME, torch hub cache); a
missing one stops the run before any work with a message saying where to get it
(scripts/fetch_assets.py fetches the public ones). Tables and renders are resumable: re-running a
command redoes only what is missing.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from infra.files import atomic_path
from infra.runtime import exit_on_user_error

PROGRAM = "evaluate.py"


def _write_json(path: Path, payload: dict) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(payload, indent=1) + "\n", encoding="utf-8")
    print(json.dumps(payload))


# ----------------------------------------------------------------------------- subcommands
def cmd_real(args: argparse.Namespace) -> int:
    from reenact.evaluation.protocol import AnimeCelebTest, prepare_real_set, real_image_paths

    per_identity = None if args.per_identity == 0 else args.per_identity
    paths = real_image_paths(AnimeCelebTest(args.anime_root, args.test_list), per_identity=per_identity,
                             seed=args.seed)
    prepare_real_set(paths, args.size, args.out, progress=not args.no_progress)
    print(f"real set: {len(paths)} images ({args.size}x{args.size}) in {args.out}")
    return 0


def cmd_fid(args: argparse.Namespace) -> int:
    from reenact.evaluation.metrics import compute_fid

    result = compute_fid(args.real, args.fake, args.inception, batch_size=args.batch_size, device=args.device,
                         progress=not args.no_progress, feature_layer=args.fid_feature_layer)
    _write_json(args.out, {**result, "real": str(args.real), "fake": str(args.fake)})
    return 0


def cmd_kdr(args: argparse.Namespace) -> int:
    from reenact.evaluation.experiments import anime_features, human_features
    from reenact.evaluation.metrics import kdr
    from reenact.evaluation.protocol import check_protocol, read_protocol
    from reenact.evaluation.render import pair_done

    pairs = read_protocol(args.protocol)
    check_protocol(pairs, args.protocol, images_root=args.vox_images)
    missing = [p.pair for p in pairs if not pair_done(args.fake, p)]
    if missing:
        raise ValueError(f"{args.fake}: {len(missing)} pair(s) of {args.protocol} are not rendered "
                         f"(first: {missing[0]}); run scripts/render_protocol.py first")
    cache = args.human_cache or args.protocol.parent / f"human_landmarks_{args.human_box}"
    human = human_features(pairs, args.vox_images, cache, landmarker_path=args.face_landmarker,
                           box=args.human_box, device=args.device, progress=not args.no_progress,
                           trust_checkpoint=args.trust_checkpoint)
    anime = anime_features(pairs, args.fake, landmarker_path=args.anime_landmarker, device=args.device,
                           progress=not args.no_progress)
    result = kdr([human[p.pair] for p in pairs], [anime[p.pair] for p in pairs])
    _write_json(args.out, {"kdr": result["kdr"], "frames": result["frames"],
                           "frames_skipped": result["frames_skipped"],
                           "per_pair": dict(zip((p.pair for p in pairs), result["per_pair"]))})
    return 0


def _settings(args: argparse.Namespace):
    from reenact.evaluation.experiments import EvalSettings
    from reenact.evaluation.render import RenderSettings

    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    render = RenderSettings(generator_path=args.generator, generator_style=args.style, use_ema=not args.no_ema,
                            basis_path=args.basis, flame_path=args.flame,
                            landmark_embedding_path=args.landmark_embedding, batch_size=args.batch_size)
    return EvalSettings(
        protocol=args.protocol, vox_codes=args.vox_codes, vox_images=args.vox_images, anime_root=args.anime_root,
        out=args.out, render=render, inception_path=getattr(args, "inception", None),
        fid_feature_layer=getattr(args, "fid_feature_layer", "2048"), anime_landmarker_path=args.anime_landmarker,
        face_landmarker_path=args.face_landmarker, human_box=args.human_box,
        trust_checkpoint=args.trust_checkpoint,
        real_dir=getattr(args, "real", None), real_per_identity=getattr(args, "real_per_identity", None) or None,
        device=args.device, progress=not args.no_progress)


def _print_table(result: dict) -> None:
    print(Path(result["paths"][0]).read_text(encoding="utf-8"))
    print("wrote " + ", ".join(str(p) for p in result["paths"]))


def cmd_table1(args: argparse.Namespace) -> int:
    from reenact.evaluation.experiments import Method, run_table

    methods = [Method("EDTN", "edtn", args.edtn), Method("basis_fit", "basis_fit"),
               Method("vertex_fit", "vertex_fit")]
    for item in args.extra:
        if "=" not in item:
            raise ValueError(f"--extra takes NAME=CHECKPOINT, got {item!r}")
        name, path = item.split("=", 1)
        methods.append(Method(name, "edtn", path))
    _print_table(run_table("table1", methods, _settings(args)))
    return 0


def cmd_ablation(args: argparse.Namespace) -> int:
    from reenact.evaluation.experiments import Method, run_table

    methods = [Method("vertex", "edtn", args.vertex), Method("landmark", "edtn", args.landmark),
               Method("vertex+landmark", "edtn", args.vertex_landmark), Method("all", "edtn", args.all)]
    _print_table(run_table("ablation", methods, _settings(args)))
    return 0


# ----------------------------------------------------------------------------- arguments
def _kdr_args(p: argparse.ArgumentParser) -> None:
    from reenact.evaluation.experiments import HUMAN_BOXES

    p.add_argument("--face-landmarker", default=None, help="face-alignment 2D-FAN-4 (asset face_landmarker)")
    p.add_argument("--anime-landmarker", default=None,
                   help="anime-face-detector's mmpose_anime-face_hrnetv2.pth (asset anime_landmarker)")
    p.add_argument("--human-box", choices=HUMAN_BOXES, default="auto",
                   help="face boxes on the driving frames: auto (S3FD if present, else dlib) | fan | dlib | "
                        "frame (the whole frame)")
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="ONLY for files you created: load a 2D-FAN-4 TorchScript file that is not the "
                        "verified release (TorchScript runs the program stored in the file)")


def _fid_layer_arg(p: argparse.ArgumentParser) -> None:
    from reenact.evaluation.metrics import FID_FEATURE_LAYERS

    p.add_argument("--fid-feature-layer", choices=FID_FEATURE_LAYERS, default="2048",
                   help="Inception features of the FID: 2048 = the standard FID (default); the smaller "
                        "layers are quick checks only")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="auto (CUDA when present) | cpu | cuda | cuda:N")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _table_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--protocol", required=True, type=Path, help="protocol CSV (scripts/make_protocol.py)")
    p.add_argument("--vox-codes", required=True, type=Path, help="<vox>/deca/test or a packed prefix")
    p.add_argument("--vox-images", required=True, type=Path, help="<vox>/images/test (driving frames, KDR)")
    p.add_argument("--anime-root", required=True, type=Path, help="AnimeCeleb root")
    p.add_argument("--out", required=True, type=Path, help="results folder (renders, caches, tables)")
    p.add_argument("--generator", default=None, help="generator checkpoint (default: asset generator_<style>)")
    p.add_argument("--style", choices=("default", "cartoon"), default="default", help="generator asset style")
    p.add_argument("--no-ema", action="store_true", help="raw generator weights instead of EMA")
    p.add_argument("--basis", default=None, help="transform_matrix_08_30.npy (asset transform_matrix)")
    p.add_argument("--flame", default=None, help="FLAME generic_model.pkl (asset flame_model)")
    p.add_argument("--landmark-embedding", default=None, help="DECA landmark_embedding.npy")
    p.add_argument("--batch-size", type=int, default=16, help="frames per generator call")
    _kdr_args(p)
    _common(p)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("real", help="prepare the FID real set")
    p.add_argument("--anime-root", required=True, type=Path)
    p.add_argument("--test-list", required=True, type=Path, help="test_list.txt")
    p.add_argument("--size", type=int, default=256, help="the generator's resolution (default %(default)s)")
    p.add_argument("--per-identity", type=int, default=50, help="images per identity, 0 = all (default %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(fn=cmd_real)

    p = sub.add_parser("fid", help="FID between two image folders")
    p.add_argument("--real", required=True, type=Path, help="real images (searched recursively)")
    p.add_argument("--fake", required=True, type=Path, help="generated images (searched recursively)")
    p.add_argument("--inception", default=None, help="weights-inception-2015-12-05-6726825d.pth (asset inception_fid)")
    p.add_argument("--out", required=True, type=Path, help="JSON file with the key 'fid'")
    p.add_argument("--batch-size", type=int, default=64)
    _fid_layer_arg(p)
    _common(p)
    p.set_defaults(fn=cmd_fid)

    p = sub.add_parser("kdr", help="KDR of one rendered method")
    p.add_argument("--protocol", required=True, type=Path)
    p.add_argument("--vox-images", required=True, type=Path, help="<vox>/images/test")
    p.add_argument("--fake", required=True, type=Path, help="the method's render folder")
    p.add_argument("--out", required=True, type=Path, help="JSON file with the key 'kdr'")
    p.add_argument("--human-cache", type=Path, default=None,
                   help="human landmark cache (default: human_landmarks_<box>/ beside the protocol)")
    _kdr_args(p)
    _common(p)
    p.set_defaults(fn=cmd_kdr)

    p = sub.add_parser("table1", help="Table 1: FID, KDR and geometry of EDTN, basis_fit, vertex_fit (+ extras)")
    _table_args(p)
    p.add_argument("--edtn", default=None, help="EDTN checkpoint (default: asset edtn_weights)")
    p.add_argument("--extra", action="append", default=[], metavar="NAME=CHECKPOINT",
                   help="another EDTN checkpoint as a row (repeatable)")
    p.add_argument("--inception", default=None, help="FID Inception weights (asset inception_fid)")
    p.add_argument("--real", type=Path, default=None, help="a prepared real set (default: made in <out>)")
    p.add_argument("--real-per-identity", type=int, default=50, help="real images per identity (default %(default)s)")
    _fid_layer_arg(p)
    p.set_defaults(fn=cmd_table1)

    p = sub.add_parser("ablation", help="loss ablation: KDR and geometry of four checkpoints")
    _table_args(p)
    for flag in ("vertex", "landmark", "vertex-landmark", "all"):
        preset = "ablation_" + flag.replace("-", "_")
        p.add_argument(f"--{flag}", required=True, help=f"checkpoint trained with experiment={preset}")
    p.set_defaults(fn=cmd_ablation)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return exit_on_user_error(PROGRAM, args.fn, args)


if __name__ == "__main__":
    sys.exit(main())
