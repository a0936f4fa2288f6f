"""Hostile reviews: oversized bodies and lists, loose types, and reviews that say nothing.

A review is bounded (outcomes and missed boxes per review, and its bytes) before anything
large is parsed, its numbers are strict JSON integers, and ``{}`` does not mark a board
reviewed.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.helpers.app import REVIEW, assert_error
from tests.helpers.hostile import inspect


@pytest.fixture(scope="module")
def board(client: TestClient) -> dict[str, Any]:
    """A recorded board with defects (the ``cut`` threshold finds several)."""
    body = inspect(client)
    assert body["defects"], "the test board needs defects to review"
    return body


def review(client: TestClient, inspection_id: str, body: Any, **kw: Any) -> Any:
    return client.post(f"/v1/inspections/{inspection_id}/review", headers=REVIEW,
                       json=body, **kw)


def reviewed(client: TestClient, inspection_id: str) -> bool:
    return bool(client.get(f"/v1/inspections/{inspection_id}", headers=REVIEW).json()["reviewed"])


def test_an_empty_review_is_refused_and_the_board_stays_unreviewed(client: TestClient) -> None:
    board = inspect(client)
    error = assert_error(review(client, board["inspection_id"], {}), 422)
    assert "defects" in error["message"] and "missed" in error["message"], error
    assert not reviewed(client, board["inspection_id"])


def test_a_board_without_calls_is_reviewed_clean_with_explicit_empty_lists(
    client: TestClient
) -> None:
    board = inspect(client, threshold=1.0)
    assert board["defects"] == []
    response = review(client, board["inspection_id"], {"defects": [], "missed": []})
    assert response.status_code == 201, response.text
    assert reviewed(client, board["inspection_id"])


@pytest.mark.parametrize("bad", [True, False, 1.0, "1", None])
def test_a_defect_id_must_be_a_json_integer(
    client: TestClient, board: dict[str, Any], bad: Any
) -> None:
    error = assert_error(review(client, board["inspection_id"],
                                {"defects": [{"defect_id": bad, "outcome": "confirmed"}]}), 422)
    assert "defect_id" in error["message"], error


@pytest.mark.parametrize("box", [[True, 0, 10, 10], [0.0, 0, 10, 10], ["0", 0, 10, 10]])
def test_a_missed_box_must_be_json_integers(
    client: TestClient, board: dict[str, Any], box: list[Any]
) -> None:
    error = assert_error(review(client, board["inspection_id"],
                                {"missed": [{"bbox": box, "class": "short"}]}), 422)
    assert "bbox" in error["message"], error


def test_a_class_must_be_a_json_string(client: TestClient, board: dict[str, Any]) -> None:
    assert_error(review(client, board["inspection_id"],
                        {"missed": [{"bbox": [0, 0, 10, 10], "class": 3}]}), 422)


def test_too_many_missed_boxes_are_refused(client: TestClient, board: dict[str, Any]) -> None:
    missed = [{"bbox": [0, 0, 2 + i % 60, 2 + i // 60 % 60], "class": "short"}
              for i in range(5_000)]
    error = assert_error(review(client, board["inspection_id"], {"missed": missed}), 422)
    assert "missed" in error["message"], error
    assert not reviewed(client, board["inspection_id"])


def test_too_many_outcomes_are_refused(client: TestClient, board: dict[str, Any]) -> None:
    outcomes = [{"defect_id": i, "outcome": "confirmed"} for i in range(1, 3_001)]
    error = assert_error(review(client, board["inspection_id"], {"defects": outcomes}), 422)
    assert "defects" in error["message"] and "at most" in error["message"], error


def test_a_huge_review_is_refused_by_its_size_before_it_is_parsed(
    client: TestClient, board: dict[str, Any]
) -> None:
    # The reported attack's shape (missed boxes by the hundred thousand), at 1/8 of its size.
    missed = [{"bbox": [0, 0, 10, 10], "class": "short"}] * 60_000
    data = json.dumps({"missed": missed}).encode()
    assert len(data) > 2 * 2**20
    started = time.perf_counter()
    response = client.post(f"/v1/inspections/{board['inspection_id']}/review", content=data,
                           headers={**REVIEW, "content-type": "application/json"})
    error = assert_error(response, 413, "payload_too_large")
    assert "bytes" in error["message"], error
    # Refused on its declared length: nothing of it was parsed (generous bound: shared CPU).
    assert time.perf_counter() - started < 5
    assert not reviewed(client, board["inspection_id"])


def test_a_chunked_huge_review_is_cut_off(client: TestClient, board: dict[str, Any]) -> None:
    # No Content-Length (a generator body is sent chunked): counted as it arrives.
    piece = json.dumps({"bbox": [0, 0, 10, 10], "class": "short"}).encode()

    def chunks() -> Any:
        yield b'{"missed": ['
        for i in range(60_000):
            yield (b"," if i else b"") + piece
        yield b"]}"

    response = client.post(f"/v1/inspections/{board['inspection_id']}/review", content=chunks(),
                           headers={**REVIEW, "content-type": "application/json"})
    assert_error(response, 413, "payload_too_large")


def test_a_maximal_review_is_taken_and_stats_stay_quick(
    client: TestClient, board: dict[str, Any]
) -> None:
    from app.records import MAX_REVIEW_MISSED

    missed = [{"bbox": [i % 50, i // 50, i % 50 + 5, i // 50 + 5], "class": "short"}
              for i in range(MAX_REVIEW_MISSED)]
    outcomes = [{"defect_id": d["id"], "outcome": "false_call"} for d in board["defects"]]
    response = review(client, board["inspection_id"], {"defects": outcomes, "missed": missed})
    assert response.status_code == 201, response.text[:500]
    started = time.perf_counter()
    stats = client.get("/v1/stats", headers=REVIEW)
    elapsed = time.perf_counter() - started
    assert stats.status_code == 200, stats.text
    short = next(c for c in stats.json()["classes"] if c["class"] == "short")
    assert short["missed"] >= MAX_REVIEW_MISSED
    assert elapsed < 2.0, elapsed  # generous: a bounded review costs milliseconds here
