"""Work kept off the event loop: route building at startup, review bodies in a worker thread."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from pydantic import TypeAdapter

from app.records.schemas import ReviewRequest
from tests.helpers.app import INSPECT, REVIEW, ROLE_KEYS, app_client, assert_error
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


def test_a_review_body_is_validated_in_a_worker_thread(
    tiny_weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A review of thousands of outcomes takes milliseconds to validate: on the event loop,
    # every other request would wait them out.
    threads: list[str] = []
    original = ReviewRequest.model_validate

    def recording(cls: type[ReviewRequest], obj: Any, **kwargs: Any) -> ReviewRequest:
        threads.append(threading.current_thread().name)
        return original(obj, **kwargs)

    with app_client(tiny_weights, data_dir=tmp_path, api_keys=ROLE_KEYS) as client:
        board = client.post("/predict", headers=INSPECT,
                            files={"file": ("b.png", board_png(64, 64, seed=1), "image/png")})
        assert board.status_code == 200, board.text
        url = f"/v1/inspections/{board.json()['inspection_id']}/review"
        loop_thread = client.portal.call(lambda: threading.current_thread().name)  # type: ignore[union-attr]
        monkeypatch.setattr(ReviewRequest, "model_validate", classmethod(recording))
        review = client.post(url, headers=REVIEW, json={"missed": [
            {"bbox": [1, 1, 9, 9], "class": "short"}]})
        assert review.status_code == 201, review.text
        assert threads and loop_thread not in threads, (threads, loop_thread)
        # A body the model refuses gets the same 422 as ever.
        refused = client.post(url, headers=REVIEW, json={"missed": [{"bbox": [1, 1, 9, 9]}]})
        error = assert_error(refused, 422)
        assert "class" in error["message"], error
