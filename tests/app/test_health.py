"""Probes, model metadata, Prometheus metrics, request ids and JSON logs."""

from __future__ import annotations

import gc
import hashlib
import io
import json
import logging
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from app.core.logging import JsonFormatter
from app.inference.loading import ModelLoadError
from app.main import create_app
from pcb_inspect.classes import CLASS_NAMES
from tests.helpers.app import app_client, assert_error, tiny_settings
from tests.helpers.boards import board_png

BOARD = board_png(64, 64, seed=1)


@pytest.fixture(scope="module")
def client(tiny_weights: Path) -> Iterator[TestClient]:
    with app_client(tiny_weights) as c:
        yield c


def predict(client: TestClient, data: bytes = BOARD, **kw: object) -> object:
    return client.post("/predict", files={"file": ("b.png", data, "image/png")}, **kw)  # type: ignore[arg-type]


# --- probes ---------------------------------------------------------------------------------


def test_probes_before_the_lifespan_ran(tiny_weights: Path) -> None:
    # No `with`: the lifespan never runs, as while a real replica is still loading its model.
    client = TestClient(create_app(tiny_settings(tiny_weights)))
    live = client.get("/livez")
    assert live.status_code == 200 and live.json() == {"status": "alive"}
    ready = client.get("/readyz")
    error = assert_error(ready, 503, "not_ready")
    assert error["message"] == "model not loaded yet"
    assert ready.headers["retry-after"] == "5"
    # Inspections are refused the same way, rather than failing on a missing model.
    refused = predict(client)
    assert "not ready" in assert_error(refused, 503, "not_ready")["message"]


def test_probes_after_the_lifespan(client: TestClient) -> None:
    assert client.get("/livez").json() == {"status": "alive"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json() == {"status": "ready"}


def test_the_lifespan_freezes_the_loaded_models_objects_out_of_the_collector(
    tiny_weights: Path
) -> None:
    # Unfrozen, a full collection walks TensorFlow's objects with the GIL held (~0.3 s on 2
    # cores) and stalls every request; tests/security/test_hostile_livez.py measures that.
    gc.unfreeze()
    assert gc.get_freeze_count() == 0
    with app_client(tiny_weights) as c:
        assert c.get("/readyz").status_code == 200
        assert gc.get_freeze_count() > 10_000, gc.get_freeze_count()


def test_readyz_is_503_after_shutdown_while_livez_answers(tiny_weights: Path) -> None:
    with app_client(tiny_weights) as client:
        assert client.get("/readyz").status_code == 200
    # The lifespan has ended: the app drains and says so.
    error = assert_error(client.get("/readyz"), 503, "not_ready")
    assert error["message"] == "shutting down"
    assert client.get("/livez").status_code == 200
    assert_error(predict(client), 503, "shutting_down")


def test_readyz_names_the_reason_when_the_model_fails_to_load(
    tmp_path: Path, tiny_weights: Path
) -> None:
    missing = tmp_path / "missing.keras"
    shutil.copy(tiny_weights.with_name("model_card.json"), tmp_path)
    app = create_app(tiny_settings(missing))
    with pytest.raises(ModelLoadError), TestClient(app):
        pass
    error = assert_error(TestClient(app).get("/readyz"), 503, "not_ready")
    assert error["message"].startswith("model failed to load") and str(missing) in error["message"]


# --- /v1/model ------------------------------------------------------------------------------


def test_model_info(client: TestClient, tiny_weights: Path) -> None:
    import keras
    import tensorflow as tf

    response = client.get("/v1/model")
    assert response.status_code == 200
    info = response.json()
    single = {
        "name": "tiny-test-unet",
        "version": "0.0.1-test",
        "classes": list(CLASS_NAMES),
        "input": {"tile_size": 64, "multiple_of": 4, "channels": 1, "dtype": "uint8",
                  "tile_overlap": 6},
        "pixels_per_mm": 48.0,
        "thresholds": {"confidence": 0.5, "min_area_px": 0, "min_confidence": 0.0,
                       "merge_distance_px": 3},
        "weights_file": "model.keras",
        "weights_sha256": hashlib.sha256(tiny_weights.read_bytes()).hexdigest(),
        "device": "cpu",
        # Default PCB_PRECISION=auto; the tiny card records no bfloat16 parity: float32 runs.
        "precision": "float32",
        "precision_requested": "auto",
    }
    models = info.pop("models")
    # The single-image model's fields stay at the top level, as before the pair model.
    assert info == {
        **single,
        "tensorflow_version": tf.__version__,
        "keras_version": keras.__version__,
        # The automatic settings on a CPU: two model calls of one tile at once.
        "batching": {"max_batch_size": 1, "max_wait_ms": 3.0, "model_concurrency": 2,
                     "max_queue_tiles": 256},
    }
    # No golden-board model in this app: the list holds the single model alone.
    assert len(models) == 1
    assert models[0].pop("serves").startswith("boards sent alone")
    assert models[0] == {**single, "mode": "single"}


# --- /metrics -------------------------------------------------------------------------------


def scrape(client: TestClient) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """All samples of /metrics, keyed by (name, labels)."""
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }


def value(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], metric: str, /,
          **labels: str) -> float:
    return samples.get((metric, frozenset(labels.items())), 0.0)


