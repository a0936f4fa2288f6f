"""The review page (``/review``): the queue of failed boards to review, and the dashboard.

Fast tests check what the app serves. The browser test (``slow``) drives Debian's Chromium
through Playwright against a real server subprocess that records every inspection and keeps
every image: a few synthetic boards are inspected through the API, then reviewed on the page
with the keyboard only (a false call, confirmations, a reclassification, a missed box drawn
with the mouse), and the false-call rate is checked to move in ``GET /v1/stats`` and on the
dashboard. API refusals (401, 403) are injected with Playwright's routing to check that they
are shown as text, whatever markup the message holds.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from helpers.browser import SCREENSHOT_MAX_BYTES, collect_problems, save_screenshot
from helpers.browser import browser as browser  # noqa: F401 - the module's fixture
from helpers.live_server import live_server_running
from helpers.server import ServerProcess

from app.main import create_app
from training.synth import encode, make_board

REPO_ROOT = Path(__file__).resolve().parents[2]
STATIC = REPO_ROOT / "app" / "static"
# Written over the README's picture only when asked (PCB_REVIEW_SCREENSHOT_OUT=
# docs/img/review-queue.png): a test run never rewrites a tracked file on its own.
SCREENSHOT = Path(
    os.environ.get("PCB_REVIEW_SCREENSHOT_OUT")
    or Path(tempfile.gettempdir()) / "pcb-inspect-review-queue.png"
)


# --- what the app serves (fast) --------------------------------------------------------------


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    # The lifespan (model load) never runs: the page and its assets must not need the model.
    yield TestClient(create_app())


def test_review_page_and_its_script_are_served_with_the_csp(client: TestClient) -> None:
    page = client.get("/review")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "style-src 'self'" in csp
    assert "unsafe-inline" not in csp
    assert page.text == (STATIC / "review.html").read_text()
    assets = [a for a in re.findall(r'<(?:script|link)\b[^>]*?(?:src|href)="([^"]+)"', page.text)
              if a != "data:,"]
    assert sorted(assets) == ["/static/common.js", "/static/review.js", "/static/style.css"]
    assert assets.index("/static/common.js") < assets.index("/static/review.js")
    script = client.get("/static/review.js")
    assert script.status_code == 200
    assert script.headers["content-type"].startswith("text/javascript")
    assert script.text == (STATIC / "review.js").read_text()
    # Both pages link to each other.
    assert 'href="/review"' in client.get("/").text and 'href="/"' in page.text


def test_pages_have_no_inline_code_and_never_parse_server_strings_as_markup() -> None:
    for name in ("index.html", "review.html"):
        html = (STATIC / name).read_text()
        # The CSP would block them anyway; they must not be there to be blocked.
        assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html), name
        assert not re.search(r"\son[a-z]+=", html, re.IGNORECASE), name
        assert not re.search(r"\sstyle=", html), name
        assert "<style" not in html, name
    for name in ("common.js", "app.js", "review.js"):
        script = (STATIC / name).read_text()
        assert '"use strict";' in script, name
        for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(",
                     "new Function", 'setAttribute("style"'):
            assert sink not in script, f"{name} uses {sink}"


def test_the_pages_share_their_helpers_through_common_js() -> None:
    """What both pages need (key, service calls, error box, colours, labels) is written once."""
    for name in ("app.js", "review.js"):
        script = (STATIC / name).read_text()
        assert "PCB." in script, name
        for own in ("function colorOf", "function hexToRgb", "function textOn",
                    "function authHeaders", "function errorOf", "function api(", "sessionStorage",
                    "/static/palette.json", "measureText"):
            assert own not in script, f"{name} has its own {own!r}: common.js has it"
    node = shutil.which("node")
    if node is None:
        pytest.skip("node not found: the scripts' syntax and common.js's global are not checked")
    for name in ("common.js", "app.js", "review.js"):
        checked = subprocess.run([node, "--check", str(STATIC / name)], capture_output=True,
                                 text=True, timeout=30)
        assert checked.returncode == 0, (name, checked.stderr)
    # common.js, run in a bare global (no DOM is touched before a page calls it): the one
    # global it defines is PCB, frozen.
    probe = """
        const vm = require("vm");
        const g = { fetch: () => new Promise(() => {}) };
        g.window = g;
        vm.createContext(g);
        const before = new Set(Object.keys(g));
        vm.runInContext(require("fs").readFileSync(process.argv[1], "utf8"), g);
        console.log(JSON.stringify({
            added: Object.keys(g).filter((k) => !before.has(k)),
            frozen: Object.isFrozen(g.PCB),
            names: Object.keys(g.PCB),
        }));
    """
    ran = subprocess.run([node, "-e", probe, str(STATIC / "common.js")], capture_output=True,
                         text=True, timeout=30, check=True)
    found = json.loads(ran.stdout)
    assert found["added"] == ["PCB"] and found["frozen"], found
    assert {"keepApiKey", "authHeaders", "errorOf", "api", "apiJson", "showError", "colorOf",
            "swatch", "pen", "drawLabel"} <= set(found["names"]), found


def test_review_page_shows_its_keys() -> None:
    html = (STATIC / "review.html").read_text()
    legend = html[html.index('id="key-legend"'):html.index("</dl>", html.index('id="key-legend"'))]
    for key in ("←", "→", "C", "F", "R", "M", "Del", "Enter", "N", "P", "Esc"):
        assert f"<kbd>{key}</kbd>" in legend, key
    assert "<kbd>?</kbd>" in html
    # The default outcome is said on the page, not left to guess.
    assert "confirmed</strong> unless marked" in " ".join(html.split())
    assert "Newest first" in html


# --- the page in a browser (slow) ------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tiny_weights: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server on the tiny model (or $PCB_UI_WEIGHTS) that records and keeps every board."""
    weights = Path(os.environ.get("PCB_UI_WEIGHTS") or tiny_weights)
    with live_server_running(
        weights, tmp_path_factory.mktemp("review_server"),
        env={"PCB_IMAGES_KEEP": "all"},
        data_dir=str(tmp_path_factory.mktemp("review_data")),
    ) as running:
        yield running


