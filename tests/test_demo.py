"""The web demo on the stand-in asset kit: in a real headless Chromium (Video tab: upload, run, the
output video decodes to the expected frame count; Live tab: Chromium's fake camera streams frames
and anime frames come back, counted by the server), through ``gradio_client`` (outputs, readable
errors with the CLI's text, upload limit), and the server's address and temp-file clean-up.

Screenshots are written under each test's tmp dir (CI artifacts); set ``DEMO_SCREENSHOT_DIR`` to
also copy them there (how ``docs/demo_video_tab.png`` was made).
"""
from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from helpers.browser import DemoServer, chromium, click_button, demo_env, find_browser, make_y4m
from infra.standin import STANDIN_WARNING

REPO = Path(__file__).resolve().parents[1]
UPLOAD_LIMIT_MB = 3          # the test server's --max-upload-mb (example.mp4 is 0.85 MB)
VIDEO_FRAMES = 5             # frames rendered in the browser's Video-tab run
API_FRAMES = 3
LIVE_FRAMES = 3              # anime frames the Live tab must get back
LIVE_TIMEOUT_S = 240
RUN_TIMEOUT_S = 300
FAKE_CAMERA_S = 4            # length of the looping fake-camera clip


@pytest.fixture(scope="module")
def server(standin_kit, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("demo_server")
    (tmp / "tmp").mkdir()
    srv = DemoServer(["--device", "cpu", "--max-upload-mb", str(UPLOAD_LIMIT_MB)],
                     demo_env(standin_kit, tmp / "tmp"), tmp / "server.log")
    srv.tmpdir = tmp / "tmp"
    yield srv
    srv.stop()


def _screenshot(web, path: Path) -> Path:
    """Full-page screenshot (the window grows to the page height), also copied to DEMO_SCREENSHOT_DIR."""
    height = web.execute_script("return document.documentElement.scrollHeight")
    web.set_window_size(1400, max(1000, int(height)))
    web.execute_script("window.scrollTo(0, 0)")
    time.sleep(1.0)
    web.save_screenshot(str(path))
    extra = os.environ.get("DEMO_SCREENSHOT_DIR")
    if extra:
        Path(extra).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(extra) / path.name)
    return path


def _frames(path: Path) -> int:
    import imageio.v3 as iio

    return sum(1 for _ in iio.imiter(path))


