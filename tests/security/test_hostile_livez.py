"""``/livez`` stays quick under the heavy requests of the attacks: a 32 MB JPEG being decoded
and maximal (and oversized) reviews being posted, on a real server process. The p99 of the
probe's latency must stay under 200 ms (the issue's target, on 2 shared cores)."""

from __future__ import annotations

import io
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from app.records import MAX_REVIEW_BYTES, MAX_REVIEW_MISSED, MAX_REVIEW_OUTCOMES
from tests.helpers.app import INSPECT, REVIEW, ROLE_KEYS, with_thresholds
from tests.helpers.boards import board_png
from tests.helpers.server import ServerProcess, running_server

pytestmark = pytest.mark.slow

#: The issue's target for the probe's p99 while the attacks run.
P99_LIMIT_S = 0.2


@pytest.fixture(scope="module")
def server(tiny_weights: Path, tiny_pair_weights: Path, defect_threshold: float,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    single, pair = with_thresholds(tmp_path_factory.mktemp("models"), tiny_weights,
                                   tiny_pair_weights, confidence=defect_threshold)
    with running_server(
        single, tmp_path_factory.mktemp("logs"), 180,
        pair_weights_path=pair, data_dir=tmp_path_factory.mktemp("data"),
        api_keys=json.dumps(ROLE_KEYS),
    ) as srv:
        yield srv


@pytest.fixture(scope="module")
def defect_threshold(tiny_weights: Path) -> float:
    from tests.helpers.app import defect_cut

    return defect_cut(tiny_weights)


def big_jpeg() -> bytes:
    """About 32 MB of JPEG: 8000 x 4000 of noise at quality 95 (noise barely compresses)."""
    noise = np.random.default_rng(0).integers(0, 256, (4000, 8000), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(noise).save(out, "JPEG", quality=95)
    return out.getvalue()


def test_livez_stays_quick_while_a_large_jpeg_decodes_and_reviews_are_posted(
    server: ServerProcess
) -> None:
    jpeg = big_jpeg()
    assert len(jpeg) > 30 * 2**20, len(jpeg)
    with httpx.Client(base_url=server.url, timeout=120) as client:
        board = client.post("/predict", headers=INSPECT,
                            files={"file": ("b.png", board_png(64, 64, seed=1), "image/png")})
        assert board.status_code == 200, board.text
        inspection_id = board.json()["inspection_id"]
        defects = board.json()["defects"]
    review_url = f"/v1/inspections/{inspection_id}/review"
    maximal = {"defects": [{"defect_id": d["id"], "outcome": "confirmed"} for d in defects],
               "missed": [{"bbox": [i % 50, i // 50, i % 50 + 5, i // 50 + 5], "class": "short"}
                          for i in range(MAX_REVIEW_MISSED)]}
    # Just under the byte bound: parsed, then refused for its unknown defect ids.
    outcomes = [{"defect_id": 10_000 + i, "outcome": "false_call"}
                for i in range(MAX_REVIEW_OUTCOMES)]
    near_limit = json.dumps({"defects": outcomes}, indent=4).encode()
    near_limit += b" " * (MAX_REVIEW_BYTES - len(near_limit))  # JSON's trailing whitespace
    # The reported attack: 24 MB of missed boxes.
    huge = json.dumps({"missed": [{"bbox": [0, 0, 10, 10], "class": "short"}] * 500_000}).encode()
    # Bytes, encoded once: the posting thread shares this process's GIL with the probe, and
    # encoding 24 MB for each post would delay the probe here, not the server.
    bodies = (json.dumps(maximal).encode(), near_limit, huge)
    statuses: dict[str, list[int]] = {"jpeg": [], "review": []}
    stop = threading.Event()

    def decode_jpegs() -> None:
        with httpx.Client(base_url=server.url, timeout=120) as c:
            for _ in range(3):
                # Decoded in full, then 404: the product has no golden board.
                r = c.post("/predict", params={"product": "absent"}, content=jpeg,
                           headers={**INSPECT, "content-type": "image/jpeg"})
                statuses["jpeg"].append(r.status_code)

    def post_reviews() -> None:
        with httpx.Client(base_url=server.url, timeout=120) as c:
            while not stop.is_set():
                for body in bodies:
                    r = c.post(review_url, content=body,
                               headers={**REVIEW, "content-type": "application/json"})
                    statuses["review"].append(r.status_code)

    latencies = []
    workers = [threading.Thread(target=decode_jpegs), threading.Thread(target=post_reviews)]
    with httpx.Client(base_url=server.url, timeout=30) as probe:
        for w in workers:
            w.start()
        while workers[0].is_alive():
            started = time.perf_counter()
            assert probe.get("/livez").status_code == 200
            latencies.append(time.perf_counter() - started)
            time.sleep(0.02)
        stop.set()
        workers[1].join(120)
    assert statuses["jpeg"] == [404] * 3, statuses
    assert set(statuses["review"]) <= {200, 201, 413, 422}, statuses
    assert {201, 413, 422} <= set(statuses["review"]), statuses
    p99 = float(np.quantile(latencies, 0.99))
    print(f"/livez over {len(latencies)} probes: p50 {np.median(latencies) * 1e3:.1f} ms, "
          f"p99 {p99 * 1e3:.1f} ms, max {max(latencies) * 1e3:.1f} ms")
    assert p99 < P99_LIMIT_S, (p99, sorted(latencies)[-10:])