def _predict(server: ServerProcess, data: bytes, name: str, **params: Any) -> httpx.Response:
    return httpx.post(
        f"{server.url}/predict", params={"mask": "none", **params},
        files={"file": (name, data, "image/png")}, timeout=120,
    )


def _pick_params(server: ServerProcess, data: bytes) -> dict[str, Any]:
    """Rules under which the random tiny model calls a handful of defects.

    Where its probabilities lie depends on its random weights (near 0.87 for one draw, near
    0.01 for another), so a coarse sweep. Every probe is recorded too (a failed one joins the
    queue), so the sweep is short: the queue stays within one page of the review page.
    """
    if os.environ.get("PCB_UI_WEIGHTS"):
        return {}  # a trained model: its own operating point
    for threshold in (0.87, 0.86, 0.88, 0.5, 0.2, 0.05, 0.02, 0.015, 0.012, 0.01, 0.009):
        params = {"threshold": threshold, "min_area_px": 10}
        count = _predict(server, data, "probe.png", **params).json()["summary"]["defect_count"]
        if 2 <= count <= 40:
            return params
    return {"threshold": 0.0, "min_area_px": 10}


def _stats(server: ServerProcess) -> dict[str, Any]:
    since = (dt.datetime.now(dt.UTC) - dt.timedelta(days=1)).isoformat()
    response = httpx.get(f"{server.url}/v1/stats", params={"since": since, "bucket": "hour"},
                         timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def _by_class(stats: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["class"]: c for c in stats["classes"]}


def _pct(rate: float) -> str:
    """A rate as the page writes it (review.js ``pct``)."""
    v = rate * 100
    return f"{int(v)} %" if float(v).is_integer() else f"{v:.1f} %"


def _inspection(server: ServerProcess, inspection_id: str) -> dict[str, Any]:
    response = httpx.get(f"{server.url}/v1/inspections/{inspection_id}", timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def _save_screenshot(page: Any) -> None:
    save_screenshot(page, SCREENSHOT)


def _inspect_drawn_boards(server: ServerProcess) -> list[str]:
    """A few drawn boards inspected through the API, each with its serial; the ids of those
    that failed."""
    boards = [encode(make_board(seed=seed, size=512, n_defects=6).image) for seed in (42, 43, 44)]
    params = _pick_params(server, boards[0])
    failed: list[str] = []
    for k, data in enumerate(boards):
        response = _predict(server, data, f"board_{k}.png", serial=f"SN-{k:04d}", line="L3",
                            **params)
        assert response.status_code == 200, response.text
        body = response.json()
        assert response.headers["x-inspection-id"] == body["inspection_id"]
        if body["summary"]["verdict"] == "fail":
            failed.append(body["inspection_id"])
    # The probe inspections in _pick_params fail too (same board): the queue holds them all.
    assert len(failed) >= 2, "the tiny model must fail at least two boards under these rules"
    return failed


def _outcomes_shown(page: Any) -> list[str]:
    return page.locator("#review-defects tbody tr").evaluate_all(
        "rs => rs.map(r => r.dataset.outcome)")


def _check_queue(page: Any, server: ServerProcess, failed: list[str]) -> list[str]:
    """The queue lists the failed boards, newest first, and opens the first with its image
    and its calls; the ids it lists."""
    page.wait_for_selector('#review-canvas[data-rendered="image"]', timeout=60_000)
    queued = page.locator("#queue-list .queue-item").evaluate_all(
        "items => items.map(i => i.dataset.id)")
    listed = httpx.get(f"{server.url}/v1/inspections",
                       params={"verdict": "fail", "reviewed": "false", "limit": 50},
                       timeout=30).json()
    assert queued == [item["id"] for item in listed["items"]][:25]  # the page's first page
    assert set(failed) <= set(queued)
    assert page.inner_text("#insp-id") == queued[0]
    first = _inspection(server, queued[0])
    assert first["defects"], first
    size = page.evaluate(
        "() => { const c = document.getElementById('review-canvas'); return [c.width, c.height]; }"
    )
    assert size == [first["width"], first["height"]]
    assert page.locator("#review-defects tbody tr").count() == len(first["defects"])
    # Unmarked calls are shown as what they will be sent as.
    assert all(o == "default" for o in _outcomes_shown(page))
    return queued


def _review_by_keyboard(page: Any, server: ServerProcess, inspection_id: str) -> None:
    """Keyboard only: the first call is a false call, the others confirmed, then sent."""
    defects = _inspection(server, inspection_id)["defects"]
    rows = page.locator("#review-defects tbody tr")
    page.keyboard.press("f")
    assert rows.nth(0).get_attribute("data-outcome") == "false_call"
    if len(defects) > 1:
        assert rows.nth(1).get_attribute("aria-current") == "true"  # moved on by itself
    _save_screenshot(page)
    assert SCREENSHOT.stat().st_size < SCREENSHOT_MAX_BYTES
    for _ in defects[1:]:
        page.keyboard.press("c")
    assert _outcomes_shown(page) == ["false_call"] + ["confirmed"] * (len(defects) - 1)
    # Arrows move the selection back and forth.
    page.keyboard.press("ArrowLeft")
    page.keyboard.press("ArrowRight")
    page.keyboard.press("?")
    assert page.evaluate("document.getElementById('help').open")
    page.keyboard.press("Escape")
    assert not page.evaluate("document.getElementById('help').open")
    page.keyboard.press("Enter")
    page.wait_for_selector(f'#review-result[data-inspection-id="{inspection_id}"]',
                           timeout=30_000)
    result = page.inner_text("#review-result")
    stored = _inspection(server, inspection_id)
    review = stored["reviews"][-1]
    assert stored["reviewed"] and review["reviewer"] in result
    assert page.get_attribute("#review-result", "data-created-at") == review["created_at"]
    outcomes = {d["defect_id"]: d["outcome"] for d in review["body"]["defects"]}
    assert outcomes == {d["id"]: "false_call" if d["id"] == defects[0]["id"] else "confirmed"
                        for d in defects}
    assert review["body"]["missed"] == []


def _reclassify_and_draw_a_missed_spur(page: Any, server: ServerProcess, previous_id: str,
                                       expected_id: str) -> None:
    """The next board opens by itself: its first call is reclassified and a missed spur
    drawn, then sent."""
    # (Selectors, not wait_for_function: the page's CSP forbids the eval that would need.)
    page.wait_for_selector(
        f'#board-area[data-inspection-id]:not([data-inspection-id="{previous_id}"])'
    )
    page.wait_for_selector('#review-canvas[data-rendered="image"]')
    assert page.inner_text("#insp-id") == expected_id
    board = _inspection(server, expected_id)
    model_classes = httpx.get(f"{server.url}/v1/model", timeout=30).json()["classes"]
    target = next(k for k, name in enumerate(model_classes, 1)
                  if name != board["defects"][0]["class"])
    page.keyboard.press("r")
    page.keyboard.press(str(target))
    spur = model_classes.index("spur") + 1
    page.keyboard.press("m")
    box = page.locator("#review-canvas").bounding_box()
    page.mouse.move(box["x"] + 0.40 * box["width"], box["y"] + 0.45 * box["height"])
    page.mouse.down()
    page.mouse.move(box["x"] + 0.48 * box["width"], box["y"] + 0.52 * box["height"], steps=5)
    page.mouse.up()
    page.keyboard.press(str(spur))
    missed_row = page.locator('#review-defects tbody tr[data-outcome="missed"]')
    assert missed_row.get_attribute("data-class") == "spur"
    page.keyboard.press("Enter")
    page.wait_for_selector(f'#review-result[data-inspection-id="{expected_id}"]',
                           timeout=30_000)
    review = _inspection(server, expected_id)["reviews"][-1]["body"]
    reclassified = review["defects"][0]
    assert reclassified == {"defect_id": board["defects"][0]["id"], "outcome": "reclassified",
                            "class": model_classes[target - 1]}
    [missed] = review["missed"]
    assert missed["class"] == "spur"
    x0, y0, x1, y1 = missed["bbox"]
    w, h = board["width"], board["height"]
    assert 0.35 * w < x0 < x1 < 0.53 * w and 0.40 * h < y0 < y1 < 0.57 * h, missed


def _check_dashboard(page: Any, server: ServerProcess, before: dict[str, dict[str, Any]],
                     cls: str) -> None:
    """The false-call rate of ``cls`` moved: in the API, and on the dashboard."""
    after = _by_class(_stats(server))
    assert after[cls]["false_calls"] >= before.get(cls, {}).get("false_calls", 0) + 1
    rate = after[cls]["false_call_rate"]
    assert rate and rate != before.get(cls, {}).get("false_call_rate")
    assert after["spur"]["missed"] >= 1
    page.click("#tab-dashboard")
    page.wait_for_selector("#dashboard-view[data-updated]", timeout=30_000)
    label = page.get_attribute("#chart-false", "aria-label") or ""
    assert f"{cls} {_pct(rate)}" in label, label
    bar = page.locator(f'#chart-false g[data-class="{cls}"]')
    assert float(bar.get_attribute("data-rate") or "nan") == pytest.approx(rate)
    assert bar.locator("rect").count() == 1
    stats = _stats(server)
    assert page.inner_text("#total-boards") == str(stats["boards"])
    boards_label = page.get_attribute("#chart-boards", "aria-label") or ""
    assert f"{stats['boards']} boards, {stats['failed']} failed" in boards_label
    assert _pct(stats["fail_rate"]) in (page.get_attribute("#chart-fail", "aria-label") or "")
    assert page.locator("#chart-boards rect").count() >= 1
    assert page.locator("#chart-fail circle").count() >= 1


def _check_refusals(page: Any) -> None:
    """Refusals are shown as the API words them, as text; with what to do about them."""
    page.click("#tab-queue")
    markup = '<img src="x" id="injected"> needs role <b>review</b>'

    def forbidden(route: Any) -> None:
        route.fulfill(status=403, content_type="application/json",
                      body=json.dumps({"error": {"code": "forbidden", "message": markup}}))

    page.route("**/v1/inspections/*/review", forbidden)
    page.wait_for_selector("#review-canvas[data-rendered]")
    page.keyboard.press("Enter")
    page.wait_for_selector("#error:not([hidden])")
    assert page.inner_text("#error-message") == markup
    assert page.locator("#injected").count() == 0
    assert page.inner_text("#error-code") == "forbidden"
    assert "role review or admin" in page.inner_text("#error-hint")
    page.unroute("**/v1/inspections/*/review", forbidden)

    def unauthorized(route: Any) -> None:
        route.fulfill(status=401, content_type="application/json",
                      body=json.dumps({"error": {"code": "unauthorized", "message": "no key"}}))

    listing = re.compile(r"/v1/inspections\?")
    page.route(listing, unauthorized)
    page.click("#queue-reload")
    page.wait_for_selector('#error[data-status="401"]:not([hidden])')
    assert page.inner_text("#error-status") == "HTTP 401"
    assert "API key" in page.inner_text("#error-hint")
    assert page.evaluate("document.querySelector('details.settings').open")
    page.unroute(listing, unauthorized)


@pytest.mark.slow
def test_review_queue_and_dashboard_end_to_end(server: ServerProcess, browser: Any) -> None:
    failed = _inspect_drawn_boards(server)
    before = _by_class(_stats(server))
    page = browser.new_page(viewport={"width": 1440, "height": 960})
    problems = collect_problems(page)
    page.goto(server.url + "/review")
    assert page.title() == "PCB review"

    queued = _check_queue(page, server, failed)
    first_id, second_id = queued[:2]
    first_class = _inspection(server, first_id)["defects"][0]["class"]
    _review_by_keyboard(page, server, first_id)
    _reclassify_and_draw_a_missed_spur(page, server, first_id, second_id)

    # Back on the reviewed board (P, unless it was the last and stayed on screen): it shows
    # who reviewed it, and the calls as sent.
    page.wait_for_selector(
        f'#board-area[data-inspection-id]:not([data-inspection-id="{second_id}"]), '
        'body[data-queue="done"]'
    )
    if page.get_attribute("body", "data-queue") != "done":
        page.keyboard.press("p")
    page.wait_for_selector(f'#board-area[data-inspection-id="{second_id}"]')
    assert "anonymous" in page.inner_text("#insp-reviewed")
    assert page.locator('#review-defects tbody tr[data-outcome="reclassified"]').count() == 1

    _check_dashboard(page, server, before, first_class)
    _check_refusals(page)

    # Reloaded, the queue no longer lists the reviewed boards.
    page.click("#queue-reload")
    page.wait_for_selector("#error", state="hidden")
    remaining = page.locator("#queue-list .queue-item").evaluate_all(
        "items => items.map(i => i.dataset.id)")
    assert first_id not in remaining and second_id not in remaining
    assert len(remaining) == len(queued) - 2
    # The only failed loads are the refusals injected above, by design.
    expected = ("status of 403", "status of 401")
    assert [p for p in problems if not any(e in p for e in expected)] == [], problems
    page.close()
