"""reenact.video_io (reading / atomic writing) and reenact.render (grid, bar chart, rasteriser)."""
from __future__ import annotations

import numpy as np
import pytest

from reenact import render
from infra.image_io import read_image, to_rgb
from infra.files import OWNER_SUFFIX
from reenact.video_io import (FrameWriter, gif_frame_ms, open_driving,
                           write_frames)


def _frames(n=5, h=48, w=64):
    """Distinct frames: a moving bright square on a gradient."""
    out = []
    for i in range(n):
        f = np.zeros((h, w, 3), np.uint8)
        f[..., 0] = np.linspace(0, 255, w, dtype=np.uint8)[None]
        f[8:24, 4 + 6 * i:20 + 6 * i] = 255
        out.append(f)
    return out


def _listing(folder):
    """Names in ``folder``, without the ownership markers of our outputs (tests/test_trust.py)."""
    return sorted(p.name for p in folder.iterdir() if not p.name.endswith(OWNER_SUFFIX))


# ----------------------------------------------------------------------------- conversion
def test_to_rgb_gray_rgba_float():
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4)
    assert np.array_equal(to_rgb(gray), np.repeat(gray[..., None], 3, -1))
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[..., 3] = [[0, 255], [128, 51]]
    out = to_rgb(rgba)
    a = rgba[..., 3:].astype(np.float64) / 255
    expected = np.rint(rgba[..., :3] * a + 255 * (1 - a)).astype(np.uint8)
    assert np.array_equal(out, expected)
    assert out[0, 0].tolist() == [255, 255, 255] and out[0, 1].tolist() == [200, 0, 0]
    # rounding, not truncation: 0·0.2 + 255·0.8 = 204.0 ; 200·(128/255)+255·(127/255) = 227.4 -> 227
    assert out[1, 0, 1] == 127 and out[1, 0, 0] == 227
    assert np.array_equal(to_rgb(np.ones((2, 2, 3), np.float32)), np.full((2, 2, 3), 255, np.uint8))
    with pytest.raises(ValueError, match="channels"):
        to_rgb(np.zeros((2, 2, 5), np.uint8))


# ----------------------------------------------------------------------------- reading
def test_read_folder_sorted_gray_and_rgba(tmp_path):
    import imageio.v3 as iio

    folder = tmp_path / "frames"
    folder.mkdir()
    iio.imwrite(folder / "b.png", np.full((8, 8), 77, np.uint8))                  # grayscale
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 3] = 0
    iio.imwrite(folder / "a.png", rgba)                                          # transparent
    (folder / "notes.txt").write_text("ignored")
    src = open_driving(folder)
    assert src.kind == "folder" and src.fps is None and src.names == ["a", "b"]
    frames = [f for _, f in src]
    assert [f.shape for f in frames] == [(8, 8, 3), (8, 8, 3)]
    assert (frames[0] == 255).all() and (frames[1] == 77).all()
    assert len(open_driving(folder, max_frames=1)) == 1


def test_read_video_roundtrip_and_fps(tmp_path):
    path = write_frames(tmp_path / "clip.mp4", _frames(6), fps=12.5)
    src = open_driving(path)
    assert (src.kind, src.num_frames, src.fps) == ("video", 6, 12.5)
    frames = [f for _, f in src]
    assert len(frames) == 6 and frames[0].shape == (48, 64, 3)
    assert np.abs(frames[3].astype(int) - _frames(6)[3]).mean() < 6   # lossy codec, same picture
    assert len(list(open_driving(path, max_frames=2))) == 2


def test_unreadable_video(tmp_path):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"this is not a video" * 10)
    with pytest.raises(ValueError, match="cannot read video .*broken.mp4"):
        open_driving(bad)


def test_empty_folder_and_missing_input(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="contains no images"):
        open_driving(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="not found"):
        open_driving(tmp_path / "nothing.mp4")
    (tmp_path / "x.xyz").write_text("?")
    with pytest.raises(ValueError, match="unknown file type"):
        open_driving(tmp_path / "x.xyz")
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="cannot read image"):
        read_image(tmp_path / "bad.png")


