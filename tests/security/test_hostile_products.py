"""Product ids: one rule everywhere, and no id that can be stored but not managed (``.`` and
``..`` vanish from a URL path; a leading dot hides the file)."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.core.ids import PRODUCT_MAX_CHARS
from tests.app.records.factory import OLD_PRODUCT, plant_product
from tests.helpers.app import ADMIN, INSPECT, REVIEW, assert_error
from tests.helpers.boards import board_png

UNMANAGEABLE = [".", "..", "...", ".hidden", "-rf"]
#: The same ids as a client must send them in a path (percent-encoded, so that no client
#: resolves the dot segments before they reach the server).
IN_PATH = {p: p.replace(".", "%2E") for p in UNMANAGEABLE}


@pytest.mark.parametrize("product", UNMANAGEABLE)
def test_an_unmanageable_product_cannot_be_stored(client: TestClient, product: str) -> None:
    response = client.put(f"/v1/golden-boards/{IN_PATH[product]}", headers=ADMIN,
                          files={"file": ("g.png", board_png(64, 64, seed=2), "image/png")})
    error = assert_error(response, 422, "invalid_product")
    assert "letter or digit" in error["message"], error
    assert product not in [b["product"] for b in client.get(
        "/v1/golden-boards", headers=ADMIN).json()["boards"]]


@pytest.mark.parametrize("product", UNMANAGEABLE)
def test_an_unmanageable_product_is_refused_on_predict(client: TestClient, product: str) -> None:
    board = board_png(64, 64, seed=1)
    by_query = client.post("/predict", params={"product": product}, headers=INSPECT,
                           files={"file": ("b.png", board, "image/png")})
    assert_error(by_query, 422, "invalid_product")
    by_form = client.post("/predict", data={"product": product}, headers=INSPECT,
                          files={"file": ("b.png", board, "image/png")})
    assert_error(by_form, 422, "invalid_product")
    batch = client.post("/predict/batch", data={"product": product}, headers=INSPECT,
                        files=[("files", ("b.png", board, "image/png"))])
    assert_error(batch, 422, "invalid_product")


def test_a_product_with_inner_dots_is_managed(client: TestClient) -> None:
    product = "board.v2.top"
    stored = client.put(f"/v1/golden-boards/{product}", headers=ADMIN,
                        files={"file": ("g.png", board_png(64, 64, seed=2), "image/png")})
    assert stored.status_code in (200, 201), stored.text
    assert client.get(f"/v1/golden-boards/{product}", headers=ADMIN).status_code == 200
    assert client.delete(f"/v1/golden-boards/{product}", headers=ADMIN).status_code == 204


def _at_every_entry_point(client: TestClient, product: str) -> dict[str, Any]:
    """The answer of each place that takes a product id, given ``product``."""
    board = board_png(64, 64, seed=1)
    one = {"file": ("b.png", board, "image/png")}
    return {
        "PUT golden board": client.put(f"/v1/golden-boards/{product}", headers=ADMIN,
                                       files={"file": ("g.png", board, "image/png")}),
        "PUT recipe": client.put(f"/v1/products/{product}/recipe", json={}, headers=ADMIN),
        "/predict ?product=": client.post("/predict", params={"product": product},
                                          headers=INSPECT, files=one),
        "/predict form field": client.post("/predict", data={"product": product},
                                           headers=INSPECT, files=one),
        "/predict/batch ?product=": client.post(
            "/predict/batch", params={"product": product}, headers=INSPECT,
            files=[("files", ("b.png", board, "image/png"))]),
        "records filter": client.get("/v1/inspections", params={"product": product},
                                     headers=REVIEW),
    }


def test_one_length_limit_at_every_entry_point(client: TestClient) -> None:
    # Hand-checked: 64 is what the golden store enforced for every board it ever wrote.
    assert PRODUCT_MAX_CHARS == 64
    longest, too_long = "p" * 64, "p" * 65
    for where, response in _at_every_entry_point(client, too_long).items():
        error = assert_error(response, 422, "invalid_product")
        assert repr(too_long) in error["message"], (where, error)
        assert "1 to 64 characters" in error["message"], (where, error)
    # One character less passes every one of them (the board is stored first, so the recipe
    # and the inspections find it).
    answers = _at_every_entry_point(client, longest)
    assert {where: r.status_code for where, r in answers.items()} == {
        "PUT golden board": 201, "PUT recipe": 201, "/predict ?product=": 200,
        "/predict form field": 200, "/predict/batch ?product=": 200, "records filter": 200,
    }
    assert answers["/predict ?product="].json()["reference"]["product"] == longest
    found = client.get("/v1/inspections", params={"product": longest}, headers=REVIEW).json()
    assert len(found["items"]) == 3 and {i["product"] for i in found["items"]} == {longest}


def test_an_old_records_product_is_served_as_stored(client: TestClient) -> None:
    # A record stored before the one product-id rule (its product then took up to 128
    # characters of any text) is listed, read and exported as stored: never a 5xx. Filtering
    # by such a product is refused, as by any other invalid id.
    answer = client.post("/predict", params={"serial": "OLD-1"}, headers=INSPECT,
                         files={"file": ("b.png", board_png(64, 64), "image/png")})
    inspection_id = answer.json()["inspection_id"]
    plant_product(client.app.state.records.store, inspection_id)  # type: ignore[attr-defined]
    one = client.get(f"/v1/inspections/{inspection_id}", headers=REVIEW)
    assert one.status_code == 200 and one.json()["product"] == OLD_PRODUCT, one.text
    listed = client.get("/v1/inspections", params={"serial": "OLD-1"}, headers=REVIEW)
    assert [i["product"] for i in listed.json()["items"]] == [OLD_PRODUCT], listed.text
    jsonl = client.get("/v1/inspections/export", params={"format": "jsonl", "serial": "OLD-1"},
                       headers=ADMIN)
    assert jsonl.status_code == 200 and json.loads(jsonl.text)["product"] == OLD_PRODUCT
    table = client.get("/v1/inspections/export", params={"serial": "OLD-1"}, headers=ADMIN)
    assert table.status_code == 200
    assert {row["product"] for row in csv.DictReader(io.StringIO(table.text))} == {
        "'" + OLD_PRODUCT}
    error = assert_error(client.get("/v1/inspections", params={"product": OLD_PRODUCT},
                                    headers=REVIEW), 422, "invalid_product")
    assert repr(OLD_PRODUCT) in error["message"]
