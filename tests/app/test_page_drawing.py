"""What the pages draw: labels on a crowded board apart from each other, alignment figures
without ``-0``, and the dashboard's class bars in the legend's colours.

The pages are served by a real uvicorn on a free loopback port, without the app's lifespan
(no model is needed to serve them). The tests that look at how one answer is shown answer
that API call from the browser's side (Playwright's routing), so the figure on screen is
known exactly: an alignment of -0.01 px, a dashboard whose /v1/model answers after
/v1/stats (the order in which its class bars used to be drawn grey).
"""

from __future__ import annotations

import io
import itertools
import json
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers.browser import browser as browser  # noqa: F401 - the module's fixture
from helpers.browser import collect_problems, pages_server, save_screenshot
from PIL import Image

from app.inference.render import CLASS_COLORS_BGR

SHOTS = Path(os.environ.get("PCB_SCREENSHOT_DIR") or tempfile.gettempdir())
CLASSES = ["open", "short", "mousebite", "spur", "spurious_copper", "pin_hole"]
PALETTE = [f"#{r:02x}{g:02x}{b:02x}" for b, g, r in CLASS_COLORS_BGR]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    with pages_server() as url:
        yield url


def _overlap(a: dict[str, float], b: dict[str, float]) -> float:
    w = min(a["x"] + a["w"], b["x"] + b["w"]) - max(a["x"], b["x"])
    h = min(a["y"] + a["h"], b["y"] + b["h"]) - max(a["y"], b["y"])
    return w * h if w > 0 and h > 0 else 0.0


_CROWDED_JS = """
async ([boxes, classes]) => {
  await PCB.paletteReady;
  const canvas = document.createElement("canvas");
  canvas.id = "crowded";
  canvas.width = 480; canvas.height = 360;
  canvas.style.width = "480px"; canvas.style.height = "360px";
  document.body.prepend(canvas);
  const ctx = canvas.getContext("2d");
  ctx.fillStyle = "#5a5a5a"; ctx.fillRect(0, 0, 480, 360);
  const p = PCB.pen(ctx, 480, 360);
  const items = boxes.map((bbox, i) => {
    const cls = classes[i % classes.length];
    const color = PCB.colorOf(classes, cls);
    PCB.strokeBox(ctx, p, bbox, color, false);
    return { bbox, color, label: `${i + 1} ${cls} 0.90` };
  });
  return PCB.drawLabels(ctx, p, items);
}
"""


def test_labels_on_a_crowded_board_do_not_cover_each_other(browser: Any, base_url: str) -> None:
    page = browser.new_page(viewport={"width": 900, "height": 700})
    problems = collect_problems(page)
    page.goto(f"{base_url}/")
    boxes = [[150 + i * 26, 120 + j * 26, 160 + i * 26, 130 + j * 26]
             for j in range(4) for i in range(4)]
    places = page.evaluate(_CROWDED_JS, [boxes, CLASSES])
    assert len(places) == len(boxes)
    for a, b in itertools.combinations(places, 2):
        assert _overlap(a, b) == 0, (a, b)
    for p in places:
        for x0, y0, x1, y1 in boxes:
            frame = {"x": x0 - 2, "y": y0 - 2, "w": x1 - x0 + 4, "h": y1 - y0 + 4}
            assert _overlap(p, frame) == 0, (p, frame)
        assert 0 <= p["x"] <= 480 - p["w"] and 0 <= p["y"] <= 360 - p["h"]
    assert any(p["leader"] for p in places)
    page.locator("#crowded").screenshot(path=str(SHOTS / "pcb-inspect-crowded-page.png"))
    # /v1/model is not served here (no model): its error is the only problem allowed.
    assert not [m for m in problems if "/v1/model" not in m and "503" not in m], problems
    page.close()


def _png(width: int, height: int) -> bytes:
    out = io.BytesIO()
    Image.new("L", (width, height), 128).save(out, format="PNG")
    return out.getvalue()


def _result(alignment: dict[str, float]) -> dict[str, Any]:
    return {
        "inspection_id": None,
        "image": {"width": 64, "height": 64},
        "model": {"name": "tiny", "version": "1", "mode": "pair"},
        "defects": [],
        "summary": {"defect_count": 0, "defect_area_px": 0, "defect_area_mm2": 0.0,
                    "defect_area_ratio": 0.0, "by_class": dict.fromkeys(CLASSES, 0),
                    "verdict": "pass"},
        "mask": None, "params": {}, "timings_ms": {},
        "reference": {"source": "product", "product": "p1", "sha256": "a" * 64,
                      "alignment": alignment},
    }


