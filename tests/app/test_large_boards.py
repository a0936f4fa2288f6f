"""Large boards against a running server: admitted whole or refused at once, and never able to
starve the small boards beside them.

The real process (``python -m app.serve``, the tiny model) with a memory budget of one
8000 x 8000 board (``PCB_LIMITS_MAX_INFLIGHT_PIXELS``):

* a flood of such boards: one is admitted, the others get 503 + Retry-After within seconds,
  before any of their tiles is computed, and the process's memory stays bounded;
* one such board and a stream of 640 x 640 boards: every small board is answered while the
  large one runs, each within a bound, and the large one completes.
"""

from __future__ import annotations

import functools
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from bench.common import memory_mb
from tests.helpers.boards import board_png
from tests.helpers.server import running_server

pytestmark = pytest.mark.slow

SIDE = 8000
#: One large board fits, a second does not, small boards fit beside it.
BUDGET = SIDE * SIDE + 4_000_000
#: No defects and no mask: the model's time counts, the answers stay small.
QUIET = {"threshold": 1.0, "mask": "none"}


@functools.cache
def large_board() -> bytes:
    return board_png(SIDE, SIDE, seed=5)


def post(url: str, data: bytes, timeout: float) -> httpx.Response:
    return httpx.post(f"{url}/predict", params=QUIET, timeout=timeout,
                      files={"file": ("b.png", data, "image/png")})


@pytest.mark.timeout(600)
def test_a_flood_of_large_boards_gets_503s_and_small_boards_keep_flowing(
    tiny_weights: Path, tmp_path: Path,
) -> None:
    small = board_png(640, 640, seed=6)
    with running_server(tiny_weights, tmp_path, limits_max_inflight_pixels=BUDGET,
                        limits_max_image_pixels=BUDGET, intra_op_threads=2,
                        limits_request_timeout_s=900) as server:
        started = time.perf_counter()
        idle = post(server.url, small, 60)
        assert idle.status_code == 200, idle.text
        idle_s = time.perf_counter() - started

        results: dict[int, httpx.Response] = {}
        done = threading.Event()

        def send_large(i: int) -> None:
            results[i] = post(server.url, large_board(), 900)
            if results[i].status_code == 200:
                done.set()

        with ThreadPoolExecutor(4) as pool:
            for i in range(4):
                pool.submit(send_large, i)
            # The three that do not fit are refused within seconds, not after their tiles.
            deadline = time.monotonic() + 60
            while sum(r.status_code == 503 for r in results.values()) < 3:
                assert time.monotonic() < deadline, {i: r.status_code for i, r in results.items()}
                time.sleep(0.2)
            refused = [r for r in results.values() if r.status_code == 503]
            for r in refused:
                assert r.json()["error"]["code"] == "over_capacity"
                assert int(r.headers["Retry-After"]) >= 1
            # Small boards flow beside the one admitted: each answered, within a bound.
            latencies = []
            while not done.is_set() and len(latencies) < 40:
                sent = time.perf_counter()
                r = post(server.url, small, 120)
                assert r.status_code == 200, r.text
                latencies.append(time.perf_counter() - sent)
        assert done.is_set(), {i: r.status_code for i, r in results.items()}
        statuses = sorted(r.status_code for r in results.values())
        assert statuses == [200, 503, 503, 503]
        assert len(latencies) >= 3, "the large board finished before small boards could be sent"
        # A small board waits behind at most a few chunks of the large one, never the board.
        assert max(latencies) < max(10 * idle_s, 5.0), (latencies, idle_s)
        # One large board's worth of memory, not four: the process stays well under the sum.
        peak_mb = memory_mb(server.pid, "VmHWM")
        assert peak_mb < 4 * SIDE * SIDE * 16 / 2**20, peak_mb
