"""``/docs`` and ``/redoc`` render in Chromium with every other origin cut off, under their CSP.

The app is served by a real uvicorn on a free loopback port, without its lifespan: the docs
need no model. Any request to another origin is aborted and fails the test, and a CSP
violation (a console error) fails it too.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from helpers.browser import browser as browser  # noqa: F401 - the module's fixture
from helpers.browser import collect_problems, pages_server, save_screenshot

SHOTS = Path(os.environ.get("PCB_SCREENSHOT_DIR") or tempfile.gettempdir())

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def docs_url() -> Iterator[str]:
    with pages_server() as url:
        yield url


def _offline_page(browser: Any, base: str) -> tuple[Any, list[str], list[str]]:
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    problems = collect_problems(page)
    elsewhere: list[str] = []

    def only_this_origin(route: Any) -> None:
        if urlsplit(route.request.url).netloc == urlsplit(base).netloc or (
            route.request.url.startswith(("data:", "blob:"))
        ):
            route.continue_()
        else:
            elsewhere.append(route.request.url)
            route.abort()

    page.route("**/*", only_this_origin)
    return page, problems, elsewhere


def test_swagger_ui_renders_offline(browser: Any, docs_url: str) -> None:
    page, problems, elsewhere = _offline_page(browser, docs_url)
    page.goto(f"{docs_url}/docs")
    page.wait_for_selector(".opblock", timeout=30_000)
    # Every route of the API is listed, e.g. the inspection one.
    assert page.locator(".opblock-summary-path[data-path='/predict']").count() == 1
    save_screenshot(page, SHOTS / "pcb-inspect-docs.png")
    assert not elsewhere and not problems, (elsewhere, problems)
    page.close()


def test_redoc_renders_offline(browser: Any, docs_url: str) -> None:
    page, problems, elsewhere = _offline_page(browser, docs_url)
    page.goto(f"{docs_url}/redoc")
    page.wait_for_selector("h1", timeout=30_000)
    assert "pcb-inspect" in page.locator("h1").first.inner_text()
    page.wait_for_selector("text=/predict", timeout=30_000)
    save_screenshot(page, SHOTS / "pcb-inspect-redoc.png")
    # ReDoc's sidebar links Redocly's logo from its CDN; the CSP blocks it (that is its job),
    # and the browser reports the block. Any other problem counts.
    logo = "https://cdn.redoc.ly/redoc/logo-mini.svg"
    problems = [p for p in problems if not (logo in p and "Content Security Policy" in p)]
    assert not elsewhere and not problems, (elsewhere, problems)
    page.close()


def test_the_docs_csp_is_what_the_browser_got(docs_url: str) -> None:
    csp = httpx.get(f"{docs_url}/docs").headers["content-security-policy"]
    assert "script-src 'self'" in csp and "https:" not in csp