# ----------------------------------------------------------------------------- writing
@pytest.mark.parametrize("fps", [20.0, 25.0])
def test_gif_frame_count_and_rate(tmp_path, fps):
    from PIL import Image

    path = write_frames(tmp_path / "a.gif", _frames(5), fps=fps)
    with Image.open(path) as gif:
        assert gif.n_frames == 5 and gif.size == (64, 48)
        assert gif.info["duration"] == gif_frame_ms(fps) == round(1000 / fps)
    src = open_driving(path)
    assert src.kind == "gif" and src.num_frames == 5 and src.fps == fps
    assert _listing(tmp_path) == ["a.gif"]


def test_mp4_pads_odd_sizes_to_even(tmp_path):
    path = write_frames(tmp_path / "odd.mp4", [f[:47, :63] for f in _frames(3)], fps=10)
    src = open_driving(path)
    assert src.num_frames == 3 and next(iter(src))[1].shape == (48, 64, 3)


def test_folder_output_replaces_atomically(tmp_path):
    out = tmp_path / "frames_out"
    write_frames(out, _frames(4), fps=10)
    assert _listing(out) == [f"{i:06d}.png" for i in range(4)]
    write_frames(out, _frames(2), fps=10)
    assert _listing(out) == ["000000.png", "000001.png"]
    assert _listing(tmp_path) == ["frames_out"]


def test_single_image_output(tmp_path):
    write_frames(tmp_path / "one.png", _frames(1), fps=10)
    assert read_image(tmp_path / "one.png").shape == (48, 64, 3)
    with pytest.raises(ValueError, match="single image"):
        write_frames(tmp_path / "two.png", _frames(2), fps=10)
    assert _listing(tmp_path) == ["one.png"]


@pytest.mark.parametrize("name", ["x.mp4", "x.gif", "x_frames"])
def test_failure_leaves_nothing_half_written(tmp_path, name):
    target = tmp_path / name
    with pytest.raises(RuntimeError, match="boom"):
        with FrameWriter(target, fps=10) as writer:
            for frame in _frames(2):
                writer.write(frame)
            raise RuntimeError("boom")
    assert _listing(tmp_path) == []


def test_previous_output_survives_a_failed_run(tmp_path):
    target = tmp_path / "x.mp4"
    write_frames(target, _frames(2), fps=10)
    before = target.read_bytes()
    with pytest.raises(ValueError, match="size"):
        write_frames(target, [_frames(1)[0], _frames(1)[0][:10]], fps=10)
    assert target.read_bytes() == before and _listing(tmp_path) == ["x.mp4"]


def test_output_in_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        FrameWriter(tmp_path / "no" / "such" / "out.mp4", fps=10)
    assert _listing(tmp_path) == []
    with pytest.raises(ValueError, match="unsupported suffix"):
        FrameWriter(tmp_path / "out.avi", fps=10)


# ----------------------------------------------------------------------------- render
def test_grid_shapes():
    drive = np.zeros((100, 80, 3), np.uint8)
    anime = np.full((64, 64, 3), 10, np.uint8)
    assert render.compose_grid(drive, anime).shape == (64, 128, 3)
    grid = render.compose_grid(drive, anime, morphs=np.linspace(0, 1, 17), mesh=anime)
    assert grid.shape == (64, 256, 3)
    assert np.array_equal(grid[:, 128:192], anime)            # driving | mesh | anime | chart


def _bar_columns(chart, colour_of):
    """Per column of the plot area, the number of pixels of exactly the given colours."""
    left, right, top, bottom = render.chart_area(chart.shape[0])
    area = chart[top:bottom + 1]
    mask = np.zeros(area.shape[:2], bool)
    for colour in colour_of:
        mask |= (area == np.array(colour, np.uint8)).all(-1)
    return mask.sum(0), left, right


