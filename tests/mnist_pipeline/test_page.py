"""The drawing page in a real browser: headless Chromium draws a stroke, a prediction appears.

Needs Debian's `chromium` and `chromium-driver` (`.ci/run` installs them when missing).
"""

from __future__ import annotations

import shutil
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from mnist_pipeline.serving import server

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (CHROMIUM and DRIVER),
        reason="needs chromium and chromedriver (apt-get install chromium chromium-driver)",
    ),
]


@pytest.fixture(scope="module")
def base_url(onnx_model: Path) -> Iterator[str]:
    """The server on a free port of 127.0.0.1, in a thread, for this module."""
    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = uvicorn.Config(server.create_app(onnx_model), host="127.0.0.1", port=port)
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started and time.monotonic() < deadline:
        time.sleep(0.1)
    assert srv.started, "the server did not start"
    while time.monotonic() < deadline:  # the model loads in the background: wait until ready
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1):
                break
        except OSError:
            time.sleep(0.1)
    yield f"http://127.0.0.1:{port}/"
    srv.should_exit = True
    thread.join(timeout=10)


def test_drawing_a_stroke_shows_a_prediction_and_ten_bars(base_url: str, tmp_path: Path) -> None:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--no-first-run", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}", "--window-size=900,700",
    ):  # fmt: skip
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    try:
        driver.get(base_url)
        assert driver.find_element(By.ID, "answer").text == "?"
        pad = driver.find_element(By.ID, "pad")
        # A vertical stroke down the middle of the 280x280 pad: a "1".
        chain = ActionChains(driver).move_to_element_with_offset(pad, 0, -90).click_and_hold()
        for _ in range(9):
            chain = chain.move_by_offset(0, 20)
        chain.release().perform()
        WebDriverWait(driver, 20).until(
            lambda d: (
                d.find_element(By.ID, "answer").text.isdigit()
                and len(d.find_elements(By.CSS_SELECTOR, "#bars .bar")) == 10
            )
        )
        assert driver.find_element(By.ID, "error").text == ""
        assert len(driver.find_elements(By.CSS_SELECTOR, "#bars .bar.best")) == 1
        shot = tmp_path / "page.png"
        driver.save_screenshot(str(shot))
        assert shot.read_bytes().startswith(b"\x89PNG") and shot.stat().st_size > 5_000
    finally:
        driver.quit()
