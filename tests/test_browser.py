"""A real browser (Debian's Chromium, driven by Playwright) against a live ``masklab serve``.

Needs ``/usr/bin/chromium`` (``apt-get install chromium``; ``.ci/run`` installs it). Playwright only drives
it: its own browser downloads (``playwright install``) are never used.
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import make_scene

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(
        CHROMIUM is None and not os.environ.get("MASKLAB_REQUIRE_BROWSER"),
        reason="Debian's chromium is not installed (apt-get install -y chromium; .ci/run does it)",
    ),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def live_server(small_weights, tmp_path):
    port = _free_port()
    cmd = [
        sys.executable, "-m", "masklab", "serve", "--port", str(port), "--model", str(small_weights),
        "--device", "cpu", "--score-thresh", "0", "--min-size", "128", "--max-size", "192",
    ]  # fmt: skip
    log = open(tmp_path / "server.log", "wb")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                pytest.fail(f"masklab serve exited with {proc.returncode}:\n{(tmp_path / 'server.log').read_text()}")
            try:
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"server not ready after 180 s:\n{(tmp_path / 'server.log').read_text()}")
            time.sleep(0.3)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def _png_bytes(arr: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _overlay(page) -> np.ndarray:
    """The overlay the page shows, decoded (RGB uint8 (H, W, 3))."""
    from PIL import Image

    b64 = page.evaluate(
        """() => {
            const img = document.querySelector('#overlay');
            const c = document.createElement('canvas');
            c.width = img.naturalWidth; c.height = img.naturalHeight;
            c.getContext('2d').drawImage(img, 0, 0);
            return c.toDataURL('image/png').split(',')[1];
        }"""
    )
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB"))


def test_page_upload_toggle_style_download(live_server, tmp_path):
    if CHROMIUM is None:  # only reached with MASKLAB_REQUIRE_BROWSER set (CI): missing is an error there
        pytest.fail("MASKLAB_REQUIRE_BROWSER is set but no chromium is installed (apt-get install -y chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (the dev extra has it)")
    scene = make_scene(180, 240, seed=3)
    png = _png_bytes(scene)
    shots = Path(os.environ.get("MASKLAB_SCREENSHOT_DIR", tmp_path))

    with sync_api.sync_playwright() as pw:
        ctx = pw.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=CHROMIUM, headless=True, args=FLAGS,
            accept_downloads=True, viewport={"width": 1280, "height": 900},
        )  # fmt: skip
        try:
            page = ctx.new_page()
            page.goto(f"{live_server}/")
            page.wait_for_selector("body[data-ready='1']", timeout=30_000)
            styles = page.eval_on_selector_all("#style option", "els => els.map(e => e.value)")
            from masklab.visualize import STYLES

            assert styles == list(STYLES)

            # Random weights score ~0.01: show everything the model keeps.
            page.eval_on_selector("#score", "e => { e.value = 0; e.dispatchEvent(new Event('input')); }")
            page.set_input_files("#file", files=[{"name": "scene.png", "mimeType": "image/png", "buffer": png}])
            page.wait_for_selector("#stage[data-render='1']", timeout=60_000)

            rows = page.locator("#instances tbody tr")
            n = rows.count()
            assert n > 0

            # The class chips count what the score slider shows (issue 19: they counted every object).
            def chips_total() -> int:
                texts = page.eval_on_selector_all("#classes .chip-text", "els => els.map(e => e.textContent)")
                return sum(int(t.rsplit("(", 1)[1].rstrip(")")) for t in texts)

            def slide(v: float) -> None:
                page.eval_on_selector("#score", f"e => {{ e.value = {v}; e.dispatchEvent(new Event('input')); }}")

            assert chips_total() == n
            slide(1.0)  # random weights never score 1: nothing shown, nothing counted
            assert chips_total() == 0
            slide(0)
            assert chips_total() == n
            first = rows.nth(0)
            label = first.locator("td").nth(2).inner_text()
            assert label in ("class_1", "class_2", "class_3")  # a weights file by path names its classes so
            before = _overlay(page)
            assert before.shape == scene.shape
            assert (before != scene).any(axis=2).mean() > 0.01  # masks were drawn over the photo

            # Hover highlights (the spotlight canvas gets dimmed pixels), then hide instance 0.
            first.hover()
            dimmed = page.evaluate(
                """() => { const c = document.querySelector('#highlight');
                           const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                           let k = 0; for (let i = 3; i < d.length; i += 4) k += d[i] > 0; return k; }"""
            )
            assert 0 < dimmed < 240 * 180
            first.locator("input[type=checkbox]").uncheck()
            page.wait_for_selector("#stage[data-render='2']", timeout=60_000)
            assert "hidden-row" in (first.get_attribute("class") or "")
            after = _overlay(page)
            assert (after != before).any()  # instance 0 is no longer drawn
            page.screenshot(path=str(shots / "page-desktop.png"), full_page=False)

            other = [s for s in styles if s != "instance"]
            assert other  # styles == STYLES above: there is always another style to switch to
            page.select_option("#style", other[0])
            page.wait_for_selector("#stage[data-render='3']", timeout=60_000)
            styled = _overlay(page)
            assert (styled != after).any()

            with page.expect_download() as dl:
                page.click("#dl-json")
            record = json.loads(Path(dl.value.path()).read_text())
            assert dl.value.suggested_filename == "scene.json"

            # Phone width: everything fits without sideways scrolling.
            page.set_viewport_size({"width": 390, "height": 844})
            assert page.evaluate("document.documentElement.scrollWidth") <= 390
            page.screenshot(path=str(shots / "page-phone.png"), full_page=True)
        finally:
            ctx.close()

    # The download is the API's per-image JSON minus the hidden instance 0.
    api = httpx.post(f"{live_server}/v1/segment?score_thresh=0", files={"file": ("scene.png", png, "image/png")}, timeout=60).json()
    assert record["width"] == 240 and record["height"] == 180 and record["image"] == "scene.png"
    assert [d["id"] for d in record["instances"]] == [d["id"] for d in api["instances"] if d["id"] != 0]
    assert record["instances"] == [d for d in api["instances"] if d["id"] != 0]
    assert "coco" not in record
