"""Prometheus metrics of the service (prometheus-client, default registry)."""

from __future__ import annotations

import os
from typing import Any

# The *_created series double the scrape for no use on a dashboard; read at import time.
os.environ.setdefault("PROMETHEUS_DISABLE_CREATED_SERIES", "True")

from prometheus_client import Counter, Gauge, Histogram, Info, start_http_server  # noqa: E402

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)

REQUESTS = Counter(
    "pcb_requests_total", "HTTP requests, by route template and status.", ["route", "status"]
)
LATENCY = Histogram(
    "pcb_request_duration_seconds", "HTTP request latency, by route.", ["route"],
    buckets=_LATENCY_BUCKETS,
)
QUEUE_WAIT = Histogram(
    "pcb_queue_wait_seconds", "Time a tile waits in the batching queue before its model call.",
    buckets=_LATENCY_BUCKETS,
)
MODEL_COMPUTE = Histogram(
    "pcb_model_compute_seconds", "Duration of one batched model call.", buckets=_LATENCY_BUCKETS
)
BATCH_SIZE = Histogram(
    "pcb_batch_size", "Tiles per model call.", buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64)
)
IMAGES = Counter("pcb_images_total", "Images inspected.")
# A separate counter rather than a label on pcb_images_total, whose unlabelled series
# dashboards and tests already read.
INSPECTIONS = Counter(
    "pcb_inspections_total",
    "Images inspected, by model mode: 'single' (board alone) or 'pair' (with a golden board).",
    ["mode"],
)
TILES = Counter("pcb_tiles_total", "Tiles run through the model.")
GATING_SKIPPED_PIXELS = Counter(
    "pcb_gating_skipped_pixels_total",
    "Board pixels left background without a forward pass by gating (PCB_PAIR_GATING), by "
    "model mode.",
    ["mode"],
)
GATING_SKIPPED_TILES = Counter(
    "pcb_gating_skipped_tiles_total", "Tiles gating kept out of the model, by model mode.",
    ["mode"],
)
DEFECTS = Counter("pcb_defects_total", "Defects found, by class.", ["class_name"])
VERDICTS = Counter("pcb_verdicts_total", "Board verdicts.", ["verdict"])
REJECTED = Counter("pcb_rejected_total", "Rejected requests, by reason.", ["reason"])
QUEUE_DEPTH = Gauge("pcb_queue_tiles", "Tiles waiting for the model now.")
INFLIGHT_PIXELS = Gauge(
    "pcb_inflight_pixels",
    "Pixels of the boards being inspected now, against PCB_LIMITS_MAX_INFLIGHT_PIXELS (a pair "
    "board counts twice).",
)
IN_FLIGHT_REQUESTS = Gauge(
    "pcb_inflight_requests",
    "Inspection requests (POST /predict, POST /predict/batch) being handled now; a batch is one.",
)
IN_FLIGHT_IMAGES = Gauge(
    "pcb_inflight_images", "Boards being inspected now (each board of a batch counts)."
)
# Labels: name, version, weights_sha256, device, precision (what runs) and
# precision_requested (PCB_PRECISION: auto or a precision).
MODEL_INFO = Info("pcb_model", "The model being served.")
PAIR_MODEL_INFO = Info("pcb_pair_model", "The golden-board (pair) model, when one is served.")

# --- inspection records and reviews ----------------------------------------------------------
RECORDS = Counter(
    "pcb_records_total",
    "Inspection records made, by where they went: 'db' (committed), 'spool' (fsynced to the "
    "local spool while the database is down; replayed later) or 'lost' (neither worked).",
    ["sink"],
)
RECORDS_SPOOLED = Gauge(
    "pcb_records_spooled", "Records waiting in the local spool for the database."
)
REVIEWS = Counter(
    "pcb_reviews_total",
    "Operator review outcomes of new reviews, by outcome (confirmed, false_call, "
    "reclassified, missed) and by the class the model called (the drawn class for missed).",
    ["outcome", "class"],
)
FALSE_CALL_RATE = Gauge(
    "pcb_false_call_rate",
    "Share of the model's reviewed calls of a class marked false_call, over the boards of the "
    "last 7 days (current reviews); updated after each review.",
    ["class"],
)


def start_metrics_server(host: str, port: int) -> Any:
    """Serves the metrics (prometheus-client's own HTTP server, in a thread) on ``host:port``
    for ``PCB_METRICS_PORT``: a port of its own that a firewall or NetworkPolicy can keep for
    Prometheus, without a key.

    Returns:
        The server; ``shutdown()`` and ``server_close()`` stop it.

    Raises:
        OSError: The address cannot be bound.
    """
    server, _thread = start_http_server(port, addr=host)
    return server


CFX_PENDING = Gauge(
    "pcb_cfx_outbox_pending",
    "CFX messages written but not yet accepted by the broker (the outbox's backlog).",
)
CFX_PUBLISHED = Counter("pcb_cfx_published_total", "CFX messages the broker accepted.")
CFX_PUBLISH_ERRORS = Counter(
    "pcb_cfx_publish_errors_total",
    "Failed CFX publish attempts (broker unreachable, refused, or a message not accepted).",
)
