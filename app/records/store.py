"""``RecordStore``: the inspections and their reviews, in SQLite or PostgreSQL (sync).

Every method runs its own short transaction and may be called from several threads at once
(each takes a pooled connection). The async routes call it through a thread
(``anyio.to_thread`` / ``asyncio.to_thread``), as :class:`app.records.recorder.Recorder` does.
The reviews' checks and the dashboard's numbers are in :mod:`app.records.reviews` and
:mod:`app.records.stats`.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Literal

from sqlalchemy import (
    ColumnElement,
    Engine,
    String,
    delete,
    exists,
    func,
    literal,
    select,
    text,
    true,
    tuple_,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session, sessionmaker

from app.records.cfx import inspection_message, review_message
from app.records.db import WRITE, display_url, make_engine
from app.records.errors import InvalidCursorError, UnknownInspectionError
from app.records.models import InspectionRow, ReviewRow, UTCDateTime
from app.records.outbox import write_messages
from app.records.reviews import add_review, review_history, review_of
from app.records.schemas import (
    META_MAX_CHARS,
    Inspection,
    InspectionFilter,
    InspectionRecord,
    Page,
    Review,
    ReviewBody,
    ReviewedInspection,
    Stats,
)
from app.records.stats import compute_stats

__all__ = ["MAX_PAGE", "RecordStore"]

logger = logging.getLogger("pcb_inspect.records")

#: The largest page :meth:`RecordStore.query` returns.
MAX_PAGE = 1000


class RecordStore:
    """Inspection records and reviews in one database.

    Args:
        engine_or_url: An engine from :func:`app.records.db.make_engine`, or a URL to make one
            (the store then owns it and :meth:`close` disposes of it).
        cfx_source: This endpoint's CFX handle: every new inspection and review then writes
            its CFX message to the outbox in the same transaction (:mod:`app.records.outbox`);
            ``None``: no messages.

    The schema must exist (``pcb-inspect db upgrade``; :func:`app.records.migrate.check_schema`
    at startup).
    """

    def __init__(self, engine_or_url: Engine | str, *, cfx_source: str | None = None) -> None:
        self.cfx_source = cfx_source
        if isinstance(engine_or_url, str):
            self.engine = make_engine(engine_or_url)
            self._owns_engine = True
        else:
            self.engine = engine_or_url
            self._owns_engine = False
        self._dialect = self.engine.dialect.name
        self._read = sessionmaker(self.engine, expire_on_commit=False)
        # Writers begin with the write lock on SQLite (see app.records.db.WRITE).
        self._write = sessionmaker(self.engine.execution_options(**{WRITE: True}),
                                   expire_on_commit=False)

    def __repr__(self) -> str:
        return f"RecordStore({display_url(self.engine.url)!r})"

    def close(self) -> None:
        """Closes the pooled connections (of an engine the store made itself)."""
        if self._owns_engine:
            self.engine.dispose()

    @contextmanager
    def _writing(self) -> Iterator[Session]:
        with self._write() as session, session.begin():
            yield session

    # --- inspections ---------------------------------------------------------------------

    def ping(self) -> None:
        """Raises if the database cannot be reached (for readiness and the spool's probe)."""
        with self.engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    def add(self, record: InspectionRecord) -> bool:
        """Stores ``record``; ``False`` when one with its id is already stored (a replay)."""
        return self.add_many([record]) == 1

    def add_many(self, records: Sequence[InspectionRecord]) -> int:
        """Stores ``records`` in one transaction, skipping ids already stored (idempotent: the
        spool may replay a record twice). Returns how many were new.
        """
        if not records:
            return 0
        rows = [_row_values(r) for r in records]
        insert = pg_insert if self._dialect == "postgresql" else sqlite_insert
        # RETURNING lists only the rows inserted (not those skipped as already there); with
        # several rows SQLAlchemy batches them into multi-row INSERTs ("insertmanyvalues").
        stmt = (insert(InspectionRow).on_conflict_do_nothing(index_elements=["id"])
                .returning(InspectionRow.id))
        with self._writing() as session:
            if len(rows) == 1:
                inserted = session.execute(stmt.values(rows[0])).scalars().all()
            else:
                inserted = session.execute(stmt, rows).scalars().all()
            if self.cfx_source is not None and inserted:
                new = set(inserted)
                write_messages(session, [inspection_message(r, self.cfx_source)
                                         for r in records if r.id in new])
            return len(inserted)

    def get(self, inspection_id: str) -> Inspection:
        """The inspection with this id; :class:`UnknownInspectionError` if there is none."""
        with self._read() as session:
            row = session.get(InspectionRow, inspection_id)
            if row is None:
                raise UnknownInspectionError(inspection_id)
            return _inspection(row)

    def delete(self, inspection_id: str) -> str | None:
        """Deletes the inspection and its reviews; returns its kept image path (which the
        caller may remove when no other record uses it). :class:`UnknownInspectionError` if
        there is none.
        """
        with self._writing() as session:
            row = session.get(InspectionRow, inspection_id)
            if row is None:
                raise UnknownInspectionError(inspection_id)
            path = row.image_path
            session.execute(delete(ReviewRow).where(ReviewRow.inspection_id == inspection_id))
            session.delete(row)
            return path

    def count(self, filters: InspectionFilter | None = None) -> int:
        """How many inspections match ``filters``."""
        stmt = select(func.count()).select_from(InspectionRow).where(
            *_conditions(filters, self._dialect))
        with self._read() as session:
            return int(session.scalar(stmt) or 0)

    def query(self, filters: InspectionFilter | None = None, *, limit: int = 50,
              cursor: str | None = None) -> Page:
        """One page of inspections, newest first, and the cursor of the next page.

        Keyset pagination on ``(created_at, id)``: a page starts strictly after the last item
        of the previous one, so records added meanwhile cause neither duplicates nor gaps.
        """
        if not 1 <= limit <= MAX_PAGE:
            raise ValueError(f"limit must be between 1 and {MAX_PAGE}, received {limit}")
        conds = _conditions(filters, self._dialect)
        if cursor is not None:
            at, last_id = _decode_cursor(cursor)
            # A row-value comparison, not (a < x OR a = x AND b < y): both databases turn it
            # into one range scan of the (created_at, id) index, so page 1000 costs what page
            # 1 does (the OR form walks the index from the newest row on PostgreSQL).
            conds.append(tuple_(InspectionRow.created_at, InspectionRow.id)
                         < tuple_(literal(at, UTCDateTime()), literal(last_id, String())))
        stmt = (select(InspectionRow).where(*conds)
                .order_by(InspectionRow.created_at.desc(), InspectionRow.id.desc())
                .limit(limit + 1))
        with self._read() as session:
            rows = list(session.scalars(stmt))
        items = [_inspection(r) for r in rows[:limit]]
        next_cursor = _encode_cursor(items[-1]) if len(rows) > limit else None
        return Page(items, next_cursor)

    def iter_export(self, filters: InspectionFilter | None = None, *,
                    batch_size: int = 500) -> Iterator[Inspection]:
        """Every matching inspection, newest first, fetched ``batch_size`` at a time.

        Each batch is its own short read, so a slow consumer (a streamed CSV download) holds no
        transaction open and no lock; inspections recorded after the export started are not
        included (they are newer than its first page).
        """
        cursor: str | None = None
        while True:
            page = self.query(filters, limit=batch_size, cursor=cursor)
            yield from page.items
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    def image_path_in_use(self, path: str) -> bool:
        """Whether any record names this kept image (before deleting one of a deleted record:
        images are shared by the boards whose bytes were identical).
        """
        stmt = select(InspectionRow.id).where(InspectionRow.image_path == path).limit(1)
        with self._read() as session:
            return session.scalar(stmt) is not None

    def clear_image_paths(self, paths: Iterable[str]) -> int:
        """Forgets the kept image ``paths`` in every record that has one; returns how many
        records changed (the image store calls it before it deletes the files).
        """
        paths = list(paths)
        changed = 0
        with self._writing() as session:
            # Chunks: SQLite allows at most 32766 bound parameters per statement.
            for i in range(0, len(paths), 500):
                result = session.execute(
                    update(InspectionRow).where(InspectionRow.image_path.in_(paths[i:i + 500]))
                    .values(image_path=None)
                )
                changed += int(getattr(result, "rowcount", 0) or 0)
        return changed

    # --- reviews -------------------------------------------------------------------------

    def add_review(self, inspection_id: str, reviewer: str,
                   body: ReviewBody | Mapping[str, Any], *,
                   class_names: Sequence[str]) -> tuple[Review, bool]:
        """Records a review of the inspection; returns it and whether it is new.

        Resending the current review (same reviewer, same canonical body) changes nothing and
        returns ``(current, False)``. A different review is added to the history and becomes
        the current one. ``class_names`` is the model's class list, which every class in the
        review must come from.

        Raises:
            UnknownInspectionError: no inspection has this id.
            UnknownDefectError: an outcome names a defect id the inspection does not have.
            UnknownClassError: a class not in ``class_names``.
            InvalidBoxError: a missed-defect box outside the image or with no area.
            pydantic.ValidationError: ``body`` is a mapping of the wrong shape.
        """
        if not isinstance(body, ReviewBody):
            body = ReviewBody.model_validate(body)
        if not reviewer or len(reviewer) > META_MAX_CHARS:
            raise ValueError(f"reviewer must be 1 to {META_MAX_CHARS} characters, received "
                             f"{reviewer!r}")
        with self._writing() as session:
            review, created = add_review(session, inspection_id, reviewer, body, class_names)
            if created and self.cfx_source is not None:
                row = session.get(InspectionRow, inspection_id)
                assert row is not None  # add_review found it, under its lock
                write_messages(session, [review_message(_inspection(row), review,
                                                        self.cfx_source)])
            return review, created

    def reviews(self, inspection_id: str) -> list[Review]:
        """The review history of an inspection, oldest first (the last is the current one).
        :class:`UnknownInspectionError` if there is no such inspection.
        """
        with self._read() as session:
            return review_history(session, inspection_id)

    def reviews_by_id(self, review_ids: Iterable[str]) -> dict[str, Review]:
        """The reviews with these ids, by id (the current reviews of a page of inspections,
        for the CSV export's outcome columns); ids not found are left out."""
        ids = list(dict.fromkeys(review_ids))
        found: dict[str, Review] = {}
        with self._read() as session:
            # Chunks: SQLite allows at most 32766 bound parameters per statement.
            for i in range(0, len(ids), 500):
                stmt = select(ReviewRow).where(ReviewRow.id.in_(ids[i:i + 500]))
                found.update((row.id, review_of(row)) for row in session.scalars(stmt))
        return found

    def reviewed_for_export(self, *, batch_size: int = 200) -> Iterator[ReviewedInspection]:
        """Every reviewed inspection whose image is kept, with its current review, oldest
        first (for ``pcb-inspect export-reviews``).
        """
        last_id = ""
        while True:
            stmt = (select(InspectionRow, ReviewRow)
                    .join(ReviewRow, ReviewRow.id == InspectionRow.review_id)
                    .where(InspectionRow.reviewed == true(),
                           InspectionRow.image_path.is_not(None),
                           InspectionRow.id > last_id)
                    .order_by(InspectionRow.id).limit(batch_size))
            with self._read() as session:
                batch = [(i, r) for i, r in session.execute(stmt)]
            for ins, rev in batch:
                yield ReviewedInspection(_inspection(ins), review_of(rev))
            if len(batch) < batch_size:
                return
            last_id = batch[-1][0].id

    # --- dashboard -----------------------------------------------------------------------

    def stats(self, since: dt.datetime, *, until: dt.datetime | None = None,
              bucket: Literal["hour", "day"] = "hour",
              class_names: Sequence[str] = ()) -> Stats:
        """Boards and fail rate per ``bucket``, and review outcomes per class, for the boards
        inspected in ``[since, until)`` (``until``: now).

        The false-call rate of a class is the share of the model's reviewed calls of that
        class that the current reviews mark ``false_call``; a ``reclassified`` call was a real
        defect (not a false call) of another class. Buckets are UTC hours (or days), every one
        in the range listed, empty ones with zeros.
        """
        return compute_stats(self._read, self._dialect, since, until, bucket, class_names)


# --- helpers ------------------------------------------------------------------------------


def _conditions(filters: InspectionFilter | None, dialect: str) -> list[ColumnElement[bool]]:
    if filters is None:
        return []
    conds: list[ColumnElement[bool]] = []
    if filters.since is not None:
        conds.append(InspectionRow.created_at >= filters.since)
    if filters.until is not None:
        conds.append(InspectionRow.created_at < filters.until)
    for name in ("verdict", "product", "serial", "line", "station"):
        value = getattr(filters, name)
        if value is not None:
            conds.append(getattr(InspectionRow, name) == value)
    for tag in filters.tags:
        conds.append(_has_tag(tag, dialect))
    if filters.reviewed is not None:
        # "= true", not "IS TRUE": PostgreSQL uses an index only for the former.
        conds.append(InspectionRow.reviewed == filters.reviewed)
    return conds


def _has_tag(tag: str, dialect: str) -> ColumnElement[bool]:
    """Whether a record's tags (a JSON array) hold ``tag``: JSONB containment on PostgreSQL,
    a scan of the array's elements on SQLite."""
    if dialect == "postgresql":
        return InspectionRow.tags.op("@>")(func.jsonb_build_array(tag))
    element = func.json_each(InspectionRow.tags).table_valued("value")
    return exists(select(literal(1)).select_from(element).where(element.c.value == tag))


def _encode_cursor(item: Inspection) -> str:
    raw = json.dumps([item.created_at.isoformat(), item.id], separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[dt.datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        at, last_id = json.loads(raw)
        when = dt.datetime.fromisoformat(at)
    except (binascii.Error, ValueError, TypeError, UnicodeDecodeError) as exc:
        raise InvalidCursorError(cursor, f"not a cursor ({exc})") from None
    if when.tzinfo is None or not isinstance(last_id, str):
        raise InvalidCursorError(cursor, "malformed content")
    try:
        # In UTC here, where a time its zone moves past year 1 or 9999 can still be refused
        # (the database column would raise OverflowError while binding it).
        when = when.astimezone(dt.UTC)
    except OverflowError:
        raise InvalidCursorError(cursor, f"time {at!r} is out of range") from None
    return when, last_id


def _row_values(r: InspectionRecord) -> dict[str, Any]:
    return {
        "id": r.id, "created_at": r.created_at, "serial": r.serial, "line": r.line,
        "station": r.station, "product": r.product, "tags": list(r.tags),
        "image_sha256": r.image_sha256, "image_bytes": r.image_bytes, "width": r.width,
        "height": r.height, "image_path": r.image_path, "model_name": r.model_name,
        "model_version": r.model_version, "model_mode": r.model_mode,
        "weights_sha256": r.weights_sha256, "rules": r.rules.model_dump(mode="json"),
        "verdict": r.verdict, "defect_count": len(r.defects),
        "defects": [d.model_dump(mode="json", by_alias=True) for d in r.defects],
        "reference": None if r.reference is None else r.reference.model_dump(mode="json"),
        "recipe": None if r.recipe is None else r.recipe.model_dump(mode="json"),
        "units": None if r.units is None else [u.model_dump(mode="json") for u in r.units],
        "ignored": None if r.ignored is None else [
            i.model_dump(mode="json", by_alias=True) for i in r.ignored],
        "reviewed": False, "review_id": None,
    }


_ROW_FIELDS = tuple(k for k in Inspection.model_fields)


def _inspection(row: InspectionRow) -> Inspection:
    return Inspection.model_validate({name: getattr(row, name) for name in _ROW_FIELDS})
