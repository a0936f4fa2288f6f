"""Parameters that used to be silently ignored: a ``template`` on ``/predict/batch`` and
``?tags=`` on ``/v1/inspections``; and a board whose golden board is ten times its size."""

from __future__ import annotations

import numpy as np
from fastapi.testclient import TestClient

from tests.helpers.app import ADMIN, INSPECT, REVIEW, assert_error
from tests.helpers.boards import board_png, encode
from tests.helpers.hostile import inspect, unique


def test_a_template_on_a_batch_is_refused(client: TestClient) -> None:
    board = board_png(64, 64, seed=1)
    response = client.post("/predict/batch", headers=INSPECT, files=[
        ("files", ("a.png", board, "image/png")),
        ("template", ("t.png", board_png(64, 64, seed=2), "image/png")),
    ])
    error = assert_error(response, 422, "invalid_request")
    assert "template" in error["message"] and "product" in error["message"], error


def test_tags_filter_the_inspections(client: TestClient) -> None:
    tag = unique("lot")
    tagged = inspect(client, tags=[tag, "other"])["inspection_id"]
    inspect(client, tags=["other"])
    inspect(client)
    page = client.get("/v1/inspections", params={"tags": tag}, headers=REVIEW)
    assert page.status_code == 200, page.text
    assert [i["id"] for i in page.json()["items"]] == [tagged]
    # Several tags: a record must carry every one of them.
    both = client.get("/v1/inspections", params={"tags": f"{tag},other"}, headers=REVIEW)
    assert [i["id"] for i in both.json()["items"]] == [tagged]
    none = client.get("/v1/inspections", params=[("tags", tag), ("tags", "absent")],
                      headers=REVIEW)
    assert none.json()["items"] == []
    export = client.get("/v1/inspections/export", params={"tags": tag, "format": "jsonl"},
                        headers=ADMIN)
    assert export.status_code == 200 and export.text.count("\n") == 1, export.text[:300]


def test_a_bad_tag_filter_is_a_422(client: TestClient) -> None:
    assert_error(client.get("/v1/inspections", params={"tags": "x" * 200}, headers=REVIEW),
                 422)


def test_a_small_board_against_a_large_golden_board_does_not_align(client: TestClient) -> None:
    product = unique("big")
    golden = board_png(640, 640, seed=3)
    stored = client.put(f"/v1/golden-boards/{product}", headers=ADMIN,
                        files={"file": ("g.png", golden, "image/png")})
    assert stored.status_code == 201, stored.text
    white = encode(np.full((64, 64), 255, np.uint8))
    response = client.post("/predict", params={"product": product}, headers=INSPECT,
                           files={"file": ("b.png", white, "image/png")})
    error = assert_error(response, 422, "alignment_failed")
    assert "64x64" in error["message"] and "640x640" in error["message"], error
    # The reverse (a large board against a small golden board) too.
    small = unique("small")
    client.put(f"/v1/golden-boards/{small}", headers=ADMIN,
               files={"file": ("g.png", white, "image/png")})
    assert_error(client.post("/predict", params={"product": small}, headers=INSPECT,
                             files={"file": ("b.png", golden, "image/png")}),
                 422, "alignment_failed")
