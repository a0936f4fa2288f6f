"""Hostile recipes: every list a client sends in a recipe is bounded, and odd values are a
4xx naming the field, never a 5xx or a stored revision."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from tests.helpers.app import ADMIN, INSPECT
from tests.helpers.boards import encode

SIDE = 128
SQUARE = [[0, 0], [9, 0], [9, 9], [0, 9]]


@pytest.fixture(scope="module")
def product(client: TestClient) -> str:
    golden = encode(np.full((SIDE, SIDE), 255, np.uint8))
    r = client.put("/v1/golden-boards/hostile-recipe",
                   files={"file": ("g.png", golden, "image/png")}, headers=ADMIN)
    assert r.status_code in (200, 201), r.text
    return "hostile-recipe"


def _unit(i: int) -> dict[str, Any]:
    return {"position": i + 1, "bbox": [i % SIDE, 0, i % SIDE + 1, 1]}


@pytest.mark.parametrize("body", [
    {"units": [_unit(i) for i in range(257)]},                       # more units than allowed
    {"zones": [{"name": f"z{i}", "action": "ignore", "polygon": SQUARE} for i in range(65)]},
    {"zones": [{"name": "z", "action": "ignore",                     # too many vertices
                "polygon": [[i % SIDE, i // SIDE] for i in range(65)]}]},
    {"units": [{"position": 1, "bbox": [0, 0, 1e300, 1]}]},          # absurd coordinates
    {"units": [{"position": 1, "bbox": [0, 0, True, 1]}]},           # a boolean for a number
    {"units": [{"position": -1, "bbox": [0, 0, 1, 1]}]},
    {"zones": [{"name": "x" * 10_000, "action": "ignore", "polygon": SQUARE}]},
    {"zones": [{"name": "z", "action": "rules", "polygon": SQUARE,
                "ignored_classes": ["short"] * 10_000}]},
    {"rules": {"min_area_px": -5}},
    {"units": {"position": 1}},                                      # wrong shape
    [],
])
def test_hostile_recipe_is_a_4xx_and_stores_nothing(client: TestClient, product: str,
                                                   body: Any) -> None:
    r = client.put(f"/v1/products/{product}/recipe", json=body, headers=ADMIN)
    assert 400 <= r.status_code < 500, (r.status_code, r.text[:300])
    assert r.json()["error"]["code"], r.text[:300]
    after = client.get(f"/v1/products/{product}/recipe/revisions", headers=INSPECT)
    assert after.status_code in (200, 404), after.text[:300]
    if after.status_code == 200:
        assert after.json().get("count", 0) == 0, after.text[:300]
