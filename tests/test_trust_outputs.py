"""Issue 10 §2: outputs never destroy inputs or data this program did not write.

* an output that is an input (the driving video, the source image, packed codes; through links
  too) or lies inside one is refused before any work, and the inputs stay byte-identical;
* an existing output is replaced only when our ownership marker says we wrote it, or with
  ``overwrite=true``; a folder output never deletes files it did not write;
* outputs respect the umask; temporaries of killed writes are removed by the next write, never
  while their writer lives; a second concurrent writer fails fast naming the holder's pid.

Infer-level cases go through ``reenact.pipeline.run(cfg)`` or the ``infer.py`` CLI. Their model
files are placeholders that are never opened: each case must stop before any work, and a
placeholder that were opened would fail with a different message.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from infra.files import (OWNER_SUFFIX, OutputBusyError, atomic_path, atomic_save,
                         check_outputs_distinct, clean_stale_temps, lock_path_for, output_lock,
                         read_output_marker)
from reenact.pipeline import run
from reenact.video_io import FrameWriter, write_frames

REPO = Path(__file__).resolve().parents[1]
NOT_OURS = "was not written by this program"


# ----------------------------------------------------------------------------- helpers
def make_cfg(**overrides):
    values = {"device": "cpu", "progress": False, **overrides}
    args = [f"{k}={'null' if v is None else v}" for k, v in values.items()]
    with initialize_config_dir(version_base="1.3", config_dir=str(REPO / "configs"), job_name="trust"):
        return compose(config_name="infer", overrides=args)


def digests(*paths: Path) -> dict[str, str]:
    """sha256 of every file under ``paths`` (files or folders), by path."""
    out = {}
    for path in paths:
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in files:
            out[str(file)] = hashlib.sha256(file.read_bytes()).hexdigest()
    return out


def frames(n: int = 3, size: int = 16) -> list[np.ndarray]:
    return [np.full((size, size, 3), 40 * i, np.uint8) for i in range(n)]


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def spawn_holder(code: str, *args: str) -> subprocess.Popen:
    """A child python that runs ``code``, prints 'ready' and waits to be killed."""
    script = textwrap.dedent(code) + "\nprint('ready', flush=True)\nimport time\ntime.sleep(300)\n"
    proc = subprocess.Popen([sys.executable, "-c", script, *args], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.stdout.readline().strip() == "ready"
    return proc


def hold_lock(path: Path) -> subprocess.Popen:
    """A child process holding the output lock of ``path`` until it is killed."""
    return spawn_holder("""
        import sys
        from infra.files import output_lock
        held = output_lock(sys.argv[1])
        held.__enter__()
        """, str(path))


@pytest.fixture(scope="module")
def inputs(authors_dir, tmp_path_factory) -> dict[str, Path]:
    """Copies of the user's inputs, and placeholder model files that must never be opened."""
    base = tmp_path_factory.mktemp("inputs")
    codes = base / "codes"
    codes.mkdir()
    for f in sorted((authors_dir / "vox_deca").glob("*.mat"))[:2]:
        shutil.copy(f, codes / f.name)
    shutil.copy(authors_dir / "example.mp4", base / "selfie.mp4")
    shutil.copy(authors_dir / "basis.png", base / "character.png")
    for name in ("generator.ckpt", "deca_model.tar"):
        (base / name).write_text("placeholder, never opened\n")
    return {"codes": codes, "video": base / "selfie.mp4", "source": base / "character.png",
            "generator": base / "generator.ckpt", "deca": base / "deca_model.tar",
            "edtn": authors_dir / "EDTN.pt"}


def infer_kw(inputs, **kw):
    base = dict(driving=inputs["codes"], source=inputs["source"], generator_path=inputs["generator"],
                deca_path=inputs["deca"], edtn_path=inputs["edtn"])
    return {**base, **kw}


