"""IPC-CFX: what the outbox adds to an inspection, how fast the publisher empties it, and a
broker outage under load.

    .venv/bin/python bench/cfx_outbox.py [--records 2000] [--messages 5000] [--outage-s 60]

1. **Overhead**: ``Recorder.record()`` on SQLite with the CFX outbox on (the record and its
   UnitsInspected message in one transaction) against off, calls interleaved so both see the
   same machine and database file; the difference of the medians is what the outbox adds to
   an inspection (target: <= 2 ms).
2. **Throughput**: ``--messages`` messages waiting in the outbox, published to a local
   RabbitMQ (Debian's rabbitmq-server, AMQP 1.0 plugin, a durable queue; started for the
   bench in a temporary folder) until the broker has accepted them all (target: >= 500/s).
3. **Outage**: boards recorded at 2 per second while the broker is stopped for ``--outage-s``
   and started again: every message must arrive, in order, with its UniqueID; reported is
   how long after the broker accepted connections again the outbox was empty (target:
   <= 10 s).

Prints one JSON line.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.core.config import Settings  # noqa: E402
from app.records import InspectionRecord, Recorder, RecordStore, upgrade  # noqa: E402
from app.records.cfx import inspection_message  # noqa: E402
from app.records.outbox import Outbox  # noqa: E402
from app.services.cfx_publisher import AmqpTarget, CfxPublisher  # noqa: E402
from bench import records_bench  # noqa: E402
from tests.helpers.rabbitmq import RabbitBroker, receive  # noqa: E402

QUEUE = "cfx-bench"
ADDRESS = f"/amq/queue/{QUEUE}"


def record(rng: random.Random, i: int) -> InspectionRecord:
    """A realistic record now (:func:`bench.records_bench.record`): 10% fail, 1-4 defects."""
    return records_bench.record(rng, dt.datetime.now(dt.UTC), i)


def _store(folder: Path, name: str, cfx: bool) -> RecordStore:
    url = f"sqlite:///{folder / name}"
    upgrade(url)
    return RecordStore(url, cfx_source="bench.aoi" if cfx else None)


def ms(samples: list[float]) -> dict[str, float]:
    s = sorted(samples)
    return {"median_ms": round(statistics.median(s) * 1000, 3),
            "p90_ms": round(s[int(0.9 * (len(s) - 1))] * 1000, 3), "n": len(s)}


def bench_overhead(folder: Path, n: int) -> dict[str, object]:
    # Both on one database file, so that they share its WAL, checkpoints and page cache: the
    # difference is the outbox's own insert and pages, not two files' luck.
    url = f"sqlite:///{folder / 'overhead.db'}"
    upgrade(url)
    stores = {"off": RecordStore(url), "on": RecordStore(url, cfx_source="bench.aoi")}
    recorders = {k: Recorder(s, folder / f"spool-{k}") for k, s in stores.items()}
    rng = random.Random(1)
    times: dict[str, list[float]] = {"off": [], "on": []}
    try:
        for i in range(n + 50):
            for k in (("off", "on") if i % 2 else ("on", "off")):
                rec = record(rng, i)
                t0 = time.perf_counter()
                assert recorders[k].record(rec).stored == "db"
                if i >= 50:  # the first ones warm the pools and caches
                    times[k].append(time.perf_counter() - t0)
        assert Outbox(stores["on"].engine).pending() == n + 50  # one message per "on" record
    finally:
        for r in recorders.values():
            r.close()
        for s in stores.values():
            s.close()
    off, on = ms(times["off"]), ms(times["on"])
    # The CPU part alone (building the message), free of the commit's noise.
    recs = [record(rng, i) for i in range(200)]
    build = []
    for rec in recs:
        t0 = time.perf_counter()
        inspection_message(rec, "bench.aoi")
        build.append(time.perf_counter() - t0)
    return {"record_off": off, "record_on": on, "build_message": ms(build),
            "added_median_ms": round(on["median_ms"] - off["median_ms"], 3),
            "ratio": round(on["median_ms"] / off["median_ms"], 2)}


def _publisher(store: RecordStore, broker: RabbitBroker) -> CfxPublisher:
    target = AmqpTarget.from_settings(Settings(cfx_broker_url=broker.url, cfx_address=ADDRESS))
    return CfxPublisher(Outbox(store.engine), target)


def _wait_empty(outbox: Outbox, timeout_s: float) -> float:
    t0 = time.perf_counter()
    while outbox.pending():
        if time.perf_counter() - t0 > timeout_s:
            raise AssertionError(f"{outbox.pending()} messages still pending after {timeout_s} s")
        time.sleep(0.01)
    return time.perf_counter() - t0


def _check_delivery(broker: RabbitBroker, outbox: Outbox, n: int) -> dict[str, object]:
    got = receive(broker.url, ADDRESS, n, timeout_s=120, idle_s=1.0)
    expected = [(uid, body) for _, uid, body, _ in outbox.messages()]
    first: dict[str, bytes] = {}
    for mid, body in got:
        assert first.setdefault(mid, body) == body, "a repeat differs from its first copy"
    assert list(first) == [uid for uid, _ in expected], "lost or out of order"
    return {"received": len(got), "distinct": len(first), "repeats": len(got) - len(first),
            "order_kept": True, "lost": 0}


def bench_throughput(folder: Path, broker: RabbitBroker, n: int) -> dict[str, object]:
    store = _store(folder, "throughput.db", True)
    rng = random.Random(2)
    try:
        for i in range(0, n, 1000):
            store.add_many([record(rng, j) for j in range(i, min(n, i + 1000))])
        outbox = Outbox(store.engine)
        publisher = _publisher(store, broker)
        t0 = time.perf_counter()
        publisher.start()
        _wait_empty(outbox, 600)
        seconds = time.perf_counter() - t0
        publisher.close()
        return {"messages": n, "seconds": round(seconds, 2),
                "msg_per_s": round(n / seconds), **_check_delivery(broker, outbox, n)}
    finally:
        store.close()


def bench_outage(folder: Path, broker: RabbitBroker, outage_s: float) -> dict[str, object]:
    store = _store(folder, "outage.db", True)
    recorder = Recorder(store, folder / "spool-outage")
    outbox = Outbox(store.engine)
    publisher = _publisher(store, broker)
    publisher.start()
    stop = threading.Event()
    recorded: list[float] = []

    def boards() -> None:  # 2 boards a second, on the clock
        rng, i, t0 = random.Random(3), 0, time.perf_counter()
        while not stop.is_set():
            t = time.perf_counter()
            assert recorder.record(record(rng, i)).stored == "db"
            recorded.append(time.perf_counter() - t)
            i += 1
            stop.wait(max(0.0, t0 + i * 0.5 - time.perf_counter()))

    feeder = threading.Thread(target=boards)
    try:
        feeder.start()
        time.sleep(5)
        broker.stop()
        down_at = time.perf_counter()
        time.sleep(outage_s)
        pending_at_return = outbox.pending()
        broker.start()  # returns once the broker accepts AMQP 1.0 connections
        back_at = time.perf_counter()
        deliver_s = _wait_empty(outbox, 120)
        time.sleep(5)
        stop.set()
        feeder.join()
        _wait_empty(outbox, 60)
        n = len(recorded)
        return {"boards": n, "outage_s": round(back_at - down_at, 1),
                "pending_when_broker_returned": pending_at_return,
                "delivered_s_after_return": round(deliver_s, 2),
                "record_during_run": ms(recorded), **_check_delivery(broker, outbox, n)}
    finally:
        stop.set()
        publisher.close()
        recorder.close()
        store.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench/cfx_outbox.py", description=__doc__)
    p.add_argument("--records", type=int, default=2000, help="record() calls per side")
    p.add_argument("--messages", type=int, default=5000)
    p.add_argument("--outage-s", type=float, default=60.0)
    args = p.parse_args(argv)
    out: dict[str, object] = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "python": platform.python_version()}
    with tempfile.TemporaryDirectory(prefix="pcb-cfx-bench-") as tmp:
        folder = Path(tmp)
        out["overhead_sqlite"] = bench_overhead(folder, args.records)
        broker = RabbitBroker(queues=(QUEUE,))
        try:
            broker.start()
            out["throughput"] = bench_throughput(folder, broker, args.messages)
            out["outage"] = bench_outage(folder, broker, args.outage_s)
        finally:
            broker.close()
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
