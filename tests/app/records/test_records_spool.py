"""The Recorder: a failing database costs a spooled line, never an error or a long wait."""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import port_for
import pytest

from app.records import InspectionRecord, Recorder, RecordStore, upgrade
from app.records.spool import iter_spool_records
from tests.app.records.factory import OLD_PRODUCT, make_record

#: What record() may take while the database is failing (an fsync on a busy 2-core CI box):
#: the point is that it does not wait for the database's own timeouts (5 s and more).
QUICK_S = 1.5


def _lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture
def down_sqlite(tmp_path: Path) -> str:
    """A SQLite database that cannot be opened yet (its folder does not exist)."""
    return f"sqlite:///{tmp_path / 'not-yet' / 'records.db'}"


RecorderFactory = Callable[..., Recorder]


@pytest.fixture
def recorder_for() -> Iterator[RecorderFactory]:
    made: list[tuple[Recorder, RecordStore]] = []

    def make(url: str, spool: Path, db_timeout_s: float = 2.0) -> Recorder:
        store = RecordStore(url)
        rec = Recorder(store, spool, spool_file="records.test.jsonl", db_timeout_s=db_timeout_s)
        made.append((rec, store))
        return rec

    yield make
    for rec, store in made:
        rec.close()
        store.close()


def test_healthy_database_commits(db_url: str, tmp_path: Path,
                                  recorder_for: RecorderFactory) -> None:
    recorder = recorder_for(db_url, tmp_path / "spool")
    rec = make_record()
    result = recorder.record(rec)
    assert (result.inspection_id, result.stored) == (rec.id, "db")
    assert recorder.store.get(rec.id).id == rec.id
    assert not recorder.spool_path.exists() and not recorder.degraded


def test_sqlite_down_spools_then_replays_once(down_sqlite: str, tmp_path: Path,
                                              recorder_for: RecorderFactory) -> None:
    recorder = recorder_for(down_sqlite, tmp_path / "spool")
    recs = [make_record(serial=f"SN-{i}") for i in range(3)]
    for rec in recs:
        t0 = time.perf_counter()
        result = recorder.record(rec)
        assert time.perf_counter() - t0 < QUICK_S
        assert result.stored == "spool" and result.inspection_id == rec.id
    assert recorder.degraded
    # Durable: the lines are in the file, each one whole record.
    assert [line["id"] for line in _lines(recorder.spool_path)] == [r.id for r in recs]
    assert [r.id for r in iter_spool_records(recorder.spool_path)] == [r.id for r in recs]
    assert recorder.pending() == 3

    # Still down: replay keeps everything.
    r = recorder.replay()
    assert (r.inserted, r.pending) == (0, 3) and recorder.degraded

    upgrade(down_sqlite)  # the database is back
    r = recorder.replay()
    assert (r.inserted, r.already_stored, r.rejected, r.pending) == (3, 0, 0, 0)
    assert not recorder.degraded and recorder.pending() == 0
    assert recorder.store.count() == 3
    assert recorder.replay().inserted == 0 and recorder.store.count() == 3
    assert recorder.record(make_record()).stored == "db"


def test_postgres_on_a_closed_port_spools(pg_url: str, tmp_path: Path,
                                          recorder_for: RecorderFactory) -> None:
    closed = f"postgresql+psycopg://postgres@127.0.0.1:{port_for.select_random()}/none"
    down = recorder_for(closed, tmp_path / "spool")
    recs = [make_record() for _ in range(4)]
    for rec in recs:
        t0 = time.perf_counter()
        assert down.record(rec).stored == "spool"
        assert time.perf_counter() - t0 < QUICK_S
    # The database returns (the service restarts against it): the replay inserts them once,
    # and a second replay (say, by another replica) inserts nothing more.
    up = recorder_for(pg_url, tmp_path / "spool")
    assert up.replay().inserted == 4
    assert up.replay().inserted == 0
    assert up.store.count() == 4
    assert {up.store.get(r.id).id for r in recs} == {r.id for r in recs}


def test_a_database_that_does_not_answer_costs_db_timeout(tmp_path: Path,
                                                          recorder_for: RecorderFactory) -> None:
    # A listening socket that never accepts: the client's connect waits for the server's
    # greeting, as with a hung or firewalled database.
    with socket.socket() as sink:
        sink.bind(("127.0.0.1", 0))
        sink.listen(1)
        port = sink.getsockname()[1]
        url = f"postgresql+psycopg://postgres@127.0.0.1:{port}/none"
        recorder = recorder_for(url, tmp_path / "spool", db_timeout_s=2.0)
        t0 = time.perf_counter()
        assert recorder.record(make_record()).stored == "spool"
        first = time.perf_counter() - t0
        assert 2.0 <= first < 2.0 + QUICK_S
        # Degraded: the next ones do not wait for the database at all.
        t0 = time.perf_counter()
        assert recorder.record(make_record()).stored == "spool"
        assert time.perf_counter() - t0 < 1.0
        assert recorder.pending() == 2


