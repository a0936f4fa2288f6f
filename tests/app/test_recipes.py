"""Product recipes through the API: ``/v1/products/{product}/recipe`` and its revisions, and
``?product=`` inspections of a two-board panel judged per board, with an ignore zone.

The tiny real pair model runs in the app's lifespan. The panel is two synthetic boards side by
side (:mod:`training.synth`), its golden board their two templates. What the tiny random
model finds is not known in advance: the tests first inspect the panel without a recipe, then
draw the units and zones around what it found, and check the verdicts against that.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.records import META_MAX_CHARS
from tests.helpers.app import (
    ADMIN,
    INSPECT,
    REVIEW,
    assert_error,
    panel_client,
    png_array,
    store_golden,
)
from tests.helpers.boards import encode, two_board_panel

SIDE = 256
BOARDS = two_board_panel(SIDE)
WIDTH, HEIGHT = 2 * SIDE, SIDE
HALVES = BOARDS.halves
CELL = 64


@pytest.fixture(scope="module")
def client(tiny_weights: Path, tiny_pair_weights: Path,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    with panel_client(tiny_weights, tiny_pair_weights, tmp_path_factory.mktemp("data"),
                      BOARDS.golden_png, ("panel",)) as c:
        yield c


def put_golden(client: TestClient, product: str, data: bytes = BOARDS.golden_png) -> None:
    store_golden(client, product, data)


def put_recipe(client: TestClient, product: str, body: Any, headers: Any = ADMIN) -> Any:
    return client.put(f"/v1/products/{product}/recipe", json=body, headers=headers)


def inspect(client: TestClient, product: str, threshold: float, status: int = 200,
            **params: Any) -> dict[str, Any]:
    r = client.post("/predict", params={"product": product, "threshold": threshold,
                                        "mask": "none", **params},
                    files={"file": ("panel.png", BOARDS.png, "image/png")}, headers=INSPECT)
    assert r.status_code == status, r.text[:500]
    body: dict[str, Any] = r.json()
    return body


@pytest.fixture(scope="module")
def found(client: TestClient) -> tuple[float, list[dict[str, Any]]]:
    """A threshold at which the tiny model finds a few defects on the panel (a product with
    only a golden board), and those defects."""
    put_golden(client, "plain")
    for threshold in (0.05, 0.03, 0.02, 0.015, 0.01):
        body = inspect(client, "plain", threshold)
        if len(body["defects"]) >= 2:
            return threshold, body["defects"]
    raise AssertionError("the tiny pair model finds no defects on the panel")


def cells(defects: list[dict[str, Any]]) -> tuple[list[int], list[int]]:
    """A CELL-sized box holding the first defect's centroid, and one holding no centroid."""
    def cell_of(x: float, y: float) -> tuple[int, int]:
        return int(x // CELL), int(y // CELL)

    taken = {cell_of(*d["centroid"]) for d in defects}
    cx, cy = cell_of(*defects[0]["centroid"])
    free = next((i, j) for j in range(HEIGHT // CELL) for i in range(WIDTH // CELL)
                if (i, j) not in taken)
    box = [cx * CELL, cy * CELL, (cx + 1) * CELL, (cy + 1) * CELL]
    return box, [free[0] * CELL, free[1] * CELL, (free[0] + 1) * CELL, (free[1] + 1) * CELL]


def overlay(client: TestClient, product: str, threshold: float) -> np.ndarray:
    r = client.post("/predict", params={"product": product, "threshold": threshold,
                                        "render": "overlay"},
                    files={"file": ("panel.png", BOARDS.png, "image/png")}, headers=INSPECT)
    assert r.status_code == 200, r.text[:300]
    return png_array(r.content)


def record_of(client: TestClient, inspection_id: str) -> dict[str, Any]:
    r = client.get(f"/v1/inspections/{inspection_id}", headers=REVIEW)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def ids_in(defects: list[dict[str, Any]], box: list[int]) -> list[int]:
    x0, y0, x1, y1 = box
    return [d["id"] for d in defects
            if x0 <= d["centroid"][0] < x1 and y0 <= d["centroid"][1] < y1]


# --- the recipe routes --------------------------------------------------------------------------


def test_recipe_revisions_are_kept_and_readable(client: TestClient) -> None:
    put_golden(client, "rev")
    first = put_recipe(client, "rev", {"units": HALVES})
    assert first.status_code == 201, first.text
    one = first.json()
    assert (one["product"], one["revision"], one["author"]) == ("rev", 1, "boss")
    assert one["units"] == HALVES and one["zones"] == [] and one["rules"]["min_area_px"] is None
    assert one["golden_board"]["width"] == WIDTH and one["golden_board"]["height"] == HEIGHT
    golden = client.get("/v1/golden-boards/rev", headers=INSPECT).json()
    assert one["golden_board"]["sha256"] == golden["sha256"]

    # The same recipe again (units in another order) is no change: 200, still revision 1.
    again = put_recipe(client, "rev", {"units": HALVES[::-1], "rules": {}})
    assert again.status_code == 200 and again.json() == one

    two = put_recipe(client, "rev", {"units": HALVES, "rules": {"min_area_px": 12}})
    assert two.status_code == 201 and two.json()["revision"] == 2
    assert two.json()["sha256"] != one["sha256"]
    assert client.get("/v1/products/rev/recipe", headers=INSPECT).json() == two.json()
    assert client.get("/v1/products/rev/recipe/revisions/1", headers=INSPECT).json() == one
    listed = client.get("/v1/products/rev/recipe/revisions", headers=INSPECT).json()
    assert listed["product"] == "rev" and listed["count"] == 2
    assert [(r["revision"], r["sha256"]) for r in listed["revisions"]] == [
        (1, one["sha256"]), (2, two.json()["sha256"])]


def test_unknown_recipes_and_revisions_are_404(client: TestClient) -> None:
    put_golden(client, "norecipe")
    assert_error(client.get("/v1/products/norecipe/recipe", headers=INSPECT), 404,
                 "unknown_recipe")
    assert_error(client.get("/v1/products/norecipe/recipe/revisions", headers=INSPECT), 404,
                 "unknown_recipe")
    put_golden(client, "R404")
    assert put_recipe(client, "R404", {}).status_code == 201
    err = assert_error(client.get("/v1/products/R404/recipe/revisions/7", headers=INSPECT),
                       404, "unknown_recipe")
    assert err["message"].startswith("No revision 7 of the recipe is stored for product 'R404'")
    # A recipe needs the product's golden board first.
    err = assert_error(put_recipe(client, "nogolden", {}), 404, "unknown_product")
    assert "PUT /v1/golden-boards/nogolden" in err["message"]


@pytest.mark.parametrize(("body", "field"), [
    ({"units": [{"position": 1, "bbox": [0, 0, 300, 256]},
                {"position": 2, "bbox": [256, 0, 512, 256]}]}, "units: "),
    ({"units": [{"position": 1, "bbox": [0, 0, 600, 256]}]}, "units[0].bbox: "),
    ({"units": [{"position": 1, "bbox": [0, 0, -1, 256]}]}, "units.0.bbox: "),
    ({"zones": [{"name": "rail", "action": "ignore",
                 "polygon": [[0, 0], [512, 0], [512, 300]]}]}, "zones[0].polygon: "),
    ({"zones": [{"name": "z", "action": "rules", "ignored_classes": ["dust"],
                 "polygon": [[0, 0], [9, 0], [9, 9]]}]}, "zones.0.ignored_classes: "),
    ({"zones": [{"name": "z", "action": "ignore", "polygon": [[0, 0], [1, 1]]}]},
     "zones.0.polygon: "),
    ({"zones": [{"name": "z", "action": "ignore", "polygon": [[0, 0], [9, 0], [9, 9]]}] * 65},
     "zones: "),
    ({"rules": {"threshold": 2}}, "rules.threshold: "),
    ({"rules": {"fail_rule": "any"}}, "rules.fail_rule: "),
    ({"extra": 1}, "extra: "),
])
def test_invalid_recipes_are_422_naming_the_field(client: TestClient, body: dict[str, Any],
                                                  field: str) -> None:
    err = assert_error(put_recipe(client, "panel", body), 422)
    assert err["message"].startswith(field), err["message"]
    assert_error(client.get("/v1/products/panel/recipe/revisions/1", headers=INSPECT), 404)


def test_bad_product_ids_and_bodies(client: TestClient) -> None:
    assert_error(put_recipe(client, "a%20b", {}), 422, "invalid_product")
    assert_error(client.get("/v1/products/a%20b/recipe", headers=INSPECT), 422,
                 "invalid_product")
    r = client.put("/v1/products/panel/recipe", content=b"{not json",
                   headers={**ADMIN, "content-type": "application/json"})
    assert_error(r, 422, "invalid_request")
    assert_error(client.get("/v1/products/panel/recipe/revisions/0", headers=INSPECT), 422)


def test_only_administrators_write_recipes(client: TestClient) -> None:
    put_golden(client, "roles")
    assert_error(put_recipe(client, "roles", {}, headers={}), 401, "unauthorized")
    for who in (INSPECT, REVIEW):
        err = assert_error(put_recipe(client, "roles", {}, headers=who), 403, "forbidden")
        assert "'admin'" in err["message"]
    assert put_recipe(client, "roles", {}).status_code == 201
    assert client.get("/v1/products/roles/recipe", headers=INSPECT).status_code == 200
    assert_error(client.get("/v1/products/roles/recipe"), 401, "unauthorized")


# --- inspections with a recipe ----------------------------------------------------------------


def test_without_a_recipe_one_unit_is_the_whole_panel(
        client: TestClient, found: tuple[float, list[dict[str, Any]]]) -> None:
    threshold, defects = found
    body = inspect(client, "plain", threshold, serial="PAN-9")
    assert body["recipe"] is None and body["ignored"] == []
    assert body["units"] == [{"position": 1, "identifier": "PAN-9", "verdict": "fail",
                              "defect_ids": [d["id"] for d in defects],
                              "bbox": [0, 0, WIDTH, HEIGHT]}]


def test_a_two_unit_panel_gets_one_pass_and_one_fail(
        client: TestClient, found: tuple[float, list[dict[str, Any]]]) -> None:
    threshold, defects = found
    bad, good = cells(defects)
    put_golden(client, "two")
    rev = put_recipe(client, "two", {"units": [{"position": 1, "bbox": bad},
                                               {"position": 2, "bbox": good}]}).json()
    body = inspect(client, "two", threshold, serial="SER123")
    assert body["recipe"] == {"product": "two", "revision": 1, "sha256": rev["sha256"]}
    assert body["defects"] == defects and body["ignored"] == []
    assert body["units"] == [
        {"position": 1, "identifier": "SER123-1", "verdict": "fail",
         "defect_ids": ids_in(defects, bad), "bbox": bad},
        {"position": 2, "identifier": "SER123-2", "verdict": "pass", "defect_ids": [],
         "bbox": good},
    ]
    assert body["summary"]["verdict"] == "fail"

    # The record keeps the revision and the units.
    record = record_of(client, body["inspection_id"])
    assert record["recipe"] == body["recipe"]
    assert [(u["position"], u["identifier"], u["verdict"], u["defect_ids"])
            for u in record["units"]] == [
        (u["position"], u["identifier"], u["verdict"], u["defect_ids"]) for u in body["units"]]

    # The overlay frames the failed board red and the other green (RGB here).
    framed = overlay(client, "two", threshold)
    assert framed[(bad[1] + bad[3]) // 2, bad[0]].tolist() == [220, 0, 0]
    assert framed[(good[1] + good[3]) // 2, good[0]].tolist() == [0, 150, 0]

    # The longest serial names its units serial-position, longer than any serial: the
    # answer and the record take them.
    longest = "S" * META_MAX_CHARS
    long_named = inspect(client, "two", threshold, serial=longest)
    assert [u["identifier"] for u in long_named["units"]] == [f"{longest}-1", f"{longest}-2"]
    assert [u["identifier"] for u in record_of(client, long_named["inspection_id"])["units"]] == [
        f"{longest}-1", f"{longest}-2"]

    # One serial per unit, by position.
    named = inspect(client, "two", threshold, unit_serials="L-1,R-2")
    assert [u["identifier"] for u in named["units"]] == ["L-1", "R-2"]
    err = assert_error(client.post(
        "/predict", params={"product": "two", "unit_serials": "only-one"},
        files={"file": ("panel.png", BOARDS.png, "image/png")}, headers=INSPECT), 422,
        "invalid_metadata")
    assert "one serial per unit (2, by position in revision 1" in err["message"]
    assert "received 1" in err["message"]
    err = assert_error(client.post(
        "/predict/batch", params={"product": "two", "unit_serials": "a,b"},
        files=[("files", ("panel.png", BOARDS.png, "image/png"))], headers=INSPECT), 422,
        "invalid_metadata")
    assert "/predict/batch takes none" in err["message"]

    # A batch judges each panel by the recipe too.
    batch = client.post("/predict/batch", params={"product": "two", "threshold": threshold},
                        files=[("files", ("panel.png", BOARDS.png, "image/png"))],
                        headers=INSPECT).json()
    assert [u["verdict"] for u in batch["results"][0]["result"]["units"]] == ["fail", "pass"]


def test_a_defect_in_an_ignore_zone_is_listed_apart_and_the_unit_passes(
        client: TestClient, found: tuple[float, list[dict[str, Any]]]) -> None:
    threshold, defects = found
    bad, good = cells(defects)
    x0, y0, x1, y1 = bad
    put_golden(client, "zoned")
    put_recipe(client, "zoned", {
        "units": [{"position": 1, "bbox": bad}, {"position": 2, "bbox": good}],
        "zones": [{"name": "fiducial", "action": "ignore",
                   "polygon": [[x0, y0], [x1, y0], [x1, y1], [x0, y1]]}],
    })
    body = inspect(client, "zoned", threshold)
    # Every defect whose centroid is in the zone, and those on its closing edges (x1, y1)
    # too: a polygon holds its edges, a unit box does not hold its max.
    zoned = [d["id"] for d in defects
             if x0 <= d["centroid"][0] <= x1 and y0 <= d["centroid"][1] <= y1]
    assert [(i["id"], i["zone"], i["reason"]) for i in body["ignored"]] == [
        (i, "fiducial", "zone") for i in zoned]
    assert [d["id"] for d in body["defects"]] == [d["id"] for d in defects
                                                  if d["id"] not in zoned]
    assert [(u["position"], u["verdict"], u["defect_ids"]) for u in body["units"]] == [
        (1, "pass", []), (2, "pass", [])]
    assert body["summary"]["defect_count"] == len(defects) - len(zoned)
    record = record_of(client, body["inspection_id"])
    assert [(i["id"], i["zone"]) for i in record["ignored"]] == [
        (i, "fiducial") for i in zoned]

    # The overlay frames both boards green (RGB here), the zone's set-aside defects grey.
    framed = overlay(client, "zoned", threshold)
    for x0, y0, _, y1 in (bad, good):
        assert framed[(y0 + y1) // 2, x0].tolist() == [0, 150, 0]


def test_the_recipes_rules_are_the_products_operating_point(
        client: TestClient, found: tuple[float, list[dict[str, Any]]]) -> None:
    threshold, defects = found
    biggest = max(d["area_px"] for d in defects)
    put_golden(client, "strict")
    put_recipe(client, "strict", {"rules": {"threshold": threshold, "min_area_px": biggest + 1}})
    r = client.post("/predict", params={"product": "strict", "mask": "none"},
                    files={"file": ("panel.png", BOARDS.png, "image/png")}, headers=INSPECT)
    body = r.json()
    assert body["params"]["threshold"] == threshold
    assert body["params"]["min_area_px"] == biggest + 1
    assert body["defects"] == [] and body["units"][0]["verdict"] == "pass"
    # The request's own parameter still wins over the recipe's.
    loose = inspect(client, "strict", threshold, min_area_px=0)
    assert len(loose["defects"]) == len(defects)


def test_a_golden_board_of_another_size_outdates_the_recipe(client: TestClient) -> None:
    put_golden(client, "resized")
    assert put_recipe(client, "resized", {"units": HALVES}).status_code == 201
    put_golden(client, "resized", encode(BOARDS.left.template))
    err = assert_error(client.post(
        "/predict", params={"product": "resized"},
        files={"file": ("panel.png", BOARDS.png, "image/png")}, headers=INSPECT), 409,
        "recipe_outdated")
    assert "512x256" in err["message"] and "256x256" in err["message"]
    # The old golden board's recipe stays readable; a new one for the new board is accepted
    # only if it fits.
    assert client.get("/v1/products/resized/recipe", headers=INSPECT).status_code == 200
    err = assert_error(put_recipe(client, "resized", {"units": HALVES}), 422, "invalid_recipe")
    assert err["message"].startswith("units[1].bbox: unit 2")
    assert put_recipe(client, "resized", {"units": HALVES[:1]}).status_code == 201


def test_the_openapi_schema_lists_the_routes(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert set(paths["/v1/products/{product}/recipe"]) == {"get", "put"}
    assert "/v1/products/{product}/recipe/revisions/{revision}" in paths
    out = client.get("/openapi.json").json()["components"]["schemas"]["PredictionOut"]
    assert {"units", "ignored", "recipe"} <= set(out["properties"])
    json.dumps(out)
