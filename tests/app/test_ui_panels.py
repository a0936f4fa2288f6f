"""The review and inspection pages with a panel: a product recipe's boards are framed on the
board in their verdict's colour and listed with their verdicts.

A real server subprocess with the tiny single and pair models records every inspection and
keeps every image; a two-board synthetic panel is inspected with ``?product=`` through the API,
then opened on ``/review`` in Debian's Chromium (Playwright).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from helpers.browser import browser as browser  # noqa: F401 - the module's fixture
from helpers.browser import collect_problems
from helpers.live_server import live_server_running
from helpers.server import ServerProcess

from training.synth import encode, make_board

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
