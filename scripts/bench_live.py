"""Benchmark of live mode (the demo's Live tab): frames/s of ``Reenactor.step`` on a stream of frames.

Weights are the stand-in kit's (scripts/make_standin_assets.py; speed does not depend on the
values): ``--assets`` names an existing kit, else one is made in a temporary folder from DECA's
public template files (``../shared/reference/deca`` when present, else downloaded). Frames are the
first ``--frames`` of ``--video`` (default: the authors' example.mp4), fed one at a time as a
webcam would. For each generator resolution the table gives the achieved frames/s (from the
median time of one ``step``; the mean over the stream is in the JSON), and as the
ceiling the rate the same stages reach when each is timed alone on the same frames (face crop +
DECA, mapping, pose filter, generator; medians), so ``ratio`` shows what the per-frame loop loses;
``of 30 fps`` compares with a webcam.

    python scripts/bench_live.py --frames 20 --sizes 256 64 --json bench_results/bench_live.json
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

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "reference"
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

WEBCAM_FPS = 30.0
WARMUP_FRAMES = 2


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--frames", type=int, default=20, help="frames streamed per resolution")
    p.add_argument("--sizes", type=int, nargs="+", default=[256, 64], help="generator resolutions")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    p.add_argument("--assets", type=Path, default=None, help="stand-in (or real) asset folder")
    p.add_argument("--video", type=Path, default=SHARED / "authors" / "example.mp4", help="driving video")
    p.add_argument("--source", type=Path, default=SHARED / "authors" / "basis.png", help="anime source image")
    p.add_argument("--json", type=Path, default=Path("bench_results/bench_live.json"), help="results (JSON)")
    return p.parse_args(argv)


def _median(fn, items) -> float:
    times = []
    for item in items:
        t0 = time.perf_counter()
        fn(item)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_size(size: int, assets: Path, gen_dir: Path, frames, args) -> dict:
    from infra.files import atomic_save
    from reenact.driving import CODE156_GLOBAL
    from reenact.reenactor import Reenactor
    from reenact.standin import standin_generator_checkpoint

    gen_path = gen_dir / f"generator_{size}.ckpt"
    if not gen_path.exists():
        atomic_save(standin_generator_checkpoint("default", size), gen_path)
    import os

    os.environ["EDTN_HOME"] = str(assets)
    reenactor = Reenactor.from_config({"source": str(args.source), "device": args.device,
                                       "generator_path": str(gen_path)})
    for frame in frames[:WARMUP_FRAMES]:
        reenactor.step(frame)
    reenactor.reset()

    def step(frame):
        reenactor.step(frame)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    t0 = time.perf_counter()
    t_step = _median(step, frames)
    total = time.perf_counter() - t0
    # the same stages, each alone
    encoded = [reenactor.encoder.encode_frame(f) for f in frames]
    codes = [e[0][None] for e in encoded if e is not None]
    t_encode = _median(reenactor.encoder.encode_frame, frames)
    t_map = _median(reenactor.mapper, codes)
    morphs = [reenactor.mapper(c) for c in codes]
    t_pose = _median(lambda mc: reenactor.filter.step(mc[0], torch.from_numpy(mc[1][:, CODE156_GLOBAL].copy())),
                     list(zip(morphs, codes)))
    poses = torch.zeros(1, 20)
    t_gen = _median(lambda _: reenactor.renderer.render(poses), range(len(frames)))
    stage_sum = t_encode + t_map + t_pose + t_gen
    fps = 1.0 / t_step
    return {"size": size, "frames": len(frames), "faces": len(codes), "fps": fps, "ms_per_frame": 1000 * t_step,
            "fps_mean": len(frames) / total,
            "ceiling_fps": 1.0 / stage_sum, "ratio": fps * stage_sum, "encode_ms": 1000 * t_encode,
            "mapping_ms": 1000 * t_map, "pose_ms": 1000 * t_pose, "generator_ms": 1000 * t_gen,
            "of_webcam": fps / WEBCAM_FPS}


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from reenact.standin import make_standin_kit
    from reenact.video_io import open_driving

    frames = [f for _, f in open_driving(args.video, args.frames)]
    with tempfile.TemporaryDirectory(prefix="bench_live_") as tmp:
        tmp = Path(tmp)
        assets = args.assets
        if assets is None:
            assets = tmp / "assets"
            deca = SHARED / "deca"
            have = (deca / "head_template.obj").is_file()
            make_standin_kit(assets, deca / "head_template.obj" if have else None,
                             deca / "landmark_embedding.npy" if have else None, progress=False)
        rows = [bench_size(size, assets, tmp, frames, args) for size in args.sizes]
    header = (f"{'size':>5} {'live fps':>9} {'ms/frame':>9} {'ceiling fps':>12} {'ratio':>6} "
              f"{'encode ms':>10} {'map ms':>7} {'pose ms':>8} {'gen ms':>8} {'of 30 fps':>10}")
    print(f"live mode, {args.device}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{platform.processor() or platform.machine()}")
    print(header)
    for r in rows:
        print(f"{r['size']:>5} {r['fps']:>9.2f} {r['ms_per_frame']:>9.0f} {r['ceiling_fps']:>12.2f} {r['ratio']:>6.2f} "
              f"{r['encode_ms']:>10.0f} {r['mapping_ms']:>7.1f} {r['pose_ms']:>8.2f} {r['generator_ms']:>8.0f} "
              f"{r['of_webcam']:>10.3f}")
    result = {"device": args.device, "threads": torch.get_num_threads(), "torch": torch.__version__,
              "machine": platform.machine(), "processor": platform.processor(), "rows": rows}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
