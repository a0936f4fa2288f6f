"""Gating as users see it: ``PCB_PAIR_GATING``, ``?gating=``, the response's ``tiles`` block,
``timings_ms.candidates``, the skipped-area metric and the timeout that counts only the tiles
that go through the model. Tiny real models (64 px tiles) in the app's lifespan."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.helpers.app import app_client, assert_error
from tests.helpers.boards import encode
from training.synth import make_board

BOARD = make_board(seed=3, size=(320, 384), n_defects=3)
IMAGE, TEMPLATE = encode(BOARD.image), encode(BOARD.template)
TILES = 42  # 320 x 384 in 64 px tiles with the default overlap of 6


@pytest.fixture(scope="module")
def client(tiny_weights: Path, tiny_pair_weights: Path,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    with app_client(tiny_weights, pair_weights_path=tiny_pair_weights,
                    data_dir=tmp_path_factory.mktemp("data")) as c:
        assert c.put("/v1/golden-boards/p1", content=TEMPLATE,
                     headers={"Content-Type": "image/png"}).status_code in (200, 201)
        yield c


def inspect(client: TestClient, image: bytes = IMAGE, **params: Any) -> dict[str, Any]:
    r = client.post("/predict", params={"product": "p1", "mask": "none", **params},
                    files={"file": ("b.png", image, "image/png")})
    assert r.status_code == 200, r.text[:500]
    body: dict[str, Any] = r.json()
    return body


def skipped_px_total(client: TestClient) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith('pcb_gating_skipped_pixels_total{mode="pair"}'):
            return float(line.split()[-1])
    return 0.0


def test_gated_by_default_and_off_per_request(client: TestClient) -> None:
    before = skipped_px_total(client)
    gated = inspect(client)
    tiles = gated["tiles"]
    assert gated["params"]["tiles"] == TILES
    assert tiles["gating"] == "on" and tiles["computed"] + tiles["skipped"] == TILES
    assert 0 < tiles["computed"] < TILES and 0 < tiles["skipped_px"] < 320 * 384
    assert {"register", "candidates", "forward"} <= set(gated["timings_ms"])
    assert skipped_px_total(client) - before == tiles["skipped_px"]
    full = inspect(client, gating="off")
    assert full["tiles"] == {"computed": TILES, "skipped": 0, "skipped_px": 0, "gating": "off"}
    assert "candidates" not in full["timings_ms"]


def test_the_golden_board_itself_runs_no_tile(client: TestClient) -> None:
    body = inspect(client, TEMPLATE)
    assert body["tiles"]["computed"] == 0 and body["tiles"]["skipped"] == TILES
    assert body["defects"] == [] and body["summary"]["verdict"] == "pass"


def test_a_bad_gating_value_is_a_422_naming_the_parameter(client: TestClient) -> None:
    r = client.post("/predict", params={"product": "p1", "gating": "maybe"},
                    files={"file": ("b.png", IMAGE, "image/png")})
    error = assert_error(r, 422)
    assert "gating" in error["message"] and "'on' or 'off'" in error["message"]


def test_setting_off_and_on_per_request(tiny_weights: Path, tiny_pair_weights: Path,
                                        tmp_path: Path) -> None:
    with app_client(tiny_weights, pair_weights_path=tiny_pair_weights, data_dir=tmp_path,
                    pair_gating="off") as c:
        files = {"file": ("b.png", IMAGE, "image/png"),
                 "template": ("g.png", TEMPLATE, "image/png")}
        off = c.post("/predict", params={"mask": "none"}, files=files).json()
        on = c.post("/predict", params={"mask": "none", "gating": "on"}, files=files).json()
    assert off["tiles"]["gating"] == "off" and off["tiles"]["computed"] == TILES
    assert on["tiles"]["gating"] == "on" and on["tiles"]["computed"] < TILES


def test_the_timeout_counts_only_the_tiles_that_go_through_the_model(
    tiny_weights: Path, tiny_pair_weights: Path, tmp_path: Path
) -> None:
    # A timeout of almost nothing plus a minute a tile: ample for the whole board, and still
    # for the tiles gating keeps; but the golden board against itself keeps none, so once that
    # is known its allowance is the bare timeout, long past when the search ends.
    with app_client(tiny_weights, pair_weights_path=tiny_pair_weights, data_dir=tmp_path,
                    limits_request_timeout_s=0.001, limits_request_timeout_per_tile_s=60.0) as c:
        def send(image: bytes, gating: str) -> Any:
            return c.post("/predict", params={"mask": "none", "gating": gating},
                          files={"file": ("b.png", image, "image/png"),
                                 "template": ("g.png", TEMPLATE, "image/png")})

        assert send(IMAGE, "on").status_code == 200
        assert send(TEMPLATE, "off").status_code == 200
        error = assert_error(send(TEMPLATE, "on"), 504, "timeout")
    assert "goes through the model" in error["message"]


def test_once_gated_a_pair_board_holds_its_golden_board_no_more(client: TestClient) -> None:
    # What the memory budget holds for a board when it finishes, seen from the service's own
    # result hook: gated, the board itself; ungated, the board and its golden board.
    service = client.app.state.inspections  # type: ignore[attr-defined]
    budget = client.app.state.service.budget  # type: ignore[attr-defined]
    held: list[int] = []

    async def note(inspection: Any) -> None:
        held.append(budget.in_flight)

    service.on_result.append(note)
    try:
        gated = inspect(client)
        inspect(client, gating="off")
    finally:
        service.on_result.remove(note)
    board = 320 * 384
    computed = gated["tiles"]["computed"] * 64 * 64
    assert held == [2 * board - (board - computed), 2 * board]