@pytest.mark.parametrize(("alignment", "shown"), [
    ({"dx": -0.01, "dy": -0.0, "rotation_deg": -0.001, "score": 0.99},
     "dx 0.0 px, dy 0.0 px, rotation 0.00°, score 0.990"),
    ({"dx": 4.06, "dy": -3.07, "rotation_deg": 0.41, "score": 0.93},
     "dx +4.1 px, dy −3.1 px, rotation +0.41°, score 0.930"),
])
def test_alignment_never_shows_minus_zero(
    browser: Any, base_url: str, tmp_path: Path, alignment: dict[str, float], shown: str
) -> None:
    page = browser.new_page()
    page.route("**/v1/model", lambda route: route.fulfill(
        status=200, content_type="application/json",
        body=json.dumps({"classes": CLASSES, "models": []})))
    page.route("**/v1/golden-boards", lambda route: route.fulfill(
        status=200, content_type="application/json", body="[]"))
    page.route("**/predict*", lambda route: route.fulfill(
        status=200, content_type="application/json", body=json.dumps(_result(alignment))))
    page.goto(f"{base_url}/")
    board = tmp_path / "b.png"
    board.write_bytes(_png(64, 64))
    page.set_input_files("#file", str(board))
    page.locator("#alignment-fact").wait_for(state="visible")
    assert page.locator("#alignment").inner_text() == shown
    page.close()


_STATS = {
    "since": "2026-01-01T00:00:00Z", "until": "2026-01-02T00:00:00Z", "bucket": "hour",
    "boards": 10, "failed": 4, "fail_rate": 0.4, "reviewed": 4, "buckets": [],
    "classes": [{"class": c, "reviewed_calls": 4, "confirmed": 3 - (i % 3), "false_calls": 1
                 + (i % 3), "reclassified": 0, "missed": 0, "false_call_rate": (1 + i % 3) / 4}
                for i, c in enumerate(CLASSES)],
}


def test_dashboard_bars_take_the_class_colours(browser: Any, base_url: str) -> None:
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    held: list[Any] = []
    # The model's classes answer last: the bars must still get their colours.
    page.route("**/v1/model", lambda route: held.append(route))
    page.route("**/v1/stats*", lambda route: route.fulfill(
        status=200, content_type="application/json", body=json.dumps(_STATS)))
    page.route("**/v1/inspections*", lambda route: route.fulfill(
        status=200, content_type="application/json",
        body=json.dumps({"items": [], "next_cursor": None})))
    with page.expect_response("**/v1/stats*"):
        page.goto(f"{base_url}/review#dashboard")
    page.wait_for_timeout(300)  # time for the page to draw the answer it has
    deadline = time.monotonic() + 10
    while not held:
        assert time.monotonic() < deadline, "the page never asked for /v1/model"
        page.wait_for_timeout(50)
    held[0].fulfill(status=200, content_type="application/json",
                    body=json.dumps({"classes": CLASSES, "models": []}))
    page.locator("#chart-false rect.bar-class").nth(5).wait_for(state="attached")
    fills = page.eval_on_selector_all(
        "#chart-false g[data-class]", "gs => gs.map(g => [g.dataset.class, "
        "g.querySelector('rect').getAttribute('fill')])")
    assert {cls: fill.lower() for cls, fill in fills} == dict(zip(CLASSES, PALETTE, strict=True))
    save_screenshot(page, SHOTS / "pcb-inspect-dashboard.png")
    page.close()


def test_dashboard_bars_are_coloured_even_without_the_class_list(
    browser: Any, base_url: str
) -> None:
    # /v1/model refused (a key without its role): the stats list the classes in class order.
    page = browser.new_page()
    page.route("**/v1/model", lambda route: route.fulfill(
        status=403, content_type="application/json",
        body=json.dumps({"error": {"code": "forbidden", "message": "no"}})))
    page.route("**/v1/stats*", lambda route: route.fulfill(
        status=200, content_type="application/json", body=json.dumps(_STATS)))
    page.route("**/v1/inspections*", lambda route: route.fulfill(
        status=200, content_type="application/json",
        body=json.dumps({"items": [], "next_cursor": None})))
    page.goto(f"{base_url}/review#dashboard")
    page.locator("#chart-false rect.bar-class").nth(5).wait_for(state="attached")
    fills = page.eval_on_selector_all("#chart-false rect.bar-class",
                                      "rs => rs.map(r => r.getAttribute('fill').toLowerCase())")
    assert fills == PALETTE
    page.close()