def test_partial_line_from_a_killed_writer_is_set_aside(down_sqlite: str, tmp_path: Path,
                                                         recorder_for: RecorderFactory) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    good = make_record()
    line = good.model_dump_json(by_alias=True)
    # A whole line, then the first half of a line whose writer was killed mid-append.
    (spool / "records.test.jsonl").write_text(line + "\n" + line[: len(line) // 2])
    recorder = recorder_for(down_sqlite, spool)
    # The next append must not glue its record to the partial line.
    after = make_record()
    assert recorder.record(after).stored == "spool"
    upgrade(down_sqlite)
    r = recorder.replay()
    assert (r.inserted, r.rejected) == (2, 1)  # the partial line is not a record
    assert recorder.store.get(good.id) and recorder.store.get(after.id)
    assert recorder.pending() == 0


def test_lines_that_are_not_records_are_set_aside(sqlite_url: str, tmp_path: Path,
                                                  recorder_for: RecorderFactory) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    recs = [make_record(), make_record()]
    text = "\n".join([recs[0].model_dump_json(), "{not json", recs[1].model_dump_json()]) + "\n"
    (spool / "records.other-host.jsonl").write_text(text)  # another replica's spool
    recorder = recorder_for(sqlite_url, spool)
    r = recorder.replay()
    assert (r.inserted, r.rejected, r.pending) == (2, 1, 0)
    rejected = list(spool.glob("*.rejected"))
    assert len(rejected) == 1 and rejected[0].read_text() == "{not json\n"
    assert (spool / "records.other-host.jsonl").stat().st_size == 0


def test_a_line_spooled_with_an_old_product_is_replayed_as_written(
        sqlite_url: str, tmp_path: Path, recorder_for: RecorderFactory) -> None:
    # Spooled before the one product-id rule (it took up to 128 characters then): accepted
    # then, so replayed as written, like the records the database already holds.
    spool = tmp_path / "spool"
    spool.mkdir()
    line = json.loads(make_record().model_dump_json()) | {"product": OLD_PRODUCT}
    (spool / "records.other-host.jsonl").write_text(json.dumps(line) + "\n")
    recorder = recorder_for(sqlite_url, spool)
    r = recorder.replay()
    assert (r.inserted, r.rejected) == (1, 0)
    assert recorder.store.get(line["id"]).product == OLD_PRODUCT


def test_a_replay_interrupted_after_inserting_is_harmless(sqlite_url: str, tmp_path: Path,
                                                          recorder_for: RecorderFactory) -> None:
    spool = tmp_path / "spool"
    recorder = recorder_for(sqlite_url, spool)
    rec = make_record()
    recorder.store.add(rec)
    # A replay that inserted its records and died before deleting its hand-over file.
    (spool / "records.test.01J.replaying").write_text(rec.model_dump_json() + "\n")
    r = recorder.replay()
    assert (r.inserted, r.already_stored) == (0, 1)
    assert recorder.store.count() == 1 and not list(spool.iterdir())


def test_background_replay_catches_up(down_sqlite: str, tmp_path: Path,
                                      recorder_for: RecorderFactory) -> None:
    recorder = recorder_for(down_sqlite, tmp_path / "spool")
    rec = make_record()
    assert recorder.record(rec).stored == "spool"
    recorder.start(interval_s=0.05)
    upgrade(down_sqlite)
    deadline = time.monotonic() + 20
    while recorder.degraded and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not recorder.degraded
    assert recorder.store.get(rec.id).id == rec.id and recorder.pending() == 0


def test_record_survives_a_failing_spool_too(down_sqlite: str, tmp_path: Path,
                                             recorder_for: RecorderFactory) -> None:
    recorder = recorder_for(down_sqlite, tmp_path / "spool")
    os.rmdir(recorder.spool_dir)  # the spool folder vanished (a volume gone)
    result = recorder.record(make_record())
    assert result.stored == "lost"


def test_arecord_runs_in_a_thread(sqlite_url: str, tmp_path: Path,
                                  recorder_for: RecorderFactory) -> None:
    import asyncio

    recorder = recorder_for(sqlite_url, tmp_path / "spool")
    rec: InspectionRecord = make_record()
    assert asyncio.run(recorder.arecord(rec)).stored == "db"


def test_record_many_is_one_transaction_or_one_append(down_sqlite: str, tmp_path: Path,
                                                       recorder_for: RecorderFactory) -> None:
    recorder = recorder_for(down_sqlite, tmp_path / "spool")
    batch = [make_record() for _ in range(5)]
    assert [r.stored for r in recorder.record_many(batch)] == ["spool"] * 5
    assert [line["id"] for line in _lines(recorder.spool_path)] == [r.id for r in batch]
    upgrade(down_sqlite)
    assert recorder.replay().inserted == 5
    more = [make_record() for _ in range(3)]
    results = recorder.record_many(more)
    assert [(r.inspection_id, r.stored) for r in results] == [(m.id, "db") for m in more]
    assert recorder.store.count() == 8 and recorder.record_many([]) == []
