"""Benchmark of the inference pipeline (infer.py) on CPU: time per stage and end-to-end frames/s.

Weights are the conformance kit's deterministic fills (no released weights needed): the generator
by the sine rule, the DECA encoder by the splitmix rule, EDTN by the sine rule too (speed does not
depend on the values). Driving frames are the first N frames of ``--video`` (default: the
authors' ``example.mp4`` in ../shared) when it exists, else synthetic 256² frames processed in
aligned mode (no detection). The source image is ``--source`` (default: the authors' basis.png)
or a synthetic one.

For each batch size: every stage is timed on the same N frames (median of ``--repeats`` runs after
one warm-up), then the whole pipeline (``reenact.pipeline.run``, writing an .mp4) is timed end to end.

    python scripts/bench_infer.py --frames 16 --batch-sizes 1 8 --json bench_infer.json
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_AUTHORS = REPO.parent / "shared" / "reference" / "authors"
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))  # test-only weight fills (helpers.weight_fill)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--frames", type=int, default=16, help="driving frames per run")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8], help="batch sizes to time")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per stage (median reported)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--video", type=Path, default=SHARED_AUTHORS / "example.mp4",
                   help="driving video (synthetic aligned frames when missing)")
    p.add_argument("--source", type=Path, default=SHARED_AUTHORS / "basis.png",
                   help="anime source image (synthetic when missing)")
    p.add_argument("--json", type=Path, default=Path("bench_results/bench_infer.json"),
                   help="where to write results (JSON)")
    p.add_argument("--skip-e2e", action="store_true", help="only time the stages")
    return p.parse_args(argv)


def _median_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _write_assets(folder: Path):
    from anime_generator.model import AnimeGenerator
    from deca_edit.encoder import DecaEncoder
    from edtn.model import EDTN
    from helpers.weight_fill import fill_module

    paths = {"generator": folder / "generator.pt", "deca": folder / "deca_model.tar",
             "edtn": folder / "EDTN.pt"}
    torch.save(fill_module(AnimeGenerator(), "sine").state_dict(), paths["generator"])
    torch.save({"E_flame": fill_module(DecaEncoder(), "splitmix").state_dict()}, paths["deca"])
    torch.save(fill_module(EDTN(), "sine").state_dict(), paths["edtn"])
    return paths


def _driving(folder: Path, args):
    """(driving path, aligned?, list of frames)."""
    import imageio.v3 as iio

    from reenact.video_io import open_driving

    if args.video.is_file():
        src = open_driving(args.video, args.frames)
        return args.video, False, [f for _, f in src]
    rng = np.random.default_rng(0)
    frames_dir = folder / "frames"
    frames_dir.mkdir()
    frames = []
    for i in range(args.frames):
        frame = (rng.random((256, 256, 3)) * 255).astype(np.uint8)
        iio.imwrite(frames_dir / f"{i:06d}.png", frame)
        frames.append(frame)
    return frames_dir, True, frames


def _source(folder: Path, args) -> Path:
    if args.source.is_file():
        return args.source
    import imageio.v3 as iio

    path = folder / "source.png"
    iio.imwrite(path, (np.random.default_rng(1).random((256, 256, 3)) * 255).astype(np.uint8))
    return path


def bench(args) -> dict:
    from deca_edit.crop import crop_face, make_detector
    from deca_edit.encoder import load_deca_checkpoint
    from reenact.pipeline import run
    from reenact.stages import load_source_image
    from edtn.model import load_edtn
    from reenact.pose import PoseOptions, build_pose_sequence
    from reenact.video_io import write_frames
    from anime_generator.checkpoint import load_generator
    from anime_generator.inference import prepare_for_inference

    if args.threads:
        torch.set_num_threads(args.threads)
    results = {"hardware": platform.processor() or platform.machine(), "platform": platform.platform(),
               "torch": torch.__version__, "threads": torch.get_num_threads(), "frames": args.frames,
               "repeats": args.repeats, "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        paths = _write_assets(tmp)
        driving, aligned, frames = _driving(tmp, args)
        source_path = _source(tmp, args)
        results["driving"] = str(driving)
        results["aligned"] = aligned
        detector = None if aligned else make_detector("dlib")
        encoder = load_deca_checkpoint(paths["deca"])
        edtn = load_edtn(paths["edtn"])
        generator = prepare_for_inference(load_generator(paths["generator"]))
        source = load_source_image(source_path, generator.config.image_size)
        n = len(frames)

        crops = [crop_face(f, detector)[0] for f in frames]
        crops = [c for c in crops if c is not None]
        if len(crops) < n:
            raise SystemExit(f"only {len(crops)} of {n} frames have a detected face; use --video with faces")
        stage_detect = _median_time(lambda: [crop_face(f, detector) for f in frames], args.repeats)
        crop_batch = torch.from_numpy(np.stack(crops))
        with torch.inference_mode():
            codes = encoder.encode(crop_batch)
        c156 = torch.cat([codes["shape"], codes["exp"], codes["pose"]], 1)
        edtn_in = torch.cat([codes["exp"], codes["pose"][:, 3:]], 1)
        with torch.inference_mode():
            morphs = edtn(edtn_in)
        poses = build_pose_sequence(morphs, c156[:, 150:153].clone()).float()
        anime = np.zeros((n, 256, 256, 3), np.uint8)

        for bs in args.batch_sizes:
            def run_batched(fn):
                def inner():
                    with torch.inference_mode():
                        for start in range(0, n, bs):
                            fn(start, min(n, start + bs))
                return inner

            row = {"batch_size": bs}
            row["detect_crop_s"] = stage_detect
            row["deca_encode_s"] = _median_time(
                run_batched(lambda a, b: encoder.encode(crop_batch[a:b])), args.repeats)
            row["edtn_s"] = _median_time(run_batched(lambda a, b: edtn(edtn_in[a:b])), args.repeats)
            row["pose_s"] = _median_time(
                lambda: build_pose_sequence(morphs, c156[:, 150:153].clone(),
                                            PoseOptions(smoothing="one_euro")), args.repeats)
            row["generator_s"] = _median_time(run_batched(
                lambda a, b: generator(source.expand(b - a, -1, -1, -1), poses[a:b])), args.repeats)
            row["write_mp4_s"] = _median_time(lambda: write_frames(tmp / "w.mp4", list(anime), 25.0),
                                              args.repeats)
            stage_sum = sum(v for k, v in row.items() if k.endswith("_s"))
            row["stages_frames_per_s"] = n / stage_sum
            if not args.skip_e2e:
                cfg = {"driving": str(driving), "source": str(source_path), "out": str(tmp / "e2e.mp4"),
                       "generator_path": str(paths["generator"]), "deca_path": str(paths["deca"]),
                       "edtn_path": str(paths["edtn"]), "batch_size": bs, "device": "cpu",
                       "max_frames": n, "aligned": aligned, "detector": "dlib", "progress": False}
                t0 = time.perf_counter()
                run(cfg)
                row["e2e_s"] = time.perf_counter() - t0
                row["e2e_frames_per_s"] = n / row["e2e_s"]
            results["runs"].append(row)
    return results


def print_table(results: dict) -> None:
    cols = ["batch_size", "detect_crop_s", "deca_encode_s", "edtn_s", "pose_s", "generator_s",
            "write_mp4_s", "stages_frames_per_s", "e2e_s", "e2e_frames_per_s"]
    print(f"# {results['frames']} frames, torch {results['torch']}, {results['threads']} threads, "
          f"{results['platform']}; median of {results['repeats']} (stages, seconds for all frames)")
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for row in results["runs"]:
        print("| " + " | ".join(f"{row[c]:.3g}" if isinstance(row.get(c), float) else str(row.get(c, "-"))
                                for c in cols) + " |")


def main(argv=None) -> None:
    args = parse_args(argv)
    results = bench(args)
    print_table(results)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
