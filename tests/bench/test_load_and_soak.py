"""Short versions of the load test and the soak in ``bench/``, against a real server process.

The full runs (minutes of load, a 30-minute soak) are documented in README; these check that
the same code passes its own criteria on the tiny model, in seconds.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from bench import loadtest
from bench.common import board_png
from bench.soak import soak
from tests.helpers.server import running_server

pytestmark = pytest.mark.slow


def test_loadtest_sheds_only_with_503_and_answers_everything(
    tiny_weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "load.json"
    # 256 px boards are 16 tiles of the tiny model: the overload phase outruns the queue.
    code = loadtest.main([
        "--weights", str(tiny_weights), "--seconds", "6", "--size", "256",
        "--capacity-clients", "1", "--overload-clients", "24", "--out", str(out),
    ])
    report = json.loads(out.read_text())
    assert report["checks"] == {k: True for k in report["checks"]}, report
    assert code == 0
    assert report["past_capacity"]["statuses"].get("503", 0) > 0


def test_soak_keeps_memory_flat_for_a_short_run(tiny_weights: Path, tmp_path: Path) -> None:
    with running_server(tiny_weights, tmp_path) as server:
        result = asyncio.run(soak(server.url, server.pid, minutes=0.5, rate=8,
                                  body=board_png(128), sample_s=0.5))
    assert result["errors"] == 0 and set(result["statuses"]) == {"200"}
    assert result["requests"] >= 100
    # Half a minute is too short for the 5% criterion of the real soak to mean much; a leak
    # of a board per request (~16 kB x 240) would still show as growth well past 10%.
    assert result["growth_after_warmup"] < 0.10, result
