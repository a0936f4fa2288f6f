"""The CFX transactional outbox: messages written in the transaction of the record they report,
then claimed in order by a publisher and marked sent once the broker has accepted them.

Writing (:func:`write_messages`) runs inside the store's own write transaction, so an
inspection is stored with its message or not at all, whichever of SQLite or PostgreSQL holds
it, and a spooled record's message is written when the spool is replayed.

Order. ``seq`` is the publishing order. On SQLite writers are serialised (``BEGIN
IMMEDIATE``), so ``seq`` is commit order. On PostgreSQL a sequence value is drawn at insert
time and two transactions may commit the other way round, so writers take a transaction-level
advisory lock before inserting: the lock is held until commit, which makes ``seq`` commit order
there too (at the cost of serialising the few milliseconds of those commits across replicas).

Publishing once with several replicas (PostgreSQL). :meth:`Outbox.claim` locks the first
unsent rows with ``FOR UPDATE SKIP LOCKED`` for as long as it publishes them; another replica
skips them, sees that the rows it got are not the head of the queue, and waits, so each
message is published by one replica at a time and in order. A replica that dies mid-publish
releases its locks with its connection; the next one resends those messages, with their
UniqueIDs. On SQLite the claimer holds an ``flock`` on ``<database>.cfx-publisher.lock``, so
two processes sharing the file publish one at a time.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, delete, func, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from app.records.cfx import CfxMessage
from app.records.db import WRITE, sqlite_path
from app.records.models import Base, OutboxRow
from app.records.schemas import utcnow

__all__ = ["Claim", "Outbox", "OutboxState", "PendingMessage", "write_messages"]

#: pg_advisory_xact_lock key of the outbox writers ("CFX" in ASCII, arbitrary but fixed).
_WRITE_LOCK_KEY = 0x434658


_ADVISORY_LOCK = text("SELECT pg_advisory_xact_lock(:key)")
_TABLE = Base.metadata.tables["cfx_outbox"]
_PG_INSERT = pg_insert(_TABLE).on_conflict_do_nothing(index_elements=["unique_id"])
_SQLITE_INSERT = sqlite_insert(_TABLE).on_conflict_do_nothing(
    index_elements=["unique_id"])


def write_messages(session: Session, messages: Sequence[CfxMessage]) -> None:
    """Adds ``messages`` to the outbox in the caller's write transaction ``session``.

    A message whose UniqueID is there already (a record replayed twice) is skipped.
    """
    if not messages:
        return
    # Core, on the session's connection: the ORM's bulk-insert path costs more than the
    # insert itself, and the statement (values bound, not embedded) is compiled once.
    conn = session.connection()
    postgres = conn.dialect.name == "postgresql"
    if postgres:
        conn.execute(_ADVISORY_LOCK, {"key": _WRITE_LOCK_KEY})
    rows = [{"unique_id": m.unique_id, "message_name": m.message_name,
             "inspection_id": m.inspection_id, "created_at": m.time_stamp, "body": m.body,
             "attempts": 0} for m in messages]
    conn.execute(_PG_INSERT if postgres else _SQLITE_INSERT, rows)


@dataclass(frozen=True)
class PendingMessage:
    """A claimed message: its place in the order, UniqueID and JSON text."""

    seq: int
    unique_id: str
    message_name: str
    body: str


@dataclass
class Claim:
    """The messages one :meth:`Outbox.claim` holds; the publisher fills in ``sent`` (the
    seqs the broker accepted) and ``error`` (why the rest were not)."""

    messages: list[PendingMessage]
    sent: list[int] = field(default_factory=list)
    error: str | None = None


@dataclass(frozen=True)
class OutboxState:
    """What the admin route shows."""

    pending: int
    oldest_pending_at: dt.datetime | None
    last_sent_at: dt.datetime | None
    last_error: str | None


class Outbox:
    """The outbox table of one database, for the publisher and the admin route."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._writer = engine.execution_options(**{WRITE: True})
        self._postgres = engine.dialect.name == "postgresql"
        db_file = sqlite_path(engine.url)
        self._lock_path = None if db_file is None else Path(f"{db_file}.cfx-publisher.lock")

    @contextlib.contextmanager
    def claim(self, limit: int) -> Iterator[Claim]:
        """The first ``limit`` unsent messages in order, held until the block ends; then those
        in ``claim.sent`` are marked sent, and ``claim.error`` is recorded on the first of the
        others. Empty when another publisher holds the head of the queue.
        """
        with self._publisher_lock() as mine:
            if not mine:
                yield Claim([])
                return
            if self._postgres:
                with self.engine.connect() as conn, conn.begin():
                    rows = conn.execute(
                        _pending(limit).with_for_update(skip_locked=True)).all()
                    if rows:
                        head = conn.execute(select(func.min(OutboxRow.seq))
                                            .where(OutboxRow.sent_at.is_(None))).scalar()
                        if rows[0].seq != head:
                            rows = []  # another replica is publishing the head
                    claim = Claim([PendingMessage(int(r[0]), r[1], r[2], r[3]) for r in rows])
                    yield claim
                    _finish(conn, claim)
                return
            with self.engine.connect() as conn:
                rows = conn.execute(_pending(limit)).all()
                conn.rollback()
            claim = Claim([PendingMessage(int(r[0]), r[1], r[2], r[3]) for r in rows])
            yield claim
            with self._writer.connect() as conn, conn.begin():
                _finish(conn, claim)

    @contextlib.contextmanager
    def _publisher_lock(self) -> Iterator[bool]:
        if self._lock_path is None:
            yield True
            return
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            yield True
        finally:
            os.close(fd)  # also releases the flock

    def pending(self) -> int:
        """Messages not yet accepted by the broker."""
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(OutboxRow)
                                    .where(OutboxRow.sent_at.is_(None))).scalar_one())

    def state(self) -> OutboxState:
        with self.engine.connect() as conn:
            pending, oldest = conn.execute(
                select(func.count(), func.min(OutboxRow.seq))
                .where(OutboxRow.sent_at.is_(None))).one()
            oldest_at = None if oldest is None else conn.execute(
                select(OutboxRow.created_at).where(OutboxRow.seq == oldest)).scalar()
            # The newest sent row is the one with the highest seq among the sent (in order).
            last_seq = conn.execute(select(func.max(OutboxRow.seq))
                                    .where(OutboxRow.sent_at.is_not(None))).scalar()
            last_sent = None if last_seq is None else conn.execute(
                select(OutboxRow.sent_at).where(OutboxRow.seq == last_seq)).scalar()
            error = None if oldest is None else conn.execute(
                select(OutboxRow.last_error).where(OutboxRow.seq == oldest)).scalar()
        return OutboxState(int(pending), oldest_at, last_sent, error)

    def messages(self, *, sent: bool | None = None) -> list[tuple[int, str, str, bool]]:
        """``(seq, unique_id, body, sent)`` of every message in order (for tests and benches)."""
        query = select(OutboxRow.seq, OutboxRow.unique_id, OutboxRow.body,
                       OutboxRow.sent_at.is_not(None)).order_by(OutboxRow.seq)
        if sent is not None:
            query = query.where(OutboxRow.sent_at.is_not(None) if sent
                                else OutboxRow.sent_at.is_(None))
        with self.engine.connect() as conn:
            return [(int(r[0]), r[1], r[2], bool(r[3])) for r in conn.execute(query)]

    def prune(self, older_than: dt.timedelta) -> int:
        """Deletes messages sent more than ``older_than`` ago; returns how many."""
        cutoff = utcnow() - older_than
        with self._writer.connect() as conn, conn.begin():
            result = conn.execute(delete(OutboxRow).where(OutboxRow.sent_at.is_not(None),
                                                          OutboxRow.sent_at < cutoff))
            return int(result.rowcount or 0)


def _pending(limit: int) -> Any:
    return (select(OutboxRow.seq, OutboxRow.unique_id, OutboxRow.message_name, OutboxRow.body)
            .where(OutboxRow.sent_at.is_(None)).order_by(OutboxRow.seq).limit(limit))


def _finish(conn: Connection, claim: Claim) -> None:
    now = utcnow()
    if claim.sent:
        conn.execute(update(OutboxRow).where(OutboxRow.seq.in_(claim.sent))
                     .values(sent_at=now, attempts=OutboxRow.attempts + 1, last_error=None))
    unsent = [m.seq for m in claim.messages if m.seq not in set(claim.sent)]
    if claim.error is not None and unsent:
        conn.execute(update(OutboxRow).where(OutboxRow.seq == unsent[0])
                     .values(attempts=OutboxRow.attempts + 1, last_error=claim.error[:300]))
