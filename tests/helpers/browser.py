"""The browser tests' Chromium (Debian's, via Playwright), a page's errors, and screenshots."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

#: As the machine's probe starts it: without the background-networking flags Chromium's many
#: connections to Google's hosts are refused by the closed network.
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
SCREENSHOT_MAX_BYTES = 300 * 1024


@contextlib.contextmanager
def pages_server() -> Iterator[str]:
    """The app's static pages and docs on a free loopback port, served from a thread with the
    lifespan off (no model is loaded); yields its base URL."""
    import uvicorn

    from app.main import create_app
    from helpers.server import free_port

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(), host="127.0.0.1", port=port,
                                           lifespan="off", log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def chromium_path() -> str | None:
    """Debian's Chromium: ``$PCB_CHROMIUM``, /usr/bin/chromium or on PATH; ``None`` if absent."""
    for candidate in (os.environ.get("PCB_CHROMIUM"), "/usr/bin/chromium",
                      shutil.which("chromium"), shutil.which("chromium-browser")):
        if candidate and Path(candidate).exists():
            return candidate
    return None


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """A headless Chromium for the module; skips (with the install command) where absent."""
    executable = chromium_path()
    if executable is None:
        pytest.skip(
            "Chromium not found at /usr/bin/chromium (nor $PCB_CHROMIUM, nor on PATH); "
            "install it with: apt-get install -y chromium"
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        launched = pw.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


def collect_problems(page: Any) -> list[str]:
    """The page's uncaught errors and console errors (failed loads too), listed as they come."""
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    page.on("console", lambda msg: problems.append(msg.text) if msg.type == "error" else None)
    return problems


def save_screenshot(page: Any, path: Path) -> None:
    """The page as a PNG under :data:`SCREENSHOT_MAX_BYTES` (quantized if it must be)."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.open(io.BytesIO(page.screenshot(full_page=False))).convert("RGB")
    out = io.BytesIO()
    image.save(out, format="PNG", optimize=True)
    if out.tell() > SCREENSHOT_MAX_BYTES:
        # The noisy board image is what makes it big; 256 colours keep the page crisp.
        out = io.BytesIO()
        image.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(
            out, format="PNG", optimize=True
        )
    path.write_bytes(out.getvalue())