# ----------------------------------------------------------------------------- outputs vs inputs
def test_out_folder_of_user_images_is_refused_before_any_work(inputs, tmp_path):
    import imageio.v3 as iio

    photos = tmp_path / "myphotos"
    photos.mkdir()
    for i in range(4):
        iio.imwrite(photos / f"IMG_{i:04d}.png", frames(1, 8 + i)[0])
    before = digests(photos, inputs["source"])
    with pytest.raises(ValueError, match=NOT_OURS) as info:
        run(make_cfg(**infer_kw(inputs, out=photos)))
    assert "overwrite=true" in str(info.value) and str(photos) in str(info.value)
    assert digests(photos, inputs["source"]) == before
    assert listing(photos) == [f"IMG_{i:04d}.png" for i in range(4)]


@pytest.mark.parametrize("how", ["same path", "symlink", "hard link", "dot-dot"])
def test_out_equal_to_the_driving_video_is_refused(how, inputs, tmp_path):
    video = tmp_path / "selfout.mp4"
    shutil.copy(inputs["video"], video)
    out = {"same path": video, "symlink": tmp_path / "link.mp4", "hard link": tmp_path / "hard.mp4",
           "dot-dot": tmp_path / "sub" / ".." / "selfout.mp4"}[how]
    if how == "symlink":
        out.symlink_to(video)
    elif how == "hard link":
        os.link(video, out)
    elif how == "dot-dot":
        (tmp_path / "sub").mkdir()
    before = digests(video)
    with pytest.raises(ValueError, match="would overwrite the input driving"):
        run(make_cfg(**infer_kw(inputs, driving=video, out=out, overwrite=True)))
    assert digests(video) == before


def test_out_equal_to_the_source_image_or_inside_an_input_folder_is_refused(inputs, tmp_path):
    source = tmp_path / "character.png"
    shutil.copy(inputs["source"], source)
    before = digests(source, inputs["codes"])
    with pytest.raises(ValueError, match="would overwrite the input source"):
        run(make_cfg(**infer_kw(inputs, source=source, out=source, overwrite=True)))
    with pytest.raises(ValueError, match="would overwrite the input driving"):
        run(make_cfg(**infer_kw(inputs, out=inputs["codes"] / "anime.mp4")))
    assert digests(source, inputs["codes"]) == before


def test_pose_export_onto_packed_codes_is_refused(inputs, tmp_path):
    from deca_edit.codes import pack_code_tree

    prefix = pack_code_tree(inputs["codes"], tmp_path / "packed", progress=False).prefix
    before = digests(tmp_path)
    with pytest.raises(ValueError, match="pose_npy=.* would overwrite the input driving"):
        run(make_cfg(driving=prefix, render="none", edtn_path=inputs["edtn"],
                     pose_npy=f"{prefix}.npy", overwrite=True))
    assert digests(tmp_path) == before


