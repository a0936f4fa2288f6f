"""Whole-board admission against the memory budget (PCB_LIMITS_MAX_INFLIGHT_PIXELS), through the
app.

The budget's own arithmetic is in ``tests/app/services/test_admission.py``; here: a board that
does not fit gets 503 + Retry-After before any of it is computed, from its header (or from
Content-Length before its body is read), the pixels come back when a board ends however it
ends, and a batch's boards are admitted one by one.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.core.metrics import TILES
from app.services.admission import MAX_ENCODED_BYTES_PER_PIXEL
from tests.helpers.app import app_client, assert_error, service_state
from tests.helpers.boards import board_png

BUDGET = 100_000  # pixels; the largest board accepted is as large
BOARD = board_png(200, 150, seed=4)  # 30,000 px


@pytest.fixture(scope="module")
def client(tiny_weights: Path) -> Iterator[TestClient]:
    with app_client(tiny_weights, limits_max_image_pixels=BUDGET,
                    limits_max_inflight_pixels=BUDGET) as c:
        yield c


def post(client: TestClient, data: bytes = BOARD) -> object:
    return client.post("/predict?mask=none", files={"file": ("b.png", data, "image/png")})


def test_a_board_that_does_not_fit_gets_503_before_any_of_it_is_computed(
    client: TestClient,
) -> None:
    budget = service_state(client.app).budget  # type: ignore[arg-type]
    tiles_before = TILES._value.get()
    with budget.admit(BUDGET - 29_999):  # another board holds all but 29,999 px
        response = post(client)
        assert_error(response, 503, "over_capacity")
        assert "30,000 px would join 70,001 px in flight" in response.json()["error"]["message"]
        assert "PCB_LIMITS_MAX_INFLIGHT_PIXELS" in response.json()["error"]["message"]
        assert int(response.headers["Retry-After"]) >= 1  # type: ignore[attr-defined]
        assert TILES._value.get() == tiles_before  # no tile of it reached the model
    # The other board finished: the same board now fits, and gives its pixels back after.
    assert post(client).status_code == 200  # type: ignore[attr-defined]
    assert budget.in_flight == 0
    metrics = client.get("/metrics").text
    assert "pcb_inflight_pixels 0.0" in metrics
    assert 'pcb_rejected_total{reason="memory_budget"}' in metrics


def test_a_body_too_large_to_fit_is_refused_from_content_length(client: TestClient) -> None:
    budget = service_state(client.app).budget  # type: ignore[arg-type]
    body = b"\0" * (10_001 * MAX_ENCODED_BYTES_PER_PIXEL)  # at least 10,001 px, whatever it is
    with budget.admit(BUDGET - 10_000):
        response = client.post("/predict", content=body, headers={"Content-Type": "image/png"})
        assert_error(response, 503, "over_capacity")
    # Fitting, the same bytes are read and refused for what they are: not an image.
    response = client.post("/predict", content=body, headers={"Content-Type": "image/png"})
    assert response.status_code == 415 and budget.in_flight == 0


def test_pixels_come_back_when_a_board_fails(client: TestClient) -> None:
    budget = service_state(client.app).budget  # type: ignore[arg-type]
    # Its header declares 30,000 px, so it is admitted; then its cut-off data fails the decode.
    response = post(client, BOARD[: len(BOARD) // 2])
    assert_error(response, 400)
    with budget.admit(BUDGET - 30_000):  # and it held its pixels while it was being decoded
        assert_error(post(client, BOARD[: len(BOARD) // 2]), 400)
        assert_error(post(client, board_png(200, 151, seed=4)), 503, "over_capacity")
    assert budget.in_flight == 0


def test_batch_boards_are_admitted_one_by_one(client: TestClient) -> None:
    budget = service_state(client.app).budget  # type: ignore[arg-type]
    files = [("files", (f"{i}.png", BOARD, "image/png")) for i in range(2)]
    with budget.admit(BUDGET - 30_000):  # room for one board of the two
        body = client.post("/predict/batch", files=files).json()
    statuses = sorted(item["status"] for item in body["results"])
    assert statuses == [200, 503]
    refused = next(item for item in body["results"] if item["status"] == 503)
    assert refused["error"]["code"] == "over_capacity"
    assert budget.in_flight == 0
