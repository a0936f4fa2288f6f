"""Reviews board by board through the API: the review's answer, the stored reviews and the
inspection record give each unit of a panel its reviewed verdict next to the model's, and
``POST .../review/preview`` gives the same without recording anything.

The tiny real pair model inspects a two-board synthetic panel under a recipe drawn around what
it found (as tests/app/test_recipes.py does): unit 1 holds the first call, unit 2 none, and the
other calls lie on no unit.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.helpers.app import ADMIN, INSPECT, REVIEW, assert_error, panel_client
from tests.helpers.boards import board_png, two_board_panel

SIDE = 256
BOARDS = two_board_panel(SIDE)
CELL = 64


@pytest.fixture(scope="module")
def client(tiny_weights: Path, tiny_pair_weights: Path,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    with panel_client(tiny_weights, tiny_pair_weights, tmp_path_factory.mktemp("data"),
                      BOARDS.golden_png, ("UNITS", "PLAIN")) as c:
        yield c


def inspect(client: TestClient, product: str, threshold: float) -> dict[str, Any]:
    r = client.post("/predict", params={"product": product, "threshold": threshold,
                                        "mask": "none", "serial": "PAN-7"},
                    files={"file": ("panel.png", BOARDS.png, "image/png")}, headers=INSPECT)
    assert r.status_code == 200, r.text[:500]
    body: dict[str, Any] = r.json()
    return body


@pytest.fixture(scope="module")
def panel(client: TestClient) -> dict[str, Any]:
    """A panel inspected under a two-unit recipe: unit 1 (failed) holds the first call, unit 2
    (passed) holds none; ``frames`` are the units' boxes."""
    for threshold in (0.05, 0.03, 0.02, 0.015, 0.01):
        found = inspect(client, "PLAIN", threshold)["defects"]
        if found:
            break
    else:
        raise AssertionError("the tiny pair model finds no defect on the panel")
    taken = {(int(d["centroid"][0] // CELL), int(d["centroid"][1] // CELL)) for d in found}
    cx, cy = int(found[0]["centroid"][0] // CELL), int(found[0]["centroid"][1] // CELL)
    fx, fy = next((i, j) for j in range(SIDE // CELL) for i in range(2 * SIDE // CELL)
                  if (i, j) not in taken)
    frames = [[cx * CELL, cy * CELL, (cx + 1) * CELL, (cy + 1) * CELL],
              [fx * CELL, fy * CELL, (fx + 1) * CELL, (fy + 1) * CELL]]
    r = client.put("/v1/products/UNITS/recipe", headers=ADMIN, json={
        "units": [{"position": 1, "bbox": frames[0]}, {"position": 2, "bbox": frames[1]}]})
    assert r.status_code == 201, r.text
    body = inspect(client, "UNITS", threshold)
    assert [u["verdict"] for u in body["units"]] == ["fail", "pass"], body["units"]
    return {**body, "frames": frames}


def ids_in(defects: list[dict[str, Any]], box: list[int]) -> list[int]:
    x0, y0, x1, y1 = box
    return [d["id"] for d in defects
            if x0 <= d["centroid"][0] < x1 and y0 <= d["centroid"][1] < y1]


def inside(frame: list[int]) -> list[int]:
    """A 4 x 4 missed box in the middle of ``frame``."""
    x, y = (frame[0] + frame[2]) // 2, (frame[1] + frame[3]) // 2
    return [x, y, x + 4, y + 4]


def record(client: TestClient, inspection_id: str) -> dict[str, Any]:
    r = client.get(f"/v1/inspections/{inspection_id}", headers=REVIEW)
    assert r.status_code == 200, r.text[:500]
    body: dict[str, Any] = r.json()
    return body


def test_a_panel_review_gives_each_board_its_reviewed_verdict(
        client: TestClient, panel: dict[str, Any]) -> None:
    insp = panel["inspection_id"]
    one, two = panel["frames"]
    on_one = ids_in(panel["defects"], one)
    assert on_one == panel["units"][0]["defect_ids"] and on_one
    elsewhere = [d["id"] for d in panel["defects"] if d["id"] not in on_one]
    # Unit 1's calls are false, the rest confirmed; a missed box on unit 2, one off both.
    off = next(inside([x, y, x + CELL, y + CELL])
               for y in range(0, SIDE, CELL) for x in range(0, 2 * SIDE, CELL)
               if [x, y, x + CELL, y + CELL] not in (one, two))
    body = {"defects": [{"defect_id": d["id"],
                         "outcome": "false_call" if d["id"] in on_one else "confirmed"}
                        for d in panel["defects"]],
            "missed": [{"bbox": inside(two), "class": "spur"}, {"bbox": off, "class": "open"}]}

    # The preview first: the verdicts, and nothing recorded.
    preview = client.post(f"/v1/inspections/{insp}/review/preview", json=body, headers=REVIEW)
    assert preview.status_code == 200, preview.text
    got = preview.json()
    assert [(u["position"], u["identifier"], u["verdict"], u["reviewed_verdict"])
            for u in got["units"]] == [(1, "PAN-7-1", "fail", "pass"),
                                       (2, "PAN-7-2", "pass", "fail")]
    assert [u["missed"] for u in got["units"]] == [[], [0]]
    assert [(u["false_calls"], u["confirmed"]) for u in got["units"]] == [(len(on_one), 0),
                                                                        (0, 0)]
    assert got["outside"] == {"defect_ids": elsewhere, "missed": [1]}
    before = record(client, insp)
    assert before["reviewed"] is False and before["reviews"] == []
    assert [u["reviewed_verdict"] for u in before["units"]] == [None, None]

    # The review: the stored review (every field it had) with the same units.
    r = client.post(f"/v1/inspections/{insp}/review", json=body, headers=REVIEW)
    assert r.status_code == 201, r.text
    review = r.json()
    assert {"id", "inspection_id", "reviewer", "created_at", "digest", "body"} < set(review)
    # The stored body is canonical (missed boxes sorted), and the units index it.
    stored_missed = [m["bbox"] for m in review["body"]["missed"]]
    assert [[stored_missed[i] for i in u["missed"]] for u in review["units"]] == [
        [], [inside(two)]]
    assert [u["reviewed_verdict"] for u in review["units"]] == ["pass", "fail"]
    assert [stored_missed[i] for i in review["outside"]["missed"]] == [off]

    # The record: each unit with the current review's verdict, each review with its units.
    after = record(client, insp)
    assert [(u["position"], u["verdict"], u["reviewed_verdict"]) for u in after["units"]] == [
        (1, "fail", "pass"), (2, "pass", "fail")]
    assert after["reviews"][-1]["units"] == review["units"]
    # Every field the units had is still there.
    assert {"position", "identifier", "verdict", "defect_ids", "bbox"} < set(after["units"][0])

    # The same review again: 200, the same units.
    again = client.post(f"/v1/inspections/{insp}/review", json=body, headers=REVIEW)
    assert again.status_code == 200 and again.json()["units"] == review["units"]
    # A second review (everything false, no missed box) becomes the current verdicts.
    clean = {"defects": [{"defect_id": d["id"], "outcome": "false_call"}
                         for d in panel["defects"]], "missed": []}
    assert client.post(f"/v1/inspections/{insp}/review", json=clean,
                       headers=REVIEW).status_code == 201
    latest = record(client, insp)
    assert [u["reviewed_verdict"] for u in latest["units"]] == ["pass", "pass"]
    assert [[u["reviewed_verdict"] for u in r["units"]] for r in latest["reviews"]] == [
        ["pass", "fail"], ["pass", "pass"]]


def test_a_board_without_units_is_reviewed_as_one_unit(client: TestClient,
                                                       tiny_weights: Path) -> None:
    r = client.post("/predict", params={"threshold": 0.01, "mask": "none"},
                    files={"file": ("b.png", board_png(64, 64, seed=1), "image/png")},
                    headers=INSPECT)
    assert r.status_code == 200, r.text[:300]
    inspection = r.json()
    assert inspection["defects"], "the tiny model finds nothing at threshold 0.01"
    insp = inspection["inspection_id"]
    body = {"defects": [{"defect_id": d["id"], "outcome": "false_call"}
                        for d in inspection["defects"]], "missed": []}
    review = client.post(f"/v1/inspections/{insp}/review", json=body, headers=REVIEW).json()
    (unit,) = review["units"]
    assert (unit["position"], unit["bbox"], unit["verdict"], unit["reviewed_verdict"]) == (
        1, [0, 0, 64, 64], "fail", "pass")
    assert unit["defect_ids"] == [d["id"] for d in inspection["defects"]]
    assert review["outside"] == {"defect_ids": [], "missed": []}
    (recorded,) = record(client, insp)["units"]
    assert recorded["reviewed_verdict"] == "pass"


@pytest.mark.parametrize("path", ["review", "review/preview"])
def test_reviews_that_do_not_fit_the_board_are_4xx_json(
        client: TestClient, panel: dict[str, Any], path: str) -> None:
    url = f"/v1/inspections/{panel['inspection_id']}/{path}"
    err = assert_error(client.post(url, json={"defects": [
        {"defect_id": 999, "outcome": "confirmed"}]}, headers=REVIEW), 422, "unknown_defect")
    assert "999" in err["message"]
    err = assert_error(client.post(url, json={"missed": [
        {"bbox": [500, 10, 600, 20], "class": "spur"}]}, headers=REVIEW), 422,
        "box_outside_image")
    assert "[500, 10, 600, 20]" in err["message"]
    assert_error(client.post(url, json={"missed": [{"bbox": [1, 1, 5, 5], "class": "dust"}]},
                             headers=REVIEW), 422, "unknown_class")
    assert_error(client.post(url, json={}, headers=REVIEW), 422)
    assert_error(client.post(url, json={"missed": [{"bbox": [1, 1, 5, 5], "class": "spur"}]
                                        * 501}, headers=REVIEW), 422)
    assert_error(client.post(url, content=b"{not json", headers={
        **REVIEW, "Content-Type": "application/json"}), 422)
    assert_error(client.post(url, json={"missed": []}), 401)
    assert_error(client.post(url, json={"missed": []}, headers=INSPECT), 403)
    assert_error(client.post(f"/v1/inspections/insp_{'0' * 26}/{path}", json={"missed": []},
                             headers=REVIEW), 404, "unknown_inspection")
