"""``Recorder``: records every inspection without ever failing or stalling it.

``record()`` commits the record to the database (a SQLite WAL commit is about a millisecond)
and returns once it is durable. When the database fails or does not answer within
``db_timeout_s``, the record is appended to a local spool file instead (one JSON line,
written, flushed and fsynced) and the recorder goes *degraded*: until the database is back,
records go straight to the spool, so an outage costs each inspection one fsync, not one
timeout. ``replay()`` (at startup, then every few seconds from :meth:`Recorder.start`) puts
spooled records into the database; a record's primary key is its inspection id and inserts
skip existing ids, so replaying a record twice stores it once.

The spool lives in ``<data_dir>/spool/``, one file per host (``records.<host>.jsonl``), since
the data directory may be shared by replicas. Appends and the replay's hand-over take an
exclusive ``flock`` on the file, so another replica replaying a dead replica's spool never
truncates a line that is being written.

Replay hands the spool over before touching the database: under the lock it copies the lines
to ``<name>.<id>.replaying`` (fsynced, then renamed into place), truncates the spool and lets
go, so ``record()`` never waits for a slow replay. The ``.replaying`` file is deleted once all
of its records are in; a crash in between leaves it to the next replay (its records may then
be inserted twice, which stores them once). At every moment each acknowledged record is in the
database or in a fsynced file.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import fcntl
import logging
import os
import re
import socket
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import ValidationError
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, SQLAlchemyError

from app.records.ids import new_id
from app.records.schemas import InspectionRecord
from app.records.store import RecordStore

__all__ = ["RecordResult", "Recorder", "ReplayResult", "spool_name"]

logger = logging.getLogger("pcb_inspect.records")

SPOOL_SUFFIX = ".jsonl"
REPLAYING_SUFFIX = ".replaying"
REJECTED_SUFFIX = ".rejected"
#: Records inserted per transaction by replay().
_REPLAY_BATCH = 500


def spool_name(host: str | None = None) -> str:
    """The spool file name of this host: ``records.<host>.jsonl``."""
    host = re.sub(r"[^A-Za-z0-9._-]", "_", host or socket.gethostname()) or "host"
    return f"records.{host}{SPOOL_SUFFIX}"


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
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- recording -----------------------------------------------------------------------

    @property
    def degraded(self) -> bool:
        """Whether records are going to the spool (the database failed and is not back)."""
        return self._degraded.is_set()

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
        if not self._degraded.is_set():
            future = self._pool.submit(self.store.add_many, recs)
            try:
                future.result(timeout=self.db_timeout_s)
                return [RecordResult(r.id, "db") for r in recs]
            except concurrent.futures.TimeoutError:
                self._go_degraded(f"no answer within {self.db_timeout_s} s")
            except Exception as exc:  # recording must never fail an inspection
                self._go_degraded(_describe(exc))
        try:
            self._append([r.model_dump_json(by_alias=True).encode() for r in recs])
            return [RecordResult(r.id, "spool") for r in recs]
        except Exception:
            logger.exception("%d inspection(s) not recorded (%s): the database and the spool "
                             "%s both failed", len(recs), ", ".join(r.id for r in recs),
                             self.spool_path)
            return [RecordResult(r.id, "lost") for r in recs]

    async def arecord(self, rec: InspectionRecord) -> RecordResult:
        """:meth:`record` in a worker thread, for async routes."""
        return await asyncio.to_thread(self.record, rec)

    def _go_degraded(self, why: str) -> None:
        if not self._degraded.is_set():
            logger.warning("records database %s failed (%s): spooling records to %s until it "
                           "is back", self.store, why, self.spool_path)
        self._degraded.set()

    def _append(self, lines: list[bytes]) -> None:
        if any(b"\n" in line for line in lines):
            raise ValueError("a spooled record must be one line")
        data = b"".join(line + b"\n" for line in lines)
        with self._spool_lock:
            created = not self.spool_path.exists()
            fd = os.open(self.spool_path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                size = os.fstat(fd).st_size
                # A process killed mid-append leaves a line without its newline: end it, or
                # the first record here would be glued to it and both lost.
                if size and os.pread(fd, 1, size - 1) != b"\n":
                    data = b"\n" + data
                _write_all(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)  # also releases the flock
            if created:
                _fsync_dir(self.spool_dir)

    # --- replay --------------------------------------------------------------------------

    def pending(self) -> int:
        """Records waiting in this folder's spool and replay files (a gauge for metrics)."""
        n = 0
        for path in self._spool_files():
            with contextlib.suppress(FileNotFoundError):
                n += sum(1 for line in path.read_bytes().split(b"\n") if line.strip())
        return n

    def _spool_files(self) -> list[Path]:
        return sorted([*self.spool_dir.glob("*" + SPOOL_SUFFIX),
                       *self.spool_dir.glob("*" + REPLAYING_SUFFIX)])

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
            try:
                fd = os.open(path, os.O_RDWR)
            except FileNotFoundError:
                return
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                size = os.fstat(fd).st_size
                if size == 0:
                    return
                data = os.pread(fd, size, 0)
                target = path.with_name(f"{path.stem}.{new_id('')}{REPLAYING_SUFFIX}")
                tmp = target.with_suffix(".tmp")
                with open(tmp, "wb") as out:
                    out.write(data)
                    out.flush()
                    os.fsync(out.fileno())
                os.replace(tmp, target)
                _fsync_dir(self.spool_dir)
                # Only now, with the copy durable, may the spool be emptied.
                os.ftruncate(fd, 0)
                os.fsync(fd)
            finally:
                os.close(fd)

    def _replay_file(self, path: Path) -> ReplayResult:
        try:
            data = path.read_bytes()
        except FileNotFoundError:  # another replica finished it
            return ReplayResult()
        lines = data.split(b"\n")
        # A last line without its newline was being written when the writer died: its
        # record() never returned, so no caller was told it was recorded.
        torn = lines.pop() if lines else b""
        if torn.strip():
            logger.warning("spool %s ends in a partial line (%d bytes, a writer killed "
                           "mid-append): skipped", path, len(torn))
        records: list[InspectionRecord] = []
        bad: list[bytes] = []
        unparsable = 0
        for line in lines:
            if not line.strip():
                continue
            try:
                records.append(InspectionRecord.model_validate_json(line))
            except ValidationError as exc:
                logger.error("spool %s: a line is not a record (%s): moved to %s", path,
                             exc.errors()[0]["msg"], REJECTED_SUFFIX)
                bad.append(line)
                unparsable += 1
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
        if bad:
            rejected = self.spool_dir / (spool_name() + REJECTED_SUFFIX)
            with open(rejected, "ab") as out:
                out.write(b"".join(b + b"\n" for b in bad))
                out.flush()
                os.fsync(out.fileno())
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        _fsync_dir(self.spool_dir)
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


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _fsync_dir(folder: Path) -> None:
    # The new name of a file is durable only once its directory is.
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def iter_spool_records(path: Path) -> Iterator[InspectionRecord]:
    """The complete records in a spool or replay file (for tests and inspection by hand)."""
    for line in path.read_bytes().split(b"\n"):
        if line.strip():
            with contextlib.suppress(ValidationError):
                yield InspectionRecord.model_validate_json(line)