def test_morph_chart_bar_heights():
    values = np.zeros(17)
    values[3], values[14] = 1.0, 0.5
    chart = render.morph_bar_chart(values, size=200)
    columns, left, right = _bar_columns(chart, render.GROUP_COLOURS)
    slot = (right - left) / 17
    centre = lambda i: int(left + (i + 0.5) * slot)  # noqa: E731
    full, half, empty = columns[centre(3)], columns[centre(14)], columns[centre(8)]
    assert empty == 0 and full > 0 and abs(half / full - 0.5) < 0.05
    # the 0-1 axis: full height is the plot area
    _, _, top, bottom = render.chart_area(200)
    assert abs(full - (bottom - top)) <= 1


def test_morph_chart_shows_driving_pose_and_raw_ghost():
    """Solid bars are the pose that drives the generator; raw mapping output is a lighter ghost."""
    drive, raw = np.zeros(17), np.zeros(17)
    drive[0], raw[0] = 0.25, 1.0          # e.g. relative mode lowered morph 0
    raw[5] = 0.5                          # morph 5 fired raw but not after post-processing
    chart = render.morph_bar_chart(drive, size=200, raw=raw)
    solid, left, right = _bar_columns(chart, render.GROUP_COLOURS)
    ghost, _, _ = _bar_columns(chart, [render._lighten(c) for c in render.GROUP_COLOURS])
    _, _, top, bottom = render.chart_area(200)
    slot = (right - left) / 17
    centre = lambda i: int(left + (i + 0.5) * slot)  # noqa: E731
    height = bottom - top
    assert abs(solid[centre(0)] - 0.25 * height) <= 2
    assert abs(solid[centre(0)] + ghost[centre(0)] - height) <= 2   # ghost above the solid bar
    assert solid[centre(5)] == 0 and abs(ghost[centre(5)] - 0.5 * height) <= 2
    plain = render.morph_bar_chart(drive, size=200)                 # no raw: no ghost colour
    assert _bar_columns(plain, [render._lighten(c) for c in render.GROUP_COLOURS])[0].sum() == 0


def test_rasteriser_draws_where_the_mesh_projects():
    # two triangles forming a square in the upper-left quadrant, facing the viewer
    verts = np.array([[-0.8, 0.8, 0.0], [-0.2, 0.8, 0.0], [-0.2, 0.2, 0.0], [-0.8, 0.2, 0.0]])
    faces = np.array([[0, 1, 2], [0, 2, 3]])
    img = render.render_mesh(verts, faces, cam=[1.0, 0.0, 0.0], size=100, backend="numpy")
    drawn = (img != 255).any(-1)
    # x in [-0.8,-0.2] -> columns 10..40 ; y in [0.2,0.8] (up) -> rows 10..40
    assert drawn[12:38, 12:38].all()
    assert not drawn[45:].any() and not drawn[:, 45:].any()
    assert drawn.sum() == pytest.approx(31 * 31, rel=0.1)
    # Lambert: facing the light gives the brightest shade; a tilted copy is darker
    tilted = verts.copy()
    tilted[:, 2] = tilted[:, 0] * 1.5
    img2 = render.render_mesh(tilted, faces, cam=[1.0, 0.0, 0.0], size=100, backend="numpy")
    assert img2[25, 25].mean() < img[25, 25].mean()


def test_zbuffer_keeps_the_nearest_triangle():
    near = np.array([[-0.5, 0.5, 1.0], [0.5, 0.5, 1.0], [0.0, -0.5, 1.0]])
    far = near * np.array([1.0, 1.0, -1.0])
    face_index, _, depth = render.rasterize_mesh(
        render.project_orthographic(np.concatenate([far, near]), [1, 0, 0], 64),
        np.array([[0, 1, 2], [3, 4, 5]]), 64)
    centre = face_index[32, 32]
    assert centre == 1 and depth[32, 32] == pytest.approx(1.0)
    assert face_index[0, 0] == -1
