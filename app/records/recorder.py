"""``Recorder``: records every inspection without ever failing or stalling it.

``record()`` commits the record to the database (a SQLite WAL commit is about a millisecond)
and returns once it is durable. When the database fails or does not answer within
``db_timeout_s``, the record is appended to a local spool file instead (one JSON line,
written, flushed and fsynced) and the recorder goes *degraded*: until the database is back,
records go straight to the spool, so an outage costs each inspection one fsync, not one
timeout. ``replay()`` (at startup, then every few seconds from :meth:`Recorder.start`) puts
spooled records into the database; a record's primary key is its inspection id and inserts
skip existing ids, so replaying a record twice stores it once.

The spool files (one per host, ``flock``-ed appends, the replay's hand-over) are handled by
:mod:`app.records.spool`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, SQLAlchemyError

from app.records import spool
from app.records.schemas import InspectionRecord
from app.records.spool import (
    REJECTED_SUFFIX,
    REPLAYING_SUFFIX,
    SPOOL_SUFFIX,
    spool_name,
)
from app.records.store import RecordStore

__all__ = ["RecordResult", "Recorder", "ReplayResult"]

logger = logging.getLogger("pcb_inspect.records")

#: Records inserted per transaction by replay().
_REPLAY_BATCH = 500


@dataclass(frozen=True)
class RecordResult:
    """Where :meth:`Recorder.record` put a record.

    ``stored`` is ``"db"`` (committed), ``"spool"`` (fsynced to the spool; the database gets
    it on replay) or ``"lost"``: the database and the spool both failed (a full or read-only
    disk), which is logged as an error; the caller decides whether to answer anyway.
    """

    inspection_id: str
    stored: Literal["db", "spool", "lost"]


@dataclass(frozen=True)
class ReplayResult:
    """What one :meth:`Recorder.replay` did.

    ``inserted``: records new to the database; ``already_stored``: records that were there
    (an earlier replay or a late commit); ``rejected``: lines that cannot be records (moved to
    ``*.rejected``); ``pending``: records still waiting (the database failed during replay).
    """

    inserted: int = 0
    already_stored: int = 0
    rejected: int = 0
    pending: int = 0


class Recorder:
    """Records inspections to ``store``, spooling to ``spool_dir`` when it fails.

    Args:
        store: Where records go.
        spool_dir: The spool folder (``<data_dir>/spool``); created if missing.
        db_timeout_s: How long ``record()`` waits for the database before spooling.
        spool_file: The spool's file name; default :func:`spool_name` (per host).
    """

    def __init__(self, store: RecordStore, spool_dir: Path, *, db_timeout_s: float = 2.0,
                 spool_file: str | None = None) -> None:
        self.store = store
        self.spool_dir = Path(spool_dir)
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        self.spool_path = self.spool_dir / (spool_file or spool_name())
        self.db_timeout_s = db_timeout_s
        # The database call runs in this pool so that record() can stop waiting for it; a
        # call that times out keeps running there (and may still commit: replay skips it).
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=4, thread_name_prefix="pcb-recorder")
        self._spool_lock = threading.Lock()
        self._replay_lock = threading.Lock()
        self._degraded = threading.Event()
        #: Set while neither the database nor the spool took the last record.
        self._unwritable = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- recording -----------------------------------------------------------------------

    @property
    def degraded(self) -> bool:
        """Whether records are going to the spool (the database failed and is not back)."""
        return self._degraded.is_set()

    @property
    def writable(self) -> bool:
        """Whether a record can be written: ``False`` from a record that neither the database
        nor the spool took until a write (or :meth:`probe`) succeeds again."""
        return not self._unwritable.is_set()

    def probe(self) -> bool:
        """Checks, after a lost record, whether one could be written now (the spool takes an
        empty, fsynced append, or the database answers); returns :attr:`writable`."""
        if not self._unwritable.is_set():
            return True
        try:
            self._append([])
        except OSError:
            try:
                self.store.ping()
            except Exception:  # the database's own errors, whatever the driver
                return False
        self._unwritable.clear()
        logger.info("records can be written again")
        return True

    def record(self, rec: InspectionRecord) -> RecordResult:
        """Makes ``rec`` durable (committed, or fsynced to the spool) and returns its id.

        Never raises. Blocking (a commit or an fsync): call it from a worker thread, or await
        :meth:`arecord`, before the response is sent.
        """
        return self.record_many([rec])[0]

    def record_many(self, recs: Sequence[InspectionRecord]) -> list[RecordResult]:
        """:meth:`record` for a batch request's boards: one transaction (or one spool
        append and fsync) for all of them. Never raises.
        """
        recs = list(recs)
        if not recs:
            return []
        tried_db = not self._degraded.is_set()
        if tried_db and self._to_db(recs):
            return [RecordResult(r.id, "db") for r in recs]
        try:
            self._append([r.model_dump_json(by_alias=True).encode() for r in recs])
            self._unwritable.clear()
            return [RecordResult(r.id, "spool") for r in recs]
        except Exception:
            # Degraded, the database was skipped: it may be back before the replay noticed.
            if not tried_db and self._to_db(recs):
                return [RecordResult(r.id, "db") for r in recs]
            logger.exception("%d inspection(s) not recorded (%s): the database and the spool "
                             "%s both failed", len(recs), ", ".join(r.id for r in recs),
                             self.spool_path)
            self._unwritable.set()
            return [RecordResult(r.id, "lost") for r in recs]

    def _to_db(self, recs: list[InspectionRecord]) -> bool:
        """Commits ``recs`` within ``db_timeout_s``; on failure, goes degraded and says so."""
        future = self._pool.submit(self.store.add_many, recs)
        try:
            future.result(timeout=self.db_timeout_s)
        except concurrent.futures.TimeoutError:
            self._go_degraded(f"no answer within {self.db_timeout_s} s")
            return False
        except Exception as exc:  # recording must never raise
            self._go_degraded(_describe(exc))
            return False
        self._unwritable.clear()
        return True

    async def arecord(self, rec: InspectionRecord) -> RecordResult:
        """:meth:`record` in a worker thread, for async routes."""
        return await asyncio.to_thread(self.record, rec)

    def _go_degraded(self, why: str) -> None:
        if not self._degraded.is_set():
            logger.warning("records database %s failed (%s): spooling records to %s until it "
                           "is back", self.store, why, self.spool_path)
        self._degraded.set()

    def _append(self, lines: list[bytes]) -> None:
        with self._spool_lock:
            spool.append(self.spool_path, lines)

    # --- replay --------------------------------------------------------------------------

    def pending(self) -> int:
        """Records waiting in this folder's spool and replay files (a gauge for metrics)."""
        return spool.count_records(spool.spool_files(self.spool_dir))

    def replay(self) -> ReplayResult:
        """Inserts every spooled record (this host's and any other's in the folder).

        Safe to call at any time and from several threads or replicas at once. When the
        database is reachable and nothing is left, the recorder leaves degraded mode.
        """
        with self._replay_lock:
            totals = ReplayResult()
            try:
                for path in sorted(self.spool_dir.glob("*" + SPOOL_SUFFIX)):
                    self._hand_over(path)
                for path in sorted(self.spool_dir.glob("*" + REPLAYING_SUFFIX)):
                    r = self._replay_file(path)
                    totals = ReplayResult(*(a + b for a, b in zip(
                        _astuple(totals), _astuple(r), strict=True)))
                if totals.pending == 0:
                    self.store.ping()
            except (SQLAlchemyError, DBAPIError, OSError) as exc:
                self._go_degraded(_describe(exc))
                return ReplayResult(totals.inserted, totals.already_stored, totals.rejected,
                                    self.pending())
            if totals.pending == 0 and self._degraded.is_set():
                logger.info("records database %s is back: recording to it again", self.store)
                self._degraded.clear()
            if totals.inserted or totals.rejected:
                logger.info("spool replayed: %s", totals)
            return totals

    def _hand_over(self, path: Path) -> None:
        """Moves the content of spool ``path`` to a new ``.replaying`` file, atomically."""
        lock = self._spool_lock if path == self.spool_path else contextlib.nullcontext()
        with lock:
            spool.hand_over(path)

    def _replay_file(self, path: Path) -> ReplayResult:
        read = spool.read_records(path)
        if read is None:  # another replica finished it
            return ReplayResult()
        records, bad = read
        unparsable = len(bad)
        inserted = 0
        for i in range(0, len(records), _REPLAY_BATCH):
            batch = records[i:i + _REPLAY_BATCH]
            try:
                # An unavailable database (OperationalError, ...) propagates: the file stays
                # for the next replay.
                inserted += self.store.add_many(batch)
            except (IntegrityError, DataError):
                # One record the database refuses must not hold the others back forever.
                for rec in batch:
                    try:
                        inserted += self.store.add_many([rec])
                    except (IntegrityError, DataError) as exc:
                        logger.error("spool %s: the database refuses record %s (%s): moved "
                                     "to %s", path, rec.id, _describe(exc), REJECTED_SUFFIX)
                        bad.append(rec.model_dump_json(by_alias=True).encode())
        spool.finish(path, bad)
        refused = len(bad) - unparsable
        return ReplayResult(inserted, len(records) - refused - inserted, len(bad), 0)

    # --- background ----------------------------------------------------------------------

    def start(self, interval_s: float = 5.0) -> None:
        """Replays now and then every ``interval_s`` in a daemon thread, until :meth:`close`."""
        if self._thread is not None:
            raise RuntimeError("the recorder's replay thread is already running")
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, args=(interval_s,),
                                        name="pcb-records-replay", daemon=True)
        self._thread.start()

    def _run(self, interval_s: float) -> None:
        while True:
            try:
                self.probe()
                if self._degraded.is_set() or self.pending():
                    self.replay()
            except Exception:  # the loop must survive anything
                logger.exception("spool replay failed; trying again in %s s", interval_s)
            if self._stop.wait(interval_s):
                return

    def close(self) -> None:
        """Stops the replay thread and waits for database calls in flight."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self._pool.shutdown(wait=True)


def _astuple(r: ReplayResult) -> tuple[int, int, int, int]:
    return (r.inserted, r.already_stored, r.rejected, r.pending)


def _describe(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}"[:300]
