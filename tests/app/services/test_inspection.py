"""Tests of ``app.services.inspection``: the one place every finished board passes through,
what counts as in flight, and the split of a board's model time from its wait for the model.

Through the real app and the tiny real model; the batcher test uses a plain numpy function as
the model call (the batcher only times calls, whatever they compute).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.core.ids import InvalidProductError
from app.core.metrics import IN_FLIGHT_IMAGES, IN_FLIGHT_REQUESTS
from app.inference.batcher import DynamicBatcher, SubmitTiming
from app.inference.imaging import ImageError
from app.services.board_meta import BoardMeta
from app.services.errors import ClientGoneError, InvalidMetadataError
from app.services.inspection import InspectedBoard, InspectionService, RuleParams, Target
from app.services.uploads import Upload
from tests.helpers.app import app_client
from tests.helpers.boards import board_png

BOARD = board_png(96, 80, seed=4)


@pytest.fixture(scope="module")
def client(tiny_weights: Path) -> Iterator[TestClient]:
    with app_client(tiny_weights, batching_max_size=8) as c:
        yield c


def gauge(metric: object) -> float:
    return float(metric._value.get())  # type: ignore[attr-defined]


def test_every_finished_board_passes_through_finish(client: TestClient) -> None:
    service: InspectionService = client.app.state.inspections  # type: ignore[attr-defined]
    seen: list[tuple[InspectedBoard, float]] = []

    async def hook(inspection: InspectedBoard) -> None:
        seen.append((inspection, gauge(IN_FLIGHT_REQUESTS)))

    service.on_result.append(hook)
    try:
        one = client.post("/predict", params={"threshold": 0.0},
                          files={"file": ("one.png", BOARD, "image/png")})
        batch = client.post("/predict/batch", files=[
            ("files", ("a.png", BOARD, "image/png")),
            ("files", ("bad.png", b"not an image", "image/png")),
            ("files", ("b.png", BOARD, "image/png")),
        ])
    finally:
        service.on_result.remove(hook)
    assert one.status_code == 200 and batch.status_code == 200
    # Each board that finished, once, with what it was inspected with; not the refused one.
    assert sorted(i.upload.filename or "" for i, _ in seen) == ["a.png", "b.png", "one.png"]
    first = next(i for i, _ in seen if i.upload.filename == "one.png")
    assert first.upload.data == BOARD and first.golden is None
    assert first.config.threshold == 0.0 and first.inferencer.mode == "single"
    assert first.pixels.shape == (96, 80)
    assert len(first.result.defects) == len(one.json()["defects"]) > 0
    # A batch is one request in flight, however many boards it holds; none once answered.
    assert [requests for _, requests in seen] == [1.0, 1.0, 1.0]
    assert gauge(IN_FLIGHT_REQUESTS) == gauge(IN_FLIGHT_IMAGES) == 0


def test_timings_report_the_wait_for_the_model_apart_from_the_model(
    client: TestClient,
) -> None:
    body = client.post("/predict", files={"file": ("b.png", BOARD, "image/png")}).json()
    timings = body["timings_ms"]
    # candidates: gating's search for the tiles with work (the default).
    assert list(timings) == ["pre_process", "candidates", "queue", "forward", "post_process"]
    assert timings["forward"] > 0 and timings["queue"] >= 0


def test_submit_timing_notes_each_model_call_once() -> None:
    def slow_model(x: np.ndarray) -> tuple[np.ndarray]:
        time.sleep(0.1)
        return (x[..., 0].astype(np.float32),)

    async def main() -> tuple[SubmitTiming, SubmitTiming, float]:
        # One tile per call: the second board waits for the first board's call.
        batcher = DynamicBatcher(slow_model, max_batch_size=1, max_wait_s=0.0, max_queue=8)
        batcher.start()
        try:
            first, second = SubmitTiming(), SubmitTiming()
            tiles = np.zeros((1, 4, 4, 1), dtype=np.uint8)
            started = time.perf_counter()
            await asyncio.gather(batcher.submit(tiles, first), batcher.submit(tiles, second))
            return first, second, time.perf_counter() - started
        finally:
            await batcher.close()

    first, second, wall = asyncio.run(main())
    assert len(first.calls) == len(second.calls) == 1 and not first.calls & second.calls
    # Each board's model time is its own call's, not the wait for the other's: together no
    # more than the wall time, though one of them waited a whole call.
    assert first.model_s > 0.09 and second.model_s > 0.09
    assert first.model_s + second.model_s <= wall


def test_the_cards_merge_distance_reaches_post_processing(tiny_weights: Path,
                                                          tmp_path: Path) -> None:
    import json
    import shutil

    from app.inference.card import write_card
    from app.inference.inferencer import Inferencer
    from app.inference.loading import ModelLoadError
    from app.services.inspection import RuleParams
    from tests.helpers.app import tiny_settings

    weights = tmp_path / "model.keras"
    shutil.copy(tiny_weights, weights)
    card = json.loads((tiny_weights.parent / "model_card.json").read_text())
    assert RuleParams().config(Inferencer.load(tiny_weights),
                               tiny_settings(tiny_weights)).merge_distance_px == 3  # default
    card["thresholds"]["merge_distance_px"] = 7
    write_card(tmp_path / "model_card.json", card)

    config = RuleParams(min_area_px=5).config(Inferencer.load(weights), tiny_settings(weights))

    assert (config.merge_distance_px, config.min_area_px) == (7, 5)
    card["thresholds"]["merge_distance_px"] = -1
    (tmp_path / "model_card.json").write_text(json.dumps(card))
    with pytest.raises(ModelLoadError, match="merge_distance_px"):
        Inferencer.load(weights)


# --- the service without HTTP: values in, a result or a domain error out ------------------
def test_a_board_is_inspected_by_the_service_without_a_request(client: TestClient) -> None:
    service: InspectionService = client.app.state.inspections  # type: ignore[attr-defined]
    model = service.state.model
    assert model is not None
    # On the app's event loop (where its batcher runs), but with no request: an upload, the
    # board's metadata and the rules, as a CLI or a queue consumer would pass them.
    done = client.portal.call(
        service.inspect, model, Upload("one.png", BOARD), RuleParams(threshold=0.0),
        BoardMeta(serial="SN-1", tags=("night",)),
    )
    assert done.upload.filename == "one.png" and done.pixels.shape == (96, 80)
    assert done.meta.serial == "SN-1" and done.golden is None and done.recipe is None
    # The same board through /predict: the same defects, so the route only adds the HTTP.
    http = client.post("/predict", params={"threshold": 0.0},
                       files={"file": ("one.png", BOARD, "image/png")}).json()
    assert len(done.result.defects) == len(http["defects"]) > 0
    assert [list(d.bbox) for d in done.result.defects] == [d["bbox"] for d in http["defects"]]
    assert done.result.summary.verdict == http["summary"]["verdict"]


def test_the_service_raises_domain_errors_not_http(client: TestClient) -> None:
    service: InspectionService = client.app.state.inspections  # type: ignore[attr-defined]
    model = service.state.model
    assert model is not None
    with pytest.raises(ImageError) as bad_image:
        client.portal.call(service.inspect, model, Upload("x.png", b"not an image"),
                           RuleParams(), BoardMeta())
    assert bad_image.value.code == "not_an_image" and "12 bytes" in bad_image.value.message
    with pytest.raises(InvalidProductError, match=r"\?product=: product id 'a b'"):
        client.portal.call(service.inspect, model, Upload(None, BOARD), RuleParams(),
                           BoardMeta(product="a b"))
    with pytest.raises(InvalidMetadataError, match="unit_serials: /predict/batch takes none"):
        client.portal.call(service.inspect_batch, Target(model), [Upload(None, BOARD)],
                           RuleParams(), BoardMeta(unit_serials=("u1",)))


def test_a_client_that_left_drops_the_board_through_the_disconnect_check(
    client: TestClient,
) -> None:
    service: InspectionService = client.app.state.inspections  # type: ignore[attr-defined]
    model = service.state.model
    assert model is not None
    polls = 0

    async def gone() -> bool:
        nonlocal polls
        polls += 1
        return True

    with pytest.raises(ClientGoneError):
        client.portal.call(service.inspect, model, Upload(None, BOARD), RuleParams(),
                           BoardMeta(), None, gone)
    assert polls >= 1
    assert gauge(IN_FLIGHT_IMAGES) == 0
