"""Browser-test harness: the demo server in a subprocess, headless Chromium (Debian's ``chromium`` +
``chromium-driver``, installed by ``.ci/run``) driven by selenium, and a fake camera clip.

Tests skip with the reason when no browser is installed; nothing here downloads anything.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

import pytest

from helpers.local import free_port

REPO = Path(__file__).resolve().parents[2]
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
DRIVER_NAMES = ("chromedriver",)
# as root in a container: no sandbox, no GPU, nothing that talks to the network
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--window-size=1400,1000")
FAKE_CAMERA_FLAGS = ("--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream")
SERVER_START_S = 120.0


def find_browser() -> tuple[str, str]:
    """(chromium binary, chromedriver binary); ``pytest.skip`` with the reason when either is missing."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        pytest.skip("selenium is not installed (pip install -r requirements.txt)")
    browser = next((shutil.which(n) for n in CHROMIUM_NAMES if shutil.which(n)), None)
    driver = next((shutil.which(n) for n in DRIVER_NAMES if shutil.which(n)), None)
    if browser is None or driver is None:
        pytest.skip("no headless browser: Debian's chromium and chromium-driver are not installed "
                    "(.ci/run installs them with apt-get; it could not here)")
    return browser, driver


def make_y4m(video: Path, out: Path, seconds: float, size: int = 256) -> Path:
    """A raw .y4m clip (Chromium's fake-camera format) of the first ``seconds`` of ``video``,
    made with imageio-ffmpeg's bundled ffmpeg."""
    import imageio_ffmpeg

    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y",
                    "-i", str(video), "-t", str(seconds), "-vf", f"scale={size}:{size}",
                    "-pix_fmt", "yuv420p", str(out)], check=True, timeout=120)
    return out


class DemoServer:
    """``python demo.py --port P ...`` in a subprocess; ``url``, ``log()``, ``stop()``."""

    def __init__(self, args: list[str], env: dict[str, str], log_path: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.log_path = log_path
        self._log = open(log_path, "w")
        self.proc = subprocess.Popen([sys.executable, str(REPO / "demo.py"), "--port", str(self.port), *args],
                                     cwd=REPO, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.monotonic() + SERVER_START_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"demo server exited with {self.proc.returncode}:\n{self.log()}")
            try:
                with urllib.request.urlopen(self.url, timeout=2):
                    return
            except OSError:
                time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"demo server did not answer within {SERVER_START_S} s:\n{self.log()}")

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 30.0) -> int:
        """Ctrl-C the server (its clean-up runs), wait; kill it if it does not stop."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)
        self._log.close()
        return self.proc.returncode


def demo_env(asset_home: Path, tmp: Path) -> dict[str, str]:
    """Environment of a demo server: stand-in assets, its own temp dir, one CPU thread."""
    env = dict(os.environ)
    env.update({"EDTN_HOME": str(asset_home), "TORCH_HOME": str(tmp / "torch"), "TMPDIR": str(tmp),
                "OMP_NUM_THREADS": "1", "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1"})
    return env


@contextmanager
def chromium(fake_camera: Optional[Path] = None, download_dir: Optional[Path] = None) -> Iterator:
    """A headless Chromium webdriver (fresh profile); with ``fake_camera`` (a .y4m) as the webcam."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, driver = find_browser()
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    profile = tempfile.mkdtemp(prefix="chromium_profile_")
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    if fake_camera is not None:
        for flag in (*FAKE_CAMERA_FLAGS, f"--use-file-for-fake-video-capture={fake_camera}"):
            options.add_argument(flag)
    if download_dir is not None:
        options.add_experimental_option("prefs", {"download.default_directory": str(download_dir)})
    web = webdriver.Chrome(options=options, service=Service(driver))
    try:
        yield web
    finally:
        web.quit()
        shutil.rmtree(profile, ignore_errors=True)


def click_button(web, text: str, timeout: float = 30.0) -> None:
    """Click the first visible button whose text is ``text`` (waits for it to appear)."""
    from selenium.webdriver.common.by import By

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for button in web.find_elements(By.TAG_NAME, "button"):
            try:
                if button.is_displayed() and button.text.strip() == text:
                    button.click()
                    return
            except Exception:  # noqa: BLE001 - stale element while the page re-renders
                pass
        time.sleep(0.3)
    raise AssertionError(f"no visible button {text!r} within {timeout} s")
