"""Inspection records: what recording adds to an inspection, and a filtered query over 100k.

    .venv/bin/python bench/records_bench.py [--records 100000] [--pg-url URL | --no-pg]

Targets: ``Recorder.record()`` adds <= 5 ms (SQLite) and <= 10 ms (local
PostgreSQL) to the p50 of an inspection; a filtered query over 100,000 records answers in
<= 100 ms. Medians are reported (a shared machine's tail says more about its neighbours).

Without ``--pg-url`` a throw-away PostgreSQL cluster is started from Debian's ``postgresql``
package (as the ``postgres`` user when run as root), with its default durability settings
(fsync and synchronous_commit on), and removed afterwards.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import glob
import hashlib
import json
import os
import pwd
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.records import (  # noqa: E402
    InspectionFilter,
    InspectionRecord,
    Recorder,
    RecordStore,
    upgrade,
)
from app.records.ids import new_id  # noqa: E402
from pcb_inspect.classes import CLASS_NAMES  # noqa: E402

WEIGHTS = hashlib.sha256(b"weights").hexdigest()


def record(rng: random.Random, when: dt.datetime, i: int) -> InspectionRecord:
    """A realistic record: 10% of boards fail with 1-4 defects."""
    fail = rng.random() < 0.10
    defects = [{"id": k + 1, "class": rng.choice(CLASS_NAMES), "confidence": 0.99,
                "bbox": [10 * k, 10, 10 * k + 8, 20], "area_px": 40, "area_mm2": 0.017,
                "centroid": [10 * k + 4.0, 15.0]} for k in range(rng.randint(1, 4) if fail else 0)]
    return InspectionRecord.model_validate({
        "id": new_id(), "created_at": when, "serial": f"SN{i:08d}",
        "line": f"L{rng.randrange(5)}", "station": f"S{rng.randrange(10)}",
        "product": f"P{rng.randrange(20):02d}", "tags": [],
        "image_sha256": hashlib.sha256(str(i).encode()).hexdigest(), "image_bytes": 400_000,
        "width": 640, "height": 640, "model_name": "pcb-unet", "model_version": "1.0",
        "model_mode": "pair", "weights_sha256": WEIGHTS,
        "rules": {"threshold": 0.5, "min_area_px": 10, "min_confidence": 0.98,
                  "pixels_per_mm": 48.0, "fail_rule": "count", "fail_min_count": 1},
        "verdict": "fail" if fail else "pass", "defects": defects,
    })


def ms(samples: list[float]) -> dict[str, float]:
    s = sorted(samples)
    return {"median_ms": round(statistics.median(s) * 1000, 3),
            "p90_ms": round(s[int(0.9 * (len(s) - 1))] * 1000, 3), "n": len(s)}


def bench_record(url: str, spool: Path, n: int) -> dict[str, float]:
    """Median time of Recorder.record() (a commit per call, as in the service)."""
    store = RecordStore(url)
    recorder = Recorder(store, spool, spool_file="records.bench.jsonl")
    rng = random.Random(1)
    now = dt.datetime.now(dt.UTC)
    recs = [record(rng, now, i) for i in range(n + 20)]
    try:
        for r in recs[:20]:  # warm the pool and the caches
            recorder.record(r)
        times = []
        for r in recs[20:]:
            t0 = time.perf_counter()
            result = recorder.record(r)
            times.append(time.perf_counter() - t0)
            assert result.stored == "db", result
        return ms(times)
    finally:
        recorder.close()
        store.close()


def bench_query(url: str, n: int, repeats: int) -> dict[str, object]:
    """Fills ``n`` records over 30 days, then times the queries the UI and API make."""
    store = RecordStore(url)
    rng = random.Random(2)
    end = dt.datetime(2025, 3, 31, tzinfo=dt.UTC)
    start = end - dt.timedelta(days=30)
    step = (end - start) / n
    t0 = time.perf_counter()
    batch: list[InspectionRecord] = []
    for i in range(n):
        batch.append(record(rng, start + step * i, i))
        if len(batch) == 2000:
            store.add_many(batch)
            batch = []
    store.add_many(batch)
    fill_s = time.perf_counter() - t0
    assert store.count() == n
    if store.engine.dialect.name == "postgresql":
        # What autovacuum does within a minute of a bulk load; SQLite is left without
        # statistics (its default), the less favourable case.
        with store.engine.begin() as conn:
            conn.exec_driver_sql("ANALYZE inspections")
    last_week = end - dt.timedelta(days=7)
    queries: dict[str, Callable[[], object]] = {
        "newest page": lambda: store.query(limit=50),
        "verdict=fail product=P07": lambda: store.query(
            InspectionFilter(verdict="fail", product="P07"), limit=50),
        "review queue (fail, not reviewed)": lambda: store.query(
            InspectionFilter(verdict="fail", reviewed=False), limit=50),
        "line=L3 last 7 days, page 3": lambda: _page3(store, InspectionFilter(
            line="L3", since=last_week)),
        "serial=SN00054321": lambda: store.query(InspectionFilter(serial="SN00054321")),
        "station=S4 product=P11 fail, one day": lambda: store.query(InspectionFilter(
            station="S4", product="P11", verdict="fail", since=end - dt.timedelta(days=20),
            until=end - dt.timedelta(days=19)), limit=50),
        "stats 24 h (hourly)": lambda: store.stats(end - dt.timedelta(days=1), until=end),
    }
    out: dict[str, object] = {"records": n, "fill_s": round(fill_s, 1)}
    try:
        for name, q in queries.items():
            q()  # warm
            times = []
            for _ in range(repeats):
                t = time.perf_counter()
                q()
                times.append(time.perf_counter() - t)
            out[name] = ms(times)
    finally:
        store.close()
    return out


def _page3(store: RecordStore, f: InspectionFilter) -> object:
    page = store.query(f, limit=50)
    page = store.query(f, limit=50, cursor=page.next_cursor)
    return store.query(f, limit=50, cursor=page.next_cursor)


@contextlib.contextmanager
def local_postgres() -> Iterator[str]:
    """A throw-away PostgreSQL cluster (Debian's package) on a free port."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    pg_ctl = shutil.which("pg_ctl") or (found[-1] if found else None)
    if pg_ctl is None:
        raise SystemExit("no pg_ctl: apt-get install -y postgresql, or pass --pg-url")
    base = Path(tempfile.mkdtemp(prefix="pcb-records-bench-pg-"))
    prefix: list[str] = []
    if os.geteuid() == 0:  # pg_ctl refuses to run as root
        owner = pwd.getpwnam("postgres")
        os.chown(base, owner.pw_uid, owner.pw_gid)
        prefix = ["runuser", "-u", "postgres", "--"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data = base / "data"

    def pg(*args: str) -> None:
        subprocess.run([*prefix, pg_ctl, *args], check=True, cwd="/",
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    pg("initdb", "-D", str(data), "-o", "--username=postgres --auth=trust")
    pg("start", "-w", "-D", str(data), "-l", str(base / "log"),
       "-o", f"-p {port} -c unix_socket_directories='{base}'")
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    finally:
        pg("stop", "-D", str(data), "-m", "fast")
        shutil.rmtree(base, ignore_errors=True)


def run(name: str, url: str, args: argparse.Namespace, tmp: Path) -> dict[str, object]:
    upgrade(url)
    result: dict[str, object] = {"record": bench_record(url, tmp / f"spool-{name}", args.n)}
    # A fresh database for the query bench (the record bench left rows behind).
    if name == "sqlite":
        url = f"sqlite:///{tmp / 'query.db'}"
        upgrade(url)
    else:
        store = RecordStore(url)
        with store.engine.begin() as conn:
            conn.exec_driver_sql("TRUNCATE reviews, inspections")
        store.close()
    result["query"] = bench_query(url, args.records, args.repeats)
    return result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=500, help="record() calls timed per database")
    p.add_argument("--records", type=int, default=100_000, help="records for the query bench")
    p.add_argument("--repeats", type=int, default=30, help="runs of each query")
    p.add_argument("--pg-url", help="a PostgreSQL database to use (it is written to)")
    p.add_argument("--no-pg", action="store_true", help="SQLite only")
    p.add_argument("--out", type=Path, help="also write the results as JSON here")
    args = p.parse_args()
    results: dict[str, object] = {"cpus": os.cpu_count(),
                                  "load_avg_1m": round(os.getloadavg()[0], 2)}
    with tempfile.TemporaryDirectory(prefix="pcb-records-bench-") as tmp:
        results["sqlite"] = run("sqlite", f"sqlite:///{tmp}/records.db", args, Path(tmp))
        if not args.no_pg:
            with (contextlib.nullcontext(args.pg_url) if args.pg_url
                  else local_postgres()) as url:
                results["postgresql"] = run("postgresql", url, args, Path(tmp))
    text = json.dumps(results, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