def test_metrics_count_what_happened(client: TestClient, tiny_weights: Path) -> None:
    before = scrape(client)
    # 24 tiles of 64 with overlap 6; threshold 0 makes every pixel a defect, so the untrained
    # model still yields defects of every class to count.
    good = predict(client, board_png(200, 300, seed=2), params={"threshold": 0.0})
    assert good.status_code == 200  # type: ignore[attr-defined]
    body = good.json()  # type: ignore[attr-defined]
    assert body["params"]["tiles"] == 24
    # Gating (the default) keeps blank 64 px windows out of the model: they are counted apart.
    tiles, skipped = body["tiles"]["computed"], body["tiles"]["skipped"]
    assert tiles + skipped == 24 and tiles > 0
    bad = predict(client, b"a text file, not a board\n")
    assert bad.status_code == 415  # type: ignore[attr-defined]
    after = scrape(client)

    def delta(metric: str, /, **labels: str) -> float:
        return value(after, metric, **labels) - value(before, metric, **labels)

    assert delta("pcb_requests_total", route="/predict", status="200") == 1
    assert delta("pcb_requests_total", route="/predict", status="415") == 1
    assert delta("pcb_request_duration_seconds_count", route="/predict") == 2
    assert value(after, "pcb_request_duration_seconds_bucket", route="/predict", le="+Inf") >= 2
    assert delta("pcb_images_total") == 1
    assert delta("pcb_tiles_total") == tiles
    assert delta("pcb_gating_skipped_tiles_total", mode="single") == skipped
    assert delta("pcb_gating_skipped_pixels_total", mode="single") == body["tiles"]["skipped_px"]
    # One queue-wait observation per tile; the tiles went through the model in batches of
    # at most max_batch_size, so at least 3 calls.
    assert delta("pcb_queue_wait_seconds_count") == tiles
    calls = delta("pcb_model_compute_seconds_count")
    assert calls >= 3 and delta("pcb_batch_size_count") == calls
    assert delta("pcb_batch_size_sum") == tiles
    by_class = body["summary"]["by_class"]
    assert sum(by_class.values()) > 0
    for name in CLASS_NAMES:
        assert delta("pcb_defects_total", class_name=name) == by_class[name], name
    assert delta("pcb_verdicts_total", verdict=body["summary"]["verdict"]) == 1
    assert delta("pcb_rejected_total", reason="not_an_image") == 1
    assert value(after, "pcb_queue_tiles") == 0 and value(after, "pcb_inflight_requests") == 0
    assert value(after, "pcb_inflight_images") == 0
    sha = hashlib.sha256(tiny_weights.read_bytes()).hexdigest()
    # The automatic settings on a CPU: two model calls of one tile at once.
    assert value(after, "pcb_model_info", name="tiny-test-unet", version="0.0.1-test",
                 weights_sha256=sha, device="cpu", precision="float32",
                 precision_requested="auto", max_batch_size="1", model_concurrency="2") == 1


def test_metrics_count_probes_by_route_template(client: TestClient) -> None:
    before = scrape(client)
    client.get("/livez")
    client.get("/no/such/route")
    after = scrape(client)
    assert (value(after, "pcb_requests_total", route="/livez", status="200")
            - value(before, "pcb_requests_total", route="/livez", status="200")) == 1
    # Unknown paths are one label, so scanners cannot blow up the metric's cardinality.
    assert (value(after, "pcb_requests_total", route="unmatched", status="404")
            - value(before, "pcb_requests_total", route="unmatched", status="404")) == 1


# --- request ids ----------------------------------------------------------------------------


def test_request_id_is_echoed(client: TestClient) -> None:
    response = client.get("/livez", headers={"x-request-id": "line7-board42"})
    assert response.headers["x-request-id"] == "line7-board42"
    # Also on errors, where it matters most.
    bad = predict(client, b"", headers={"x-request-id": "line7-board43"})
    assert bad.status_code == 400  # type: ignore[attr-defined]
    assert bad.headers["x-request-id"] == "line7-board43"  # type: ignore[attr-defined]


def test_request_id_is_generated_when_absent_or_invalid(client: TestClient) -> None:
    ids = [client.get("/livez").headers["x-request-id"] for _ in range(2)]
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids) and ids[0] != ids[1]
    # An id that could forge log lines or headers is replaced, not echoed.
    replaced = client.get("/livez", headers={"x-request-id": "evil id\" , \"level\":\"x"})
    assert re.fullmatch(r"[0-9a-f]{32}", replaced.headers["x-request-id"])


# --- JSON logs ------------------------------------------------------------------------------


@pytest.fixture()
def json_log() -> Iterator[io.StringIO]:
    """The service's log lines, formatted by its own JsonFormatter as in production."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("pcb_inspect")
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield stream
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


def log_lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


def test_access_log_lines_carry_the_request_id(client: TestClient, json_log: io.StringIO) -> None:
    assert predict(client, headers={"x-request-id": "trace-ok-1"}).status_code == 200  # type: ignore[attr-defined]
    assert predict(client, b"junk", headers={"x-request-id": "trace-bad-2"}).status_code == 415  # type: ignore[attr-defined]
    client.get("/livez", headers={"x-request-id": "probe-3"})
    lines = log_lines(json_log)
    access = {line["request_id"]: line for line in lines if line["logger"] == "pcb_inspect.access"}
    ok, bad, probe = access["trace-ok-1"], access["trace-bad-2"], access["probe-3"]
    assert (ok["method"], ok["path"], ok["route"], ok["status"]) == ("POST", "/predict",
                                                                     "/predict", 200)
    assert ok["level"] == "info" and isinstance(ok["duration_ms"], float)
    assert ok["msg"] == "POST /predict 200"
    assert bad["status"] == 415 and bad["level"] == "info"
    # Probes are logged at debug level, so they do not drown the access log.
    assert probe["level"] == "debug"
    for line in lines:
        assert set(line) >= {"ts", "level", "logger", "msg", "request_id"}