def _wait_for(predicate, timeout: float, what: str, poll: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def _client(server, tmp_path):
    from gradio_client import Client

    return Client(server.url, verbose=False, download_files=str(tmp_path / "downloads"))


def _cli_error(args: list[str], home: Path, cwd: Path) -> str:
    """The message infer.py prints after 'infer.py: error: '."""
    env = {**os.environ, "EDTN_HOME": str(home), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(REPO / "infer.py"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1, proc.stderr
    line = next(ln for ln in proc.stderr.splitlines() if ln.startswith("infer.py: error: "))
    return line[len("infer.py: error: "):]


def _close_toasts(web, text: str) -> None:
    """Dismiss the notices that say ``text`` (other notices stay, and fail the test)."""
    from selenium.webdriver.common.by import By

    for toast in web.find_elements(By.CSS_SELECTOR, ".toast-body"):
        if toast.is_displayed() and text in toast.text:
            for close in toast.find_elements(By.CSS_SELECTOR, ".toast-close, button"):
                if close.is_displayed():
                    close.click()
                    break


def _paths_out(text: str) -> str:
    return re.sub(r"/\S+", "<path>", text)


# ----------------------------------------------------------------------------- browser
def test_video_tab_in_browser(server, authors_dir, tmp_path):
    from selenium.webdriver.common.by import By

    find_browser()
    with chromium() as web:
        web.get(server.url)
        _wait_for(lambda: web.find_elements(By.CSS_SELECTOR, "#driving input[type=file]"), 60, "the page")
        assert STANDIN_WARNING in web.find_element(By.ID, "standin-warning").text
        web.find_element(By.CSS_SELECTOR, "#driving input[type=file]").send_keys(str(authors_dir / "example.mp4"))
        web.find_element(By.CSS_SELECTOR, "#source input[type=file]").send_keys(str(authors_dir / "basis.png"))
        frames = web.find_element(By.CSS_SELECTOR, "#video-max-frames input")
        frames.clear()
        frames.send_keys(str(VIDEO_FRAMES))
        _wait_for(lambda: web.find_elements(By.CSS_SELECTOR, "#source img"), 30, "the source preview")

        def playable_preview():   # example.mp4 (MPEG-4 part 2) is replaced by an H.264 copy
            return web.execute_script("const v = document.querySelector('#driving video');"
                                      "return v !== null && v.readyState >= 1 && v.videoWidth > 0;")

        _wait_for(playable_preview, 60, "the driving video's playable preview")
        _close_toasts(web, "Video not playable")   # the browser's verdict on the original, before the copy
        click_button(web, "Run")

        def video_url():
            found = web.find_elements(By.CSS_SELECTOR, "#anime video")
            return found[0].get_attribute("src") if found else None

        url = _wait_for(video_url, RUN_TIMEOUT_S, "the output video")
        out = tmp_path / "anime.mp4"
        with urllib.request.urlopen(url, timeout=30) as response:
            out.write_bytes(response.read())
        assert _frames(out) == VIDEO_FRAMES
        status = web.find_element(By.ID, "status").text
        assert f"{VIDEO_FRAMES} frames" in status and STANDIN_WARNING in status
        assert web.find_elements(By.CSS_SELECTOR, "#grid video") and web.find_elements(By.CSS_SELECTOR, "#pose-plot img")
        errors = [e.text for e in web.find_elements(By.CSS_SELECTOR, ".toast-body") if e.is_displayed()]
        shot = _screenshot(web, tmp_path / "demo_video_tab.png")
    assert shot.stat().st_size > 50_000
    assert not errors, errors


def test_live_tab_streams_fake_camera_frames(server, authors_dir, tmp_path):
    from selenium.webdriver.common.by import By

    find_browser()
    clip = make_y4m(authors_dir / "example.mp4", tmp_path / "camera.y4m", FAKE_CAMERA_S)
    client = _client(server, tmp_path)
    before = client.predict(api_name="/stats")["live_frames"]
    with chromium(fake_camera=clip) as web:
        web.get(server.url)
        click_button(web, "Live", timeout=60)
        _wait_for(lambda: web.find_elements(By.CSS_SELECTOR, "#live-source input[type=file]"), 30, "the Live tab")
        web.find_element(By.CSS_SELECTOR, "#live-source input[type=file]").send_keys(str(authors_dir / "basis.png"))
        _wait_for(lambda: web.find_elements(By.CSS_SELECTOR, "#live-source img"), 30, "the source preview")
        click_button(web, "Click to Access Webcam")
        click_button(web, "Record")
        start = time.monotonic()
        _wait_for(lambda: client.predict(api_name="/stats")["live_frames"] - before >= LIVE_FRAMES,
                  LIVE_TIMEOUT_S, f"{LIVE_FRAMES} anime frames on the server's counter", poll=2.0)
        elapsed = time.monotonic() - start
        _wait_for(lambda: web.find_elements(By.CSS_SELECTOR, "#live-anime img"), 30, "an anime frame in the page")
        stats = web.find_element(By.ID, "live-stats").text
        _screenshot(web, tmp_path / "demo_live_tab.png")
    assert "frames/s" in stats and "CPU" in stats
    print(f"\nlive: {LIVE_FRAMES} frames in {elapsed:.1f} s after Record; UI: {stats}")


# ----------------------------------------------------------------------------- API
def test_api_run_video_outputs(server, authors_dir, tmp_path):
    from gradio_client import handle_file

    client = _client(server, tmp_path)
    anime, grid, side, plot, csv, summary = client.predict(
        driving_video=handle_file(str(authors_dir / "example.mp4")),
        source_image=handle_file(str(authors_dir / "basis.png")),
        relative=True, smoothing__method="ema", max_frames=API_FRAMES, fps=10, api_name="/run_video")
    assert _frames(Path(anime)) == API_FRAMES and _frames(Path(grid)) == API_FRAMES
    assert side is None
    table = pd.read_csv(csv)
    assert len(table) == API_FRAMES and np.abs(table.iloc[0, 1:].to_numpy()).max() == 0.0   # relative
    assert Path(plot).stat().st_size > 10_000
    assert f"{API_FRAMES} frames at 10 fps" in summary and STANDIN_WARNING in summary
    assert client.predict(api_name="/stats")["video_runs"] >= 1


def test_api_errors_are_the_cli_messages(server, standin_kit, authors_dir, tmp_path):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    from reenact.video_io import FrameWriter

    client = _client(server, tmp_path)
    faceless = tmp_path / "grey.mp4"
    with FrameWriter(faceless, 10) as writer:
        for _ in range(3):
            writer.write(np.full((64, 64, 3), 128, np.uint8))
    broken = tmp_path / "broken.mp4"
    broken.write_text("not a video")
    for driving in (faceless, broken):
        with pytest.raises(AppError) as info:
            client.predict(driving_video=handle_file(str(driving)), source_image=handle_file(str(authors_dir / "basis.png")),
                           api_name="/run_video")
        cli = _cli_error([f"driving={driving}", f"source={authors_dir / 'basis.png'}", f"out={tmp_path / 'x.mp4'}",
                          "device=cpu"], standin_kit, tmp_path)
        ui = str(info.value)
        assert _paths_out(ui) == _paths_out(cli) and driving.name in ui and "Traceback" not in ui
    # uploads over the limit are refused
    big = tmp_path / "big.mp4"
    big.write_bytes(b"\0" * int((UPLOAD_LIMIT_MB + 1) * 2**20))
    with pytest.raises(Exception, match="maximum file size"):
        client.predict(driving_video=handle_file(str(big)), source_image=handle_file(str(authors_dir / "basis.png")),
                       api_name="/run_video")


def test_server_binds_localhost_only_and_removes_its_temp_files(server):
    """Last in this module: it stops the shared server."""
    log = server.log()
    assert f"Running on local URL:  http://127.0.0.1:{server.port}" in log
    assert "removed on exit" in log
    roots = list(server.tmpdir.glob("edtn_demo_*"))
    assert len(roots) == 1 and any((roots[0] / "runs").iterdir())   # runs left by the tests above
    others = {info[4][0] for info in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)}
    for address in sorted(a for a in others if not a.startswith("127.")):
        with pytest.raises(OSError):
            socket.create_connection((address, server.port), timeout=2).close()
    assert server.stop() == 0
    assert not list(server.tmpdir.glob("edtn_demo_*"))
    assert "temporary files removed" in server.log()
