"""Product ids: one rule everywhere, and no id that can be stored but not managed (``.`` and
``..`` vanish from a URL path; a leading dot hides the file)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from tests.helpers.app import ADMIN, INSPECT, assert_error
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