def test_cli_out_equal_to_driving_is_one_message(inputs, tmp_path):
    video = tmp_path / "selfout.mp4"
    shutil.copy(inputs["video"], video)
    before = digests(video)
    proc = subprocess.run(
        [sys.executable, str(REPO / "infer.py"), f"driving={video}", f"out={video}",
         f"source={inputs['source']}", f"generator_path={inputs['generator']}",
         f"deca_path={inputs['deca']}", f"edtn_path={inputs['edtn']}", "device=cpu"],
        capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 1 and "would overwrite the input driving" in proc.stderr
    assert "Traceback" not in proc.stderr and digests(video) == before


def test_check_outputs_distinct_rules(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.png").write_bytes(b"x")
    check_outputs_distinct({"out": tmp_path / "b.mp4"}, {"driving": tmp_path / "in", "source": None})
    with pytest.raises(ValueError, match="contains the input"):
        check_outputs_distinct({"out": tmp_path}, {"driving": tmp_path / "in" / "a.png"})
    with pytest.raises(ValueError, match="overlap"):
        check_outputs_distinct({"out": tmp_path / "o", "pose_npy": tmp_path / "o" / "p.npy"}, {})


# ----------------------------------------------------------------------------- ownership
def test_folder_output_never_deletes_files_it_did_not_write(tmp_path):
    import imageio.v3 as iio

    out = tmp_path / "frames"
    write_frames(out, frames(4), fps=10)
    assert listing(out) == [f"{i:06d}.png" for i in range(4)]
    assert read_output_marker(out)["kind"] == "folder"
    (out / "notes.txt").write_text("mine")                       # the user adds a file
    write_frames(out, frames(2), fps=10)                          # ours: replaced, notes kept
    assert listing(out) == ["000000.png", "000001.png", "notes.txt"]
    assert (out / "notes.txt").read_text() == "mine"

    user = tmp_path / "album"
    user.mkdir()
    iio.imwrite(user / "000000.png", frames(1)[0])
    iio.imwrite(user / "holiday.png", frames(1)[0])
    before = digests(user)
    with pytest.raises(ValueError, match=NOT_OURS):
        FrameWriter(user, fps=10)
    assert digests(user) == before
    write_frames(user, frames(2), fps=10, overwrite=True)         # overwrite: same names replaced,
    assert listing(user) == ["000000.png", "000001.png", "holiday.png"]  # nothing else deleted
    assert digests(user)[str(user / "holiday.png")] == before[str(user / "holiday.png")]


def test_file_output_replaced_only_when_ours_or_overwrite(tmp_path):
    out = tmp_path / "clip.gif"
    write_frames(out, frames(2), fps=10)
    marker = out.with_name(f".clip.gif{OWNER_SUFFIX}")
    assert marker.is_file() and read_output_marker(out)["kind"] == "file"
    write_frames(out, frames(3), fps=10)                          # ours: replaced
    os.utime(out, ns=(1, 1))                                      # the user touched / edited it
    with pytest.raises(ValueError, match=NOT_OURS):
        write_frames(out, frames(2), fps=10)
    user_video = tmp_path / "holiday.mp4"
    user_video.write_bytes(b"the user's video")
    with pytest.raises(ValueError, match=NOT_OURS):
        FrameWriter(user_video, fps=10)
    assert user_video.read_bytes() == b"the user's video"
    write_frames(user_video, frames(2), fps=10, overwrite=True)
    assert user_video.stat().st_size > 100 and read_output_marker(user_video) is not None


def test_pose_exports_get_markers_and_a_rerun_replaces_them(inputs, tmp_path):
    kw = dict(driving=inputs["codes"], render="none", edtn_path=inputs["edtn"],
              pose_csv=tmp_path / "p.csv", pose_npy=tmp_path / "p.npy")
    run(make_cfg(**kw))
    assert read_output_marker(tmp_path / "p.csv") and read_output_marker(tmp_path / "p.npy")
    run(make_cfg(**kw))                                           # ours: no overwrite needed
    (tmp_path / "q.csv").write_text("user table\n")
    with pytest.raises(ValueError, match=NOT_OURS):
        run(make_cfg(**{**kw, "pose_csv": tmp_path / "q.csv"}))
    assert (tmp_path / "q.csv").read_text() == "user table\n"


# ----------------------------------------------------------------------------- modes
@pytest.mark.parametrize("umask,file_mode,dir_mode", [(0o022, 0o644, 0o755), (0o027, 0o640, 0o750)])
def test_outputs_respect_the_umask(umask, file_mode, dir_mode, tmp_path):
    from deca_edit.codes import write_packed_codes

    old = os.umask(umask)
    try:
        for name in ("a.mp4", "a.gif", "a.png", "frames"):
            write_frames(tmp_path / name, frames(1 if name == "a.png" else 2), fps=10)
        atomic_save({"x": torch.zeros(2)}, tmp_path / "ckpt.pt", checksum=True)
        codes = {"shape": np.zeros((1, 100)), "exp": np.zeros((1, 50)), "pose": np.zeros((1, 6)),
                 "cam": np.zeros((1, 3))}
        write_packed_codes(tmp_path / "codes", [("v", ["0"], codes)])
    finally:
        os.umask(old)
    for path in tmp_path.rglob("*"):
        mode = path.stat().st_mode & 0o777
        assert mode == (dir_mode if path.is_dir() else file_mode), (path.name, oct(mode))
    assert sum(1 for _ in tmp_path.rglob("*")) >= 14   # outputs, frames, markers, sidecar


# ----------------------------------------------------------------------------- temporaries
def test_killed_write_leaves_a_temp_the_next_write_removes(tmp_path):
    target = tmp_path / "poses.npy"
    holder = spawn_holder("""
        import sys
        from infra.files import atomic_path
        ctx = atomic_path(sys.argv[1])
        ctx.__enter__().write_bytes(b"half")
        """, str(target))
    try:
        temps = [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
        assert len(temps) == 1
        assert clean_stale_temps(target) == [] and temps[0].exists()   # its writer is alive
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert temps[0].exists()                                       # kill -9 left it behind
    with atomic_path(target) as tmp:                               # the next write of the target
        tmp.write_bytes(b"complete")
    assert listing(tmp_path) == ["poses.npy"] and target.read_bytes() == b"complete"


def test_stale_frame_folder_temp_is_removed_by_the_next_write(tmp_path):
    stale = tmp_path / ".frames.abc12345.tmp"
    stale.mkdir()
    (stale / "000000.png").write_bytes(b"half")
    write_frames(tmp_path / "frames", frames(2), fps=10)
    assert not stale.exists()


# ----------------------------------------------------------------------------- concurrency
def test_second_writer_of_an_output_fails_fast_naming_the_holder(tmp_path):
    out = tmp_path / "anime.mp4"
    holder = hold_lock(out)
    try:
        with pytest.raises(OutputBusyError, match=f"pid {holder.pid}") as info:
            with FrameWriter(out, fps=10) as writer:
                writer.write(frames(1)[0])
        assert str(out) in str(info.value)
    finally:
        holder.kill()
        holder.wait()
    assert not out.exists()
    write_frames(out, frames(2), fps=10)                           # the holder died: lock is free
    assert out.is_file() and not lock_path_for(out).exists()


def test_lock_is_reentrant_in_one_process_and_removed_after(tmp_path):
    out = tmp_path / "x.gif"
    with output_lock(out):
        write_frames(out, frames(2), fps=10)                       # FrameWriter locks it again
        assert lock_path_for(out).exists()
    assert not lock_path_for(out).exists()


def test_two_concurrent_infer_runs_the_second_fails_fast(inputs, authors_dir, tmp_path):
    """Two ``infer.py`` runs on one output: the second exits 1 at once naming the first's pid.

    The first run renders 200 frames, far longer than the second needs to start, so the race is
    decided on any machine load; it is then interrupted (Ctrl-C), which leaves neither an output
    nor a temporary file behind."""
    from anime_generator import AnimeGenerator

    generator = tmp_path / "generator.pt"
    torch.save(AnimeGenerator().state_dict(), generator)
    out = tmp_path / "anime.gif"
    cmd = [sys.executable, str(REPO / "infer.py"), f"driving={authors_dir / 'vox_deca'}", "max_frames=200",
           f"out={out}", f"source={inputs['source']}", f"generator_path={generator}",
           f"edtn_path={inputs['edtn']}", "device=cpu", "progress=false", "batch_size=1"]
    first = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lock = lock_path_for(out)
        deadline = time.monotonic() + 240
        while not lock.exists() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert lock.exists(), "the first run never took the output lock"
        second = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert first.poll() is None, "the first run ended before the second one started"
        assert second.returncode == 1 and f"pid {first.pid}" in second.stderr, second.stderr[-2000:]
        assert "Traceback" not in second.stderr
    finally:
        first.send_signal(signal.SIGINT)
        _, stderr = first.communicate(timeout=120)
    assert first.returncode == 130 and "interrupted" in stderr, stderr[-2000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["generator.pt"]   # nothing half-written


def test_second_training_run_on_a_run_dir_fails_fast(tmp_path):
    from hydra.core.global_hydra import GlobalHydra

    import edtn.config  # noqa: F401  (registers the schema)
    from edtn.train_loop import run as train_edtn

    run_dir = tmp_path / "run"
    holder = hold_lock(run_dir)
    try:
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(REPO / "configs" / "edtn"), version_base="1.3"):
            cfg = compose(config_name="train", overrides=["device=cpu", "data.train=nowhere",
                                                          f"run_dir={run_dir}"])
        with pytest.raises(OutputBusyError, match=f"pid {holder.pid}"):
            train_edtn(cfg)
    finally:
        holder.kill()
        holder.wait()
