"""Issue 10 §3: every fault ends in a clear message, never a traceback or a silent wrong result.

Corrupt / foreign / hostile checkpoints on resume (EDTN and the anime generator), packed-code index
validation and NaN rows, truncated videos, named pipes, the scripts' argument checks, Ctrl-C.
"""
from __future__ import annotations

import json
import logging
import os
import pickle
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from deca_edit.codes import CodeFileError, PackedCodes, pack_code_tree, write_packed_codes
from infra.files import atomic_save, checksum_path, checksum_problem
from infra.runtime import exit_on_user_error
from reenact.video_io import open_driving, write_frames
from helpers.hostile import SystemPayload

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def flip_a_byte(path: Path) -> None:
    """Flip one bit inside the tensor data: torch still loads the file, with a wrong weight."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


# ----------------------------------------------------------------------------- checksums
def test_checksum_sidecar_catches_truncation_and_bit_flips(tmp_path):
    path = tmp_path / "last.pt"
    atomic_save({"w": torch.arange(10_000.0)}, path, checksum=True)
    assert checksum_path(path).is_file() and checksum_problem(path) is None
    flip_a_byte(path)
    torch.load(path, map_location="cpu", weights_only=True)      # loads: only the sidecar tells
    assert "does not match" in checksum_problem(path)
    atomic_save({"w": torch.zeros(3)}, path, checksum=True)
    truncate(path)
    assert "does not match" in checksum_problem(path)
    assert checksum_problem(tmp_path / "no_sidecar.pt") is None


# ----------------------------------------------------------------------------- EDTN resume
@pytest.fixture(scope="module")
def edtn_overrides(authors_dir, synthetic_flame_path, landmark_embedding_path, tmp_path_factory):
    base = tmp_path_factory.mktemp("edtn_trust")
    files = sorted((authors_dir / "vox_deca").glob("*.mat"))
    for k, name in enumerate(("a.mp4", "b.mp4")):
        video = base / "tree" / name
        video.mkdir(parents=True)
        for f in files[k * 40:(k + 1) * 40]:
            os.symlink(f, video / f.name)
    prefix = pack_code_tree(base / "tree", base / "codes", progress=False).prefix
    (base / "train.txt").write_text("a.mp4\n")
    (base / "test.txt").write_text("b.mp4\n")
    return ["device=cpu", "data.batch_size=20", "data.eval_batch_size=40", "data.num_workers=0",
            "log.progress=false", "log.tensorboard=false", "log.figure_every=0", "checkpoint.every=1",
            f"data.train={prefix}", "data.test=null", f"data.train_list={base / 'train.txt'}",
            f"data.test_list={base / 'test.txt'}", f"loss.flame_model={synthetic_flame_path}",
            f"loss.landmark_embedding={landmark_embedding_path}",
            f"loss.basis={authors_dir / 'transform_matrix_08_30.npy'}"]


def compose_edtn(overrides):
    import edtn.config  # noqa: F401  (registers the schema)

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(REPO / "configs" / "edtn"), version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


@pytest.fixture(scope="module")
def edtn_two_epochs(edtn_overrides, tmp_path_factory) -> Path:
    """A finished 2-epoch run: last.pt, best.pt, epoch_0001.pt, epoch_0002.pt (+ sidecars)."""
    from edtn.train_loop import run

    run_dir = tmp_path_factory.mktemp("edtn_run") / "run"
    run(compose_edtn(edtn_overrides + ["epochs=2", f"run_dir={run_dir}"]))
    return run_dir


def _copy_run(run_dir: Path, dest: Path) -> Path:
    shutil.copytree(run_dir, dest, copy_function=shutil.copy2)   # keep mtimes: "newest" is by mtime
    return dest / "checkpoints"


@pytest.mark.parametrize("damage", [truncate, flip_a_byte], ids=["truncated", "bit-flipped"])
def test_edtn_resume_falls_back_to_the_newest_intact_checkpoint(damage, edtn_two_epochs, edtn_overrides,
                                                                tmp_path, caplog):
    from edtn.train_loop import run

    ckpts = _copy_run(edtn_two_epochs, tmp_path / "run")
    (ckpts / ".last.pt.zz9stale.tmp").write_bytes(b"left by kill -9")
    damage(ckpts / "last.pt")
    with caplog.at_level(logging.WARNING):
        out = run(compose_edtn(edtn_overrides + ["epochs=3", "resume=auto", f"run_dir={tmp_path / 'run'}"]))
    assert "last.pt is not usable" in caplog.text and "epoch_0002.pt instead" in caplog.text
    steps_per_epoch = 2                                          # 40 frames / batch 20
    assert out["epoch"] == 3 and out["step"] == 3 * steps_per_epoch
    assert not (ckpts / ".last.pt.zz9stale.tmp").exists()          # stale temporary removed


def test_edtn_resume_with_no_intact_checkpoint_is_one_message(edtn_two_epochs, edtn_overrides, tmp_path):
    from edtn.train_loop import run

    ckpts = _copy_run(edtn_two_epochs, tmp_path / "run")
    for path in ckpts.glob("*.pt"):
        truncate(path)
    with pytest.raises(ValueError, match="no intact checkpoint to resume from") as info:
        run(compose_edtn(edtn_overrides + ["epochs=3", "resume=auto", f"run_dir={tmp_path / 'run'}"]))
    for name in ("last.pt", "best.pt", "epoch_0001.pt", "epoch_0002.pt"):
        assert name in str(info.value)


def test_edtn_hostile_resume_checkpoint_is_refused(edtn_two_epochs, edtn_overrides, tmp_path, caplog):
    from edtn.train_loop import run

    marker = tmp_path / "PWNED"
    ckpts = _copy_run(edtn_two_epochs, tmp_path / "run")
    checksum_path(ckpts / "last.pt").unlink()
    torch.save({"format": "edtn-train-checkpoint/1", "model": SystemPayload(marker)}, ckpts / "last.pt")
    with caplog.at_level(logging.WARNING):                         # auto: skipped, says why
        run(compose_edtn(edtn_overrides + ["epochs=3", "resume=auto", f"run_dir={tmp_path / 'run'}"]))
    assert "posix.system" in caplog.text and not marker.exists()
    hostile = tmp_path / "hostile.pt"                              # explicit file: refused
    torch.save({"format": "edtn-train-checkpoint/1", "model": SystemPayload(marker)}, hostile)
    proc = subprocess.run([sys.executable, str(REPO / "train.py"), *edtn_overrides, "epochs=3",
                           f"resume={hostile}", f"run_dir={tmp_path / 'cli'}",
                           f"hydra.run.dir={tmp_path / 'hydra'}"],
                          capture_output=True, text=True, cwd=tmp_path, env=ENV, timeout=600)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "posix.system" in proc.stderr and "--trust-checkpoint" in proc.stderr
    assert "Traceback" not in proc.stderr and not marker.exists()


# ----------------------------------------------------------------------------- train_ag resume
@pytest.fixture(scope="module")
def ag_overrides(generator_kit, tmp_path_factory) -> list[str]:
    from anime_generator.perceptual import build_vgg19_features

    base = tmp_path_factory.mktemp("ag_trust")
    root = base / "tiny_dataset"
    shutil.copytree(generator_kit / "tiny_dataset", root)
    (root / "animeceleb" / "cached.json").unlink()
    vgg = base / "vgg19-dcbb9e9d.pth"
    torch.save({f"features.{k}": v for k, v in build_vgg19_features().state_dict().items()}, vgg)
    return ["experiment=smoke", "model.image_size=32", "model.warp_encoder_layers=4",
            "model.warp_decoder_layers=2", "loss.layers=[relu_1_1]", "loss.layer_weights=[1.0]",
            "loss.num_scales=1", "log.image_every=0", "train.valid_every=0", "log.tensorboard=false",
            "data.color_jitter.enabled=false", "train.max_steps_per_epoch=1", "checkpoint.every=1",
            f"loss.vgg_path={vgg}", f"data.root={root / 'animeceleb'}",
            f"data.train_list={root / 'lists' / 'train_list.txt'}"]


def compose_ag(overrides):
    import anime_generator.train_config  # noqa: F401  (registers the schema)

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(REPO / "configs" / "anime_generator"), version_base="1.3"):
        return compose(config_name="train_ag", overrides=overrides)


def test_train_ag_resume_skips_foreign_corrupt_and_hostile_files(ag_overrides, tmp_path, caplog):
    from anime_generator.checkpoint import generator_checkpoint
    from anime_generator.train_loop import run
    from anime_generator import AnimeGenerator

    run_dir = tmp_path / "run"
    run(compose_ag(ag_overrides + ["train.epochs=2", f"run_dir={run_dir}"]))
    ckpts = run_dir / "checkpoints"
    assert {p.name for p in ckpts.iterdir()} >= {"last.pt", "last.pt.sha256", "epoch_0002.pt"}
    # a foreign file as last.pt (an exported generator: no training state) used to be
    # KeyError: 'generator'-style failures; now it is skipped for epoch_0002.pt
    checksum_path(ckpts / "last.pt").unlink()
    torch.save(generator_checkpoint(AnimeGenerator()), ckpts / "last.pt")
    with caplog.at_level(logging.WARNING):
        out = run(compose_ag(ag_overrides + ["train.epochs=3", "resume=auto", f"run_dir={run_dir}"]))
    assert "without training state" in caplog.text and "epoch_0002.pt instead" in caplog.text
    assert out["step"] == 3
    # hostile last.pt, every other checkpoint truncated: refused, one message, no code run
    marker = tmp_path / "PWNED"
    checksum_path(ckpts / "last.pt").unlink()
    torch.save({"format": "edtn-generator/1", "generator": SystemPayload(marker)}, ckpts / "last.pt")
    for path in ckpts.glob("epoch_*.pt"):
        truncate(path)
    with pytest.raises(ValueError, match="no intact checkpoint") as info:
        run(compose_ag(ag_overrides + ["train.epochs=4", "resume=auto", f"run_dir={run_dir}"]))
    assert "posix.system" in str(info.value) and "epoch_0003.pt" in str(info.value)
    assert not marker.exists()


# ----------------------------------------------------------------------------- packed codes
@pytest.fixture
def packed(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    codes = lambda n: {k: rng.standard_normal((n, d)).astype(np.float32)  # noqa: E731
                       for k, d in (("shape", 100), ("exp", 50), ("pose", 6), ("cam", 3))}
    return write_packed_codes(tmp_path / "codes", [("v0", ["0", "1", "2"], codes(3)),
                                                   ("v1", ["0", "1"], codes(2))])


def _edit_index(prefix: Path, edit) -> None:
    path = prefix.with_suffix(".json")
    index = json.loads(path.read_text())
    edit(index)
    path.write_text(json.dumps(index))


@pytest.mark.parametrize("edit,message", [
    (lambda i: i["videos"][0].update(start=2), "overlaps|leaves rows"),   # silently gave 1 pose
    (lambda i: i.pop("columns"), "missing field 'columns'"),              # was KeyError
    (lambda i: i["videos"][1].update(start=4), "not inside"),
    (lambda i: i["videos"][1].update(count=3), "not inside|frame names"),
    (lambda i: i["videos"][0]["frames"].pop(), "3 but 2 frame names"),
    (lambda i: i["columns"].pop("cam"), "columns incomplete"),
    (lambda i: i["columns"].update(cam=[155, 158]), "overlaps"),
    (lambda i: i["columns"].update(exp=[100, 149]), "spans 49"),
    (lambda i: i["videos"][1].update(name="v0"), "appears twice"),
    (lambda i: i["videos"][0].update(start="0"), "must be int"),
    (lambda i: i.update(num_frames=4), "does not match"),
])
def test_packed_index_is_validated_against_the_array(packed, edit, message):
    _edit_index(packed, edit)
    with pytest.raises(CodeFileError, match=message) as info:
        PackedCodes(packed)
    assert "codes.json" in str(info.value)


def test_nan_in_packed_codes_names_file_row_and_frame(packed, authors_dir, tmp_path):
    from reenact.pipeline import run

    table = np.load(packed.with_suffix(".npy"))
    table[4, 120] = np.nan                                         # v1 frame '1', an exp value
    np.save(packed.with_suffix(".npy"), table)
    assert PackedCodes(packed).video("v0", check_finite=True).shape == (3, 159)
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(REPO / "configs")):
        cfg = compose(config_name="infer", overrides=[
            f"driving={packed}", "driving_video=v1", "render=none", "device=cpu", "progress=false",
            f"edtn_path={authors_dir / 'EDTN.pt'}", f"pose_csv={tmp_path / 'p.csv'}"])
    with pytest.raises(CodeFileError) as info:
        run(cfg)
    message = str(info.value)
    assert "codes.npy" in message and "row 4" in message and "'v1'" in message
    assert "frame '1'" in message and "'exp'" in message
    assert not (tmp_path / "p.csv").exists()


# ----------------------------------------------------------------------------- videos and pipes
@pytest.fixture(scope="module")
def truncated_video(tmp_path_factory) -> tuple[Path, int, int]:
    """An mp4 with its index at the front (faststart), cut in half: ``(path, decodable, announced)``."""
    import imageio_ffmpeg

    folder = tmp_path_factory.mktemp("video")
    full = folder / "full.mp4"
    rng = np.random.default_rng(0)
    writer = imageio_ffmpeg.write_frames(str(full), (64, 64), fps=25, codec="libx264",
                                         pix_fmt_out="yuv420p", macro_block_size=1,
                                         output_params=["-movflags", "+faststart"],
                                         ffmpeg_log_level="error")
    writer.send(None)
    for _ in range(60):
        writer.send(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    writer.close()
    cut = folder / "cut.mp4"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    decodable = open_driving(cut).num_frames
    assert 0 < decodable < 50
    return cut, decodable, 60


def test_truncated_video_warns_with_both_numbers_or_fails_when_strict(truncated_video, caplog):
    path, decodable, announced = truncated_video
    with caplog.at_level(logging.WARNING, logger="reenact.video_io"):
        source = open_driving(path)
    assert source.num_frames == decodable
    assert f"decodes to {decodable} frames" in caplog.text and f"announces {announced}" in caplog.text
    with pytest.raises(ValueError, match=f"{decodable} frames .* announces {announced}"):
        open_driving(path, strict_frames=True)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="reenact.video_io"):
        assert len(open_driving(path, max_frames=5, strict_frames=True)) == 5   # frames needed exist
    assert caplog.text == ""


def test_complete_video_does_not_warn(tmp_path, caplog):
    path = write_frames(tmp_path / "ok.mp4", [np.full((16, 16, 3), i, np.uint8) for i in range(30)], fps=25)
    with caplog.at_level(logging.WARNING, logger="reenact.video_io"):
        assert open_driving(path, strict_frames=True).num_frames == 30
    assert caplog.text == ""


def test_strict_frames_is_an_infer_option(truncated_video, authors_dir, tmp_path):
    from reenact.pipeline import run

    placeholder = tmp_path / "deca_model.tar"
    placeholder.write_text("never opened: the video is refused first")
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(REPO / "configs")):
        cfg = compose(config_name="infer", overrides=[
            f"driving={truncated_video[0]}", "render=none", "device=cpu", "strict_frames=true",
            f"edtn_path={authors_dir / 'EDTN.pt'}", f"deca_path={placeholder}"])
    with pytest.raises(ValueError, match="strict_frames=true"):
        run(cfg)


@pytest.mark.parametrize("name", ["drive.mp4", "drive.png"])
def test_named_pipe_as_driving_is_refused_at_once(name, tmp_path):
    fifo = tmp_path / name
    os.mkfifo(fifo)
    signal.signal(signal.SIGALRM, lambda *_: (_ for _ in ()).throw(TimeoutError("blocked on the pipe")))
    signal.alarm(20)
    try:
        with pytest.raises(ValueError, match="named pipe"):
            open_driving(fifo)
    finally:
        signal.alarm(0)


def test_named_pipe_as_source_is_refused(authors_dir, tmp_path):
    from reenact.pipeline import run

    fifo = tmp_path / "character.png"
    os.mkfifo(fifo)
    codes = tmp_path / "codes"
    codes.mkdir()
    shutil.copy(sorted((authors_dir / "vox_deca").glob("*.mat"))[0], codes)
    placeholder = tmp_path / "generator.ckpt"
    placeholder.write_text("never opened")
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(REPO / "configs")):
        cfg = compose(config_name="infer", overrides=[
            f"driving={codes}", f"source={fifo}", f"out={tmp_path / 'a.mp4'}", "device=cpu",
            f"edtn_path={authors_dir / 'EDTN.pt'}", f"generator_path={placeholder}"])
    with pytest.raises(ValueError, match="source image .* is a named pipe"):
        run(cfg)


# ----------------------------------------------------------------------------- scripts
def _script(*args, timeout=300):
    return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True,
                          env=ENV, timeout=timeout)


@pytest.mark.parametrize("case", ["missing", "empty", "bad columns", "columns order"])
def test_pack_deca_codes_user_errors_are_one_line(case, authors_dir, tmp_path):
    (tmp_path / "empty").mkdir()
    source = {"missing": tmp_path / "nope", "empty": tmp_path / "empty"}.get(case, authors_dir / "vox_deca")
    columns = {"bad columns": ["shape", "exp", "pose", "colour"],
               "columns order": ["exp", "shape", "pose"]}.get(case, [])
    proc = _script(REPO / "scripts" / "pack_deca_codes.py", source, tmp_path / "out", "--no-progress",
                   *(["--columns", *columns] if columns else []))
    assert proc.returncode in (1, 2) and "error:" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert {"missing": "does not exist", "empty": "no .mat files", "bad columns": "colour",
            "columns order": "must start with"}[case] in proc.stderr
    assert not (tmp_path / "out.npy").exists()


@pytest.mark.parametrize("args,message", [
    (["--max-frames", "0"], "--max-frames: must be a whole number >= 1"),
    (["--max-frames", "-1"], "--max-frames: must be a whole number >= 1"),
    (["--scale", "-1"], "--scale: must be a number > 0"),
    (["--out", "FILE"], "is an existing file"),
])
def test_extract_deca_rejects_bad_arguments(args, message, tmp_path):
    existing = tmp_path / "codes.txt"
    existing.write_text("mine")
    args = [str(existing) if a == "FILE" else a for a in args]
    if "--out" not in args:
        args += ["--out", str(tmp_path / "out")]
    proc = _script(REPO / "scripts" / "extract_deca.py", tmp_path / "clip.mp4", *args)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and existing.read_text() == "mine"


# ----------------------------------------------------------------------------- Ctrl-C
def test_ctrl_c_prints_one_line_and_leaves_nothing_half_written(tmp_path):
    target = tmp_path / "result.npy"
    code = textwrap.dedent("""
        import sys, time
        from infra.files import atomic_path
        from infra.runtime import exit_on_user_error

        def work():
            with atomic_path(sys.argv[1]) as tmp:
                tmp.write_bytes(b"half")
                print("writing", flush=True)
                time.sleep(120)

        exit_on_user_error("demo.py", work)
        """)
    proc = subprocess.Popen([sys.executable, "-c", code, str(target)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=ENV)
    assert proc.stdout.readline().strip() == "writing"
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "demo.py: interrupted" in stderr and "Traceback" not in stderr, \
        (proc.returncode, stderr)
    assert list(tmp_path.iterdir()) == [], stderr                  # neither result nor temporary


def test_exit_on_user_error_formats(capsys):
    def interrupted():
        raise KeyboardInterrupt

    with pytest.raises(SystemExit) as info:
        exit_on_user_error("x.py", interrupted)
    assert info.value.code == 130 and "x.py: interrupted" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        exit_on_user_error("x.py", lambda: (_ for _ in ()).throw(ValueError("bad value")))
    assert info.value.code == 1 and capsys.readouterr().err == "x.py: error: bad value\n"


def test_pickle_helper_sanity(tmp_path):
    """The payload used above really runs code under a plain unpickle (so refusals mean something)."""
    marker = tmp_path / "RAN"
    pickle.loads(pickle.dumps(SystemPayload(marker)))
    assert marker.exists()
