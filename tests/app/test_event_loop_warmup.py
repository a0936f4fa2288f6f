"""Work that would stall the event loop the first time a route is used is done at startup."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import TypeAdapter

from tests.helpers.app import INSPECT, REVIEW, ROLE_KEYS, app_client
from tests.helpers.boards import board_png


def test_no_route_builds_its_pydantic_models_while_serving(
    tiny_weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # FastAPI builds a router's models on the first request it routes: schema generation on
    # the event loop, tens of milliseconds that every other request (/livez included) waits
    # out. The lifespan builds them all before the server takes requests.
    built: list[object] = []
    original = TypeAdapter.__init__

    def counting(self: TypeAdapter[Any], *args: Any, **kwargs: Any) -> None:
        built.append(args[0] if args else kwargs.get("type"))
        original(self, *args, **kwargs)

    with app_client(tiny_weights, data_dir=tmp_path, api_keys=ROLE_KEYS) as client:
        monkeypatch.setattr(TypeAdapter, "__init__", counting)
        assert client.get("/livez").status_code == 200
        board = client.post("/predict", headers=INSPECT,
                            files={"file": ("b.png", board_png(64, 64, seed=1), "image/png")})
        assert board.status_code == 200, board.text
        inspection_id = board.json()["inspection_id"]
        assert client.get("/v1/inspections", headers=REVIEW).status_code == 200
        review = client.post(f"/v1/inspections/{inspection_id}/review", headers=REVIEW,
                             json={"defects": [{"defect_id": 10_000, "outcome": "confirmed"}]})
        assert review.status_code == 422, review.text
    assert built == [], built
