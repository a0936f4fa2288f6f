"""The review and inspection pages with a panel: a product recipe's boards are framed on the
board in their verdict's colour and listed with their verdicts, and the review page reviews the
panel board by board (calls grouped per board with the model's and the reviewed verdict, one
click per board, zoom, missed boxes placed on their board, zones' set-aside calls apart).

A real server subprocess with the tiny single and pair models records every inspection and
keeps every image; a two-board synthetic panel is inspected with ``?product=`` through the API,
then opened on ``/review`` in Debian's Chromium (Playwright). The last test does the README's
panel example (its recipe and review, read from the README) on the shipped models, checks the
answers the README shows, and reviews one board of it for the README's picture.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from helpers.browser import SCREENSHOT_MAX_BYTES, collect_problems, save_screenshot
from helpers.browser import browser as browser  # noqa: F401 - the module's fixture
from helpers.live_server import live_server_running
from helpers.server import ServerProcess

from app.core.config import DEFAULT_WEIGHTS
from training.synth import encode, make_board

REPO_ROOT = Path(__file__).resolve().parents[2]
# Written over the README's picture only when asked (PCB_PANEL_SCREENSHOT_OUT=
# docs/img/review-panel.png): a test run never rewrites a tracked file on its own.
PANEL_SCREENSHOT = Path(
    os.environ.get("PCB_PANEL_SCREENSHOT_OUT")
    or Path(tempfile.gettempdir()) / "pcb-inspect-review-panel.png"
)

SIDE = 192
LEFT, RIGHT = make_board(seed=5, size=SIDE), make_board(seed=6, size=SIDE)
PANEL = encode(np.hstack([LEFT.image, RIGHT.image]))
GOLDEN = encode(np.hstack([LEFT.template, RIGHT.template]))


@pytest.fixture(scope="module")
def server(tiny_weights: Path, tiny_pair_weights: Path,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with live_server_running(
        tiny_weights, tmp_path_factory.mktemp("review_units_server"),
        env={"PCB_IMAGES_KEEP": "all"}, pair_weights_path=str(tiny_pair_weights),
        data_dir=str(tmp_path_factory.mktemp("review_units_data")),
    ) as running:
        yield running


@pytest.fixture(scope="module")
def panel(server: ServerProcess) -> dict[str, Any]:
    return _failed_panel(server)


def _pixel(page: Any, x: int, y: int) -> list[int]:
    return list(page.evaluate(
        "([x, y]) => Array.from(document.querySelector('canvas')"
        ".getContext('2d').getImageData(x, y, 1, 1).data)", [x, y]))


def _failed_panel(server: ServerProcess) -> dict[str, Any]:
    """The panel inspected under a recipe whose left board holds the first defect found and
    whose right board is a box the model found nothing in, at a threshold where it finds a
    few (the tiny random model's probabilities are not known in advance)."""
    url = server.url
    assert httpx.put(f"{url}/v1/golden-boards/PNL", files={"file": ("g.png", GOLDEN)},
                     timeout=60).status_code == 201
    for threshold in (0.05, 0.03, 0.02, 0.015, 0.01):
        found = httpx.post(f"{url}/predict", params={"product": "PNL", "threshold": threshold,
                                                     "mask": "none"},
                           files={"file": ("panel.png", PANEL, "image/png")}, timeout=120).json()
        if found["defects"]:
            break
    else:
        raise AssertionError("the tiny pair model finds no defect on the panel")
    x, y = found["defects"][0]["centroid"]
    cell = 48
    bad = [int(x // cell) * cell, int(y // cell) * cell]
    bad += [bad[0] + cell, bad[1] + cell]
    taken = {(int(d["centroid"][0] // cell), int(d["centroid"][1] // cell))
             for d in found["defects"]}
    i, j = next((i, j) for j in range(SIDE // cell) for i in range(2 * SIDE // cell)
                if (i, j) not in taken)
    good = [i * cell, j * cell, (i + 1) * cell, (j + 1) * cell]
    recipe = {"units": [{"position": 1, "bbox": bad}, {"position": 2, "bbox": good}]}
    assert httpx.put(f"{url}/v1/products/PNL/recipe", json=recipe, timeout=30).status_code == 201
    body: dict[str, Any] = httpx.post(
        f"{url}/predict", params={"product": "PNL", "threshold": threshold, "mask": "none",
                                  "serial": "PAN-1"},
        files={"file": ("panel.png", PANEL, "image/png")}, timeout=120).json()
    assert [u["verdict"] for u in body["units"]] == ["fail", "pass"], body["units"]
    return {**body, "threshold": threshold}


@pytest.mark.slow
def test_the_review_page_frames_and_lists_the_boards_of_a_panel(
        server: ServerProcess, browser: Any, panel: dict[str, Any]) -> None:
    body = panel
    page = browser.new_page(viewport={"width": 1440, "height": 960})
    problems = collect_problems(page)
    page.goto(f"{server.url}/review")
    page.wait_for_selector(f'#board-area[data-inspection-id="{body["inspection_id"]}"]',
                           timeout=60_000)
    page.wait_for_selector('#review-canvas[data-rendered="image"]', timeout=60_000)

    assert page.is_visible("#insp-units-fact")
    assert page.inner_text("#insp-units-title") == "Boards (recipe PNL rev. 1)"
    items = page.locator("#insp-units li")
    assert items.evaluate_all("ls => ls.map(l => [l.dataset.position, l.dataset.verdict])") == [
        ["1", "fail"], ["2", "pass"]]
    first = body["units"][0]
    assert items.nth(0).inner_text() == (
        f"1 PAN-1-1: FAIL (calls {', '.join(map(str, first['defect_ids']))})")
    assert items.nth(1).inner_text() == "2 PAN-1-2: PASS"

    # The frames, on the canvas: red along the failed board's left edge, green the other's.
    for unit, rgb in ((body["units"][0], [220, 0, 0]), (body["units"][1], [0, 150, 0])):
        x0, y0, _, y1 = unit["bbox"]
        # Past the label in the top-left corner, on the frame's inner stroke.
        assert _pixel(page, x0 + 1, y1 - 4)[:3] == rgb, unit
    assert problems == []


@pytest.mark.slow
def test_the_inspection_page_frames_and_lists_the_boards_of_a_panel(
        server: ServerProcess, browser: Any, panel: dict[str, Any]) -> None:
    page = browser.new_page(viewport={"width": 1440, "height": 960})
    problems = collect_problems(page)
    page.goto(f"{server.url}/")
    page.wait_for_selector('#product option[value="PNL"]', state="attached")
    page.select_option("#product", "PNL")
    page.click("details.settings summary")
    page.fill("#threshold", str(panel["threshold"]))
    with page.expect_response(lambda r: "/predict" in r.url):
        page.set_input_files("#file", {"name": "panel.png", "mimeType": "image/png",
                                       "buffer": PANEL})
    page.wait_for_selector('#canvas[data-rendered="true"]', timeout=60_000)
    assert page.inner_text("#units-title") == "Boards (recipe PNL rev. 1)"
    items = page.locator("#units li")
    assert items.evaluate_all("ls => ls.map(l => [l.dataset.position, l.dataset.verdict])") == [
        ["1", "fail"], ["2", "pass"]]
    for unit, rgb in ((panel["units"][0], [220, 0, 0]), (panel["units"][1], [0, 150, 0])):
        x0, y0, _, y1 = unit["bbox"]
        assert _pixel(page, x0 + 1, y1 - 4)[:3] == rgb, unit
    assert problems == []


def _rows(page: Any) -> list[list[str]]:
    """The review table's rows: [kind, position or index, outcome, reviewed verdict]."""
    return [list(r) for r in page.locator("#review-defects tbody tr").evaluate_all(
        "rs => rs.map(r => [r.className || 'call', r.dataset.position || r.dataset.index || "
        "r.dataset.defectId || '', r.dataset.outcome || r.dataset.verdict || '', "
        "r.dataset.reviewed || ''])")]


def _client_point(page: Any, x: float, y: float) -> tuple[float, float]:
    """Where the image pixel (x, y) is on the screen, through the canvas's view (zoom) and its
    letterboxing."""
    point = page.evaluate("""([x, y]) => {
        const c = document.getElementById('review-canvas');
        const [vx, vy, vx1] = c.dataset.view.split(',').map(Number);
        const r = c.getBoundingClientRect();
        const s = Math.min(r.width / c.width, r.height / c.height);
        const k = c.width / (vx1 - vx);  // canvas pixels per image pixel
        return [r.left + (r.width - c.width * s) / 2 + (x - vx + 0.5) * k * s,
                r.top + (r.height - c.height * s) / 2 + (y - vy + 0.5) * k * s];
    }""", [x, y])
    return float(point[0]), float(point[1])


@pytest.mark.slow
def test_a_panel_is_reviewed_board_by_board(
        server: ServerProcess, browser: Any, panel: dict[str, Any]) -> None:
    """The calls are grouped by board in panel order with both verdicts; one click marks a
    board's calls; the reviewed verdicts follow live; a board's name zooms to it; a box drawn
    there lands on it (by the service's rule); the stored review agrees."""
    # A fresh inspection of the panel: the newest failed board, first in the queue.
    body = httpx.post(f"{server.url}/predict",
                      params={"product": "PNL", "threshold": panel["threshold"], "mask": "none",
                              "serial": "PAN-2"},
                      files={"file": ("panel.png", PANEL, "image/png")}, timeout=120).json()
    insp = body["inspection_id"]
    one, two = body["units"]
    outside = [d["id"] for d in body["defects"]
               if d["id"] not in one["defect_ids"] + two["defect_ids"]]
    page = browser.new_page(viewport={"width": 1440, "height": 960})
    problems = collect_problems(page)
    page.goto(f"{server.url}/review")
    page.wait_for_selector(f'#board-area[data-inspection-id="{insp}"]', timeout=60_000)
    page.wait_for_selector('#review-canvas[data-rendered="image"]', timeout=60_000)
    # Unmarked calls count as confirmed: board 1 fails, board 2 (no call) passes.
    page.wait_for_selector('tr.unit-head[data-position="1"][data-reviewed="fail"]')
    page.wait_for_selector('tr.unit-head[data-position="2"][data-reviewed="pass"]')
    index = {d["id"]: str(i) for i, d in enumerate(body["defects"])}
    expected = [["unit-head", "1", "fail", "fail"],
                *[["call", index[i], "default", ""] for i in one["defect_ids"]],
                ["unit-head", "2", "pass", "pass"]]
    if outside:
        expected += [["group-head group-outside", "", "", ""],
                     *[["call", index[i], "default", ""] for i in outside]]
    assert _rows(page) == expected
    head = page.locator('tr.unit-head[data-position="1"]')
    assert head.locator(".unit-zoom").inner_text() == "Board 1 PAN-2-1"
    assert head.locator(".unit-verdict").inner_text() == "AOI FAIL"
    assert page.locator('tr.unit-head[data-position="2"] .unit-false').is_disabled()

    # One click: every call of board 1 false, and its reviewed verdict passes.
    head.locator(".unit-false").click()
    page.wait_for_selector('tr.unit-head[data-position="1"][data-reviewed="pass"]')
    assert head.locator(".unit-reviewed").inner_text() == "Review PASS"
    calls = [r for r in _rows(page) if r[0] == "call"]
    assert [r[2] for r in calls[:len(one["defect_ids"])]] == ["false_call"] * len(
        one["defect_ids"])
    assert all(r[2] == "default" for r in calls[len(one["defect_ids"]):])  # the others stay

    # Board 2's name zooms to it (with a margin) and frames it.
    page.locator('tr.unit-head[data-position="2"] .unit-zoom').click()
    x0, y0, x1, y1 = two["bbox"]
    view = [int(v) for v in page.get_attribute("#review-canvas", "data-view").split(",")]
    assert view[0] <= x0 and view[1] <= y0 and view[2] >= x1 and view[3] >= y1, view
    assert (view[2] - view[0]) < 2 * (x1 - x0) and view != [0, 0, 2 * SIDE, SIDE]
    assert page.get_attribute('tr.unit-head[data-position="2"] .unit-zoom',
                              "aria-pressed") == "true"
    # A missed box drawn in it (zoomed): placed on board 2, which now fails.
    page.keyboard.press("m")
    page.mouse.move(*_client_point(page, x0 + 10, y0 + 10))
    page.mouse.down()
    page.mouse.move(*_client_point(page, x0 + 22, y0 + 20), steps=5)
    page.mouse.up()
    page.keyboard.press("1")
    page.wait_for_selector('tr.unit-head[data-position="2"][data-reviewed="fail"]')
    rows = _rows(page)
    at = rows.index(["unit-head", "2", "pass", "fail"])
    assert rows[at + 1][0] == "call" and rows[at + 1][2] == "missed"
    # Z shows the whole panel again.
    page.keyboard.press("z")
    assert page.get_attribute("#review-canvas", "data-view") == f"0,0,{2 * SIDE},{SIDE}"

    page.keyboard.press("Enter")
    page.wait_for_selector(f'#review-result[data-inspection-id="{insp}"]', timeout=30_000)
    assert "Boards after review: 1 PASS, 2 FAIL." in page.inner_text("#review-result")
    stored = httpx.get(f"{server.url}/v1/inspections/{insp}", timeout=30).json()
    assert [(u["position"], u["verdict"], u["reviewed_verdict"]) for u in stored["units"]] == [
        (1, "fail", "pass"), (2, "pass", "fail")]
    (missed,) = stored["reviews"][-1]["body"]["missed"]
    mx0, my0, mx1, my1 = missed["bbox"]
    assert x0 <= mx0 < mx1 <= x1 and y0 <= my0 < my1 <= y1, (missed, two["bbox"])
    assert stored["reviews"][-1]["units"][1]["missed"] == [0]
    assert problems == []


@pytest.mark.slow
def test_calls_set_aside_by_a_zone_are_listed_apart_for_audit_only(
        server: ServerProcess, browser: Any, panel: dict[str, Any]) -> None:
    """Under a recipe with an ignore zone over a call on no board: that call is listed after
    the boards with its zone, cannot be selected, and is not part of the review sent."""
    units = panel["units"]
    off = [d for d in panel["defects"]
           if d["id"] not in units[0]["defect_ids"] + units[1]["defect_ids"]]
    assert off, "every call of the panel is on a board: no call for the zone to set aside"
    cx, cy = off[-1]["centroid"]
    zone = [[cx - 3, cy - 3], [cx + 3, cy - 3], [cx + 3, cy + 3], [cx - 3, cy + 3]]
    url = server.url
    assert httpx.put(f"{url}/v1/golden-boards/PNZ", files={"file": ("g.png", GOLDEN)},
                     timeout=60).status_code == 201
    recipe = {"units": [{"position": u["position"], "bbox": u["bbox"]} for u in units],
              "zones": [{"name": "fiducial 2", "polygon": zone, "action": "ignore"}]}
    assert httpx.put(f"{url}/v1/products/PNZ/recipe", json=recipe, timeout=30).status_code == 201
    body = httpx.post(f"{url}/predict", params={"product": "PNZ", "threshold": panel["threshold"],
                                                "mask": "none", "serial": "PAN-Z"},
                      files={"file": ("panel.png", PANEL, "image/png")}, timeout=120).json()
    (ignored,) = body["ignored"]
    assert ignored["zone"] == "fiducial 2"
    page = browser.new_page(viewport={"width": 1440, "height": 960})
    problems = collect_problems(page)
    page.goto(f"{url}/review")
    page.wait_for_selector(f'#board-area[data-inspection-id="{body["inspection_id"]}"]',
                           timeout=60_000)
    page.wait_for_selector('tr.unit-head[data-position="1"][data-reviewed="fail"]')
    rows = _rows(page)
    assert rows[-2][0] == "group-head group-ignored" and rows[-1][0] == "ignored-call"
    assert page.inner_text("tr.group-ignored") == (
        "Set aside by the recipe (1): for audit, not reviewed")
    row = page.locator("tr.ignored-call")
    assert row.get_attribute("data-zone") == "fiducial 2"
    assert row.get_attribute("data-index") is None
    assert "zone fiducial 2: in an ignore zone" in row.inner_text()
    # Not a call to review: clicking it selects nothing, and the review does not name it.
    selected = page.get_attribute('#review-defects tr[aria-current="true"]', "data-index")
    row.click()
    assert page.get_attribute('#review-defects tr[aria-current="true"]',
                              "data-index") == selected
    # The calls to review are the counted ones, each listed once.
    assert sorted(int(r[1]) for r in rows if r[0] == "call") == list(range(len(body["defects"])))
    page.keyboard.press("Enter")
    page.wait_for_selector(f'#review-result[data-inspection-id="{body["inspection_id"]}"]',
                           timeout=30_000)
    stored = httpx.get(f"{url}/v1/inspections/{body['inspection_id']}", timeout=30).json()
    assert [o["defect_id"] for o in stored["reviews"][-1]["body"]["defects"]] == [
        d["id"] for d in body["defects"]]
    assert ignored["id"] not in [d["id"] for d in body["defects"]]
    assert problems == []


# --- the README's panel, on the shipped models (the README's picture) --------------------------


def _readme_panel_example() -> dict[str, Any]:
    """The README's panel example: the recipe it stores, the answer it shows, the review it
    previews and sends, and what the preview and the review answer."""
    readme = (REPO_ROOT / "README.md").read_text()
    section = readme[readme.index("### Product recipes: panels and zones"):]
    recipe = re.search(r"cat > recipe\.json <<'JSON'\n(.*?)\nJSON\n", section, re.DOTALL)
    assert recipe, "README's panel example lost its recipe.json"
    shown = re.search(r"What it answered.*?```json\n(.*?)```", section, re.DOTALL)
    assert shown, "README's panel example lost its answer"
    # The README abbreviates the recipe's sha256.
    answer = re.sub(r'"sha256": "([0-9a-f]+)\.\.\."', r'"sha256_prefix": "\1"', shown.group(1))
    review = re.search(r"Reviewing it:.*?/review/preview.*?-d '(\{.*?\})'.*?```json\n(.*?)```",
                       section, re.DOTALL)
    assert review, "README's panel example lost its review"
    # Two lines of ``jq -c`` (the preview), then the review's answer.
    first, second, rest = review.group(2).split("\n", 2)
    alone = re.search(r"A result \(board 1 of the panel alone.*?```json\n(.*?)```", section,
                      re.DOTALL)
    assert alone, "README lost its example of a result"
    return {"recipe": json.loads(recipe.group(1)), "answer": json.loads(answer),
            "review": json.loads(review.group(1)),
            "preview": [json.loads(first), json.loads(second)], "reviewed": json.loads(rest),
            "alone": json.loads(alone.group(1))}


@pytest.fixture(scope="module")
def shipped_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server on the shipped single and pair models that records and keeps every board."""
    pair = DEFAULT_WEIGHTS.with_name("pcb_pair_unet.keras")
    assert DEFAULT_WEIGHTS.is_file() and pair.is_file(), "shipped weights missing"
    with live_server_running(
        DEFAULT_WEIGHTS, tmp_path_factory.mktemp("shipped_panel_server"),
        # float32 pinned: with "auto" a CPU with AVX512_BF16/AMX runs bfloat16 and one without
        # float32, and a call near the single model's 0.98 operating point could then come and
        # go with the CI machine; float32 kernels agree across CPUs to far below that.
        env={"PCB_IMAGES_KEEP": "all", "PCB_PRECISION": "float32"},
        pair_weights_path=str(pair),
        data_dir=str(tmp_path_factory.mktemp("shipped_panel_data")),
    ) as running:
        yield running


@pytest.mark.slow
def test_the_readme_panel_on_the_shipped_models_reviewed_board_by_board(
        shipped_server: ServerProcess, browser: Any) -> None:
    """The README's two-board panel with its ignore zones, as its commands make it
    (``training.synth --boards 2 --seed 3 --n-defects 3,0``): the shipped models answer what
    the README shows (the panel, its review preview, board 1 alone); on the review page board
    1's call is confirmed and the defect the model missed drawn on it, while board 2 stays
    untouched; the picture is taken then."""
    example = _readme_panel_example()
    recipe, shown = example["recipe"], example["answer"]
    boards = [make_board(seed=3, size=640, n_defects=3), make_board(seed=4, size=640,
                                                                    n_defects=0)]
    panel = encode(np.hstack([b.image for b in boards]))
    golden = encode(np.hstack([b.template for b in boards]))
    url = shipped_server.url
    assert httpx.put(f"{url}/v1/golden-boards/P2", files={"file": ("golden_panel.png", golden)},
                     timeout=120).status_code == 201
    assert httpx.put(f"{url}/v1/products/P2/recipe", json=recipe, timeout=30).status_code == 201
    body = httpx.post(f"{url}/predict", params={"product": "P2", "serial": "SER123",
                                                "mask": "none"},
                      files={"file": ("panel.png", panel, "image/png")}, timeout=300).json()
    # What the README shows (confidences aside: they move in the last digits with the CPU).
    assert body["summary"]["verdict"] == shown["verdict"]
    assert body["units"] == shown["units"]
    assert [{k: v for k, v in d.items() if k != "confidence"} for d in body["ignored"]] == [
        {k: v for k, v in d.items() if k != "confidence"} for d in shown["ignored"]]
    assert body["recipe"]["sha256"].startswith(shown["recipe"].pop("sha256_prefix"))
    assert {k: v for k, v in body["recipe"].items() if k != "sha256"} == shown["recipe"]
    # The mousebite the generator drew on board 1 is the one the pair model misses.
    (mousebite,) = [d for d in boards[0].defects if d.class_name == "mousebite"]
    assert all(d["class"] != "mousebite" for d in body["defects"]), body["defects"]
    # The README's review, previewed (nothing recorded): the units it shows.
    preview = httpx.post(f"{url}/v1/inspections/{body['inspection_id']}/review/preview",
                         json=example["review"], timeout=30).json()
    assert [{k: u[k] for k in ("position", "verdict", "reviewed_verdict")}
            for u in preview["units"]] == example["preview"]
    assert preview == example["reviewed"]
    page = browser.new_page(viewport={"width": 1440, "height": 1152})
    problems = collect_problems(page)
    page.goto(f"{url}/review")
    insp = body["inspection_id"]
    page.wait_for_selector(f'#board-area[data-inspection-id="{insp}"]', timeout=60_000)
    page.wait_for_selector('#review-canvas[data-rendered="image"]', timeout=60_000)
    page.wait_for_selector('tr.unit-head[data-position="1"][data-reviewed="fail"]')
    head = page.locator('tr.unit-head[data-position="1"]')
    head.locator(".unit-confirm").click()
    page.keyboard.press("m")
    x0, y0, x1, y1 = mousebite.bbox
    page.mouse.move(*_client_point(page, x0 - 2, y0 - 2))
    page.mouse.down()
    page.mouse.move(*_client_point(page, x1 + 1, y1 + 1), steps=5)
    page.mouse.up()
    classes = httpx.get(f"{url}/v1/model", timeout=30).json()["classes"]
    page.keyboard.press(str(classes.index("mousebite") + 1))
    # The box is placed on its board by the service (the review preview), then listed there.
    page.wait_for_selector('tr.unit-head[data-position="2"][data-reviewed="pass"]')
    page.wait_for_selector('tr.unit-head[data-position="1"][data-reviewed="fail"]')
    rows = _rows(page)
    at = rows.index(["unit-head", "2", "pass", "pass"])
    assert rows[0] == ["unit-head", "1", "fail", "fail"]
    assert [r[2] for r in rows[1:at]] == ["confirmed"] * len(body["units"][0]["defect_ids"]) + [
        "missed"]
    assert rows[-1][0] == "ignored-call"
    page.locator("#review-defects tbody tr").nth(1).click()  # the call, selected on the board
    save_screenshot(page, PANEL_SCREENSHOT)
    assert PANEL_SCREENSHOT.stat().st_size < SCREENSHOT_MAX_BYTES

    page.keyboard.press("Enter")
    page.wait_for_selector(f'#review-result[data-inspection-id="{insp}"]', timeout=30_000)
    stored = httpx.get(f"{url}/v1/inspections/{insp}", timeout=30).json()
    assert [(u["position"], u["verdict"], u["reviewed_verdict"]) for u in stored["units"]] == [
        (1, "fail", "fail"), (2, "pass", "pass")]
    (missed,) = stored["reviews"][-1]["body"]["missed"]
    assert missed["class"] == "mousebite"
    mx0, my0, mx1, my1 = missed["bbox"]
    assert x0 - 4 <= mx0 <= x0 and x1 <= mx1 <= x1 + 4 and y0 - 4 <= my0 <= y0, missed
    # The README's example of a result: board 1 alone, on the single model (after the review:
    # it fails too, and the newest failed board opens first).
    alone = httpx.post(f"{url}/predict", files={"file": ("board.png", encode(boards[0].image),
                                                         "image/png")}, timeout=120).json()
    shown_alone = example["alone"]
    assert alone.keys() == shown_alone.keys()
    for key in ("image", "model", "summary", "params", "tiles", "reference", "units", "ignored",
                "recipe", "reference_defects"):
        assert alone[key] == shown_alone[key], key
    assert [{k: v for k, v in d.items() if k != "confidence"} for d in alone["defects"]] == [
        {k: v for k, v in d.items() if k != "confidence"} for d in shown_alone["defects"]]

    assert problems == []
