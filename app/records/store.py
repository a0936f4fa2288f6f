"""``RecordStore``: the inspections and their reviews, in SQLite or PostgreSQL (sync).

Every method runs its own short transaction and may be called from several threads at once
(each takes a pooled connection). The async routes call it through a thread
(``anyio.to_thread`` / ``asyncio.to_thread``), as :class:`app.records.recorder.Recorder` does.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import logging
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Literal

from sqlalchemy import (
    ColumnElement,
    Engine,
    String,
    and_,
    case,
    delete,
    func,
    literal,
    literal_column,
    select,
    text,
    true,
    tuple_,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session, sessionmaker

from app.records.db import WRITE, display_url, make_engine
from app.records.errors import (
    InvalidBoxError,
    InvalidCursorError,
    UnknownClassError,
    UnknownDefectError,
    UnknownInspectionError,
)
from app.records.ids import REVIEW_PREFIX, new_id
from app.records.models import InspectionRow, ReviewRow, UTCDateTime
from app.records.schemas import (
    Box,
    ClassStats,
    Inspection,
    InspectionFilter,
    InspectionRecord,
    Page,
    Review,
    ReviewBody,
    ReviewedInspection,
    Stats,
    TimeBucket,
    ordered_classes,
    rate,
    utcnow,
)

__all__ = ["MAX_PAGE", "RecordStore"]

logger = logging.getLogger("pcb_inspect.records")

#: The largest page :meth:`RecordStore.query` returns.
MAX_PAGE = 1000
_BUCKETS: dict[str, dt.timedelta] = {"hour": dt.timedelta(hours=1), "day": dt.timedelta(days=1)}


class RecordStore:
    """Inspection records and reviews in one database.

    Args:
        engine_or_url: An engine from :func:`app.records.db.make_engine`, or a URL to make one
            (the store then owns it and :meth:`close` disposes of it).

    The schema must exist (``pcb-inspect db upgrade``; :func:`app.records.migrate.check_schema`
    at startup).
    """

    def __init__(self, engine_or_url: Engine | str) -> None:
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
                return len(session.execute(stmt.values(rows[0])).all())
            return len(session.execute(stmt, rows).all())

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
        stmt = select(func.count()).select_from(InspectionRow).where(*_conditions(filters))
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
        conds = _conditions(filters)
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
        if not reviewer or len(reviewer) > 128:
            raise ValueError(f"reviewer must be 1 to 128 characters, received {reviewer!r}")
        digest = body.digest()
        with self._writing() as session:
            # FOR UPDATE (PostgreSQL) serialises reviews of one board, so two identical
            # resends racing each other still store one row; SQLite's BEGIN IMMEDIATE does.
            row = session.scalars(
                select(InspectionRow).where(InspectionRow.id == inspection_id).with_for_update()
            ).one_or_none()
            if row is None:
                raise UnknownInspectionError(inspection_id)
            _validate_review(body, row, class_names)
            if row.review_id is not None:
                current = session.get(ReviewRow, row.review_id)
                if current is not None and current.digest == digest \
                        and current.reviewer == reviewer:
                    return _review(current), False
            new = ReviewRow(id=new_id(REVIEW_PREFIX), inspection_id=inspection_id,
                            reviewer=reviewer, created_at=utcnow(), digest=digest,
                            body=body.canonical())
            session.add(new)
            row.reviewed = True
            row.review_id = new.id
            return _review(new), True

    def reviews(self, inspection_id: str) -> list[Review]:
        """The review history of an inspection, oldest first (the last is the current one).
        :class:`UnknownInspectionError` if there is no such inspection.
        """
        with self._read() as session:
            if session.get(InspectionRow, inspection_id) is None:
                raise UnknownInspectionError(inspection_id)
            rows = session.scalars(
                select(ReviewRow).where(ReviewRow.inspection_id == inspection_id)
                .order_by(ReviewRow.created_at, ReviewRow.id)
            )
            return [_review(r) for r in rows]

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
                yield ReviewedInspection(_inspection(ins), _review(rev))
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
        if bucket not in _BUCKETS:
            raise ValueError(f"bucket must be 'hour' or 'day', received {bucket!r}")
        since = _aware(since, "since")
        until = utcnow() if until is None else _aware(until, "until")
        in_range = and_(InspectionRow.created_at >= since, InspectionRow.created_at < until)
        key = self._bucket_key(bucket)
        failed = func.sum(case((InspectionRow.verdict == "fail", 1), else_=0))
        stmt = (select(key.label("b"), func.count(), failed)
                .where(in_range).group_by(literal_column("b")))
        reviewed_stmt = (select(InspectionRow.defects, ReviewRow.body)
                         .join(ReviewRow, ReviewRow.id == InspectionRow.review_id)
                         .where(in_range, InspectionRow.reviewed == true()))
        with self._read() as session:
            counts = {_parse_bucket(b): (int(n), int(f or 0))
                      for b, n, f in session.execute(stmt)}
            reviewed = list(session.execute(reviewed_stmt))

        buckets = []
        step = _BUCKETS[bucket]
        start = _floor(since, bucket)
        while start < until:
            n, f = counts.pop(start, (0, 0))
            buckets.append(TimeBucket(start=start, boards=n, failed=f, fail_rate=rate(f, n)))
            start += step
        assert not counts, f"buckets outside [{since}, {until}): {sorted(counts)}"

        outcomes: Counter[tuple[str, str]] = Counter()
        for defects, review in reviewed:
            called = {d["id"]: d["class"] for d in defects}
            for o in review.get("defects", []):
                cls = called.get(o["defect_id"])
                if cls is not None:
                    outcomes[(cls, o["outcome"])] += 1
            for m in review.get("missed", []):
                outcomes[(m["class"], "missed")] += 1
        classes = []
        for cls in ordered_classes(class_names, [c for c, _ in outcomes]):
            confirmed, false_calls, reclassified = (
                outcomes[(cls, "confirmed")], outcomes[(cls, "false_call")],
                outcomes[(cls, "reclassified")])
            calls = confirmed + false_calls + reclassified
            classes.append(ClassStats.model_validate({
                "class": cls, "reviewed_calls": calls, "confirmed": confirmed,
                "false_calls": false_calls, "reclassified": reclassified,
                "missed": outcomes[(cls, "missed")], "false_call_rate": rate(false_calls, calls),
            }))
        boards = sum(b.boards for b in buckets)
        failed_total = sum(b.failed for b in buckets)
        return Stats(since=since, until=until, bucket=bucket, boards=boards,
                     failed=failed_total, fail_rate=rate(failed_total, boards),
                     reviewed=len(reviewed), buckets=buckets, classes=classes)

    def _bucket_key(self, bucket: str) -> ColumnElement[str]:
        col = InspectionRow.created_at
        if self._dialect == "postgresql":
            # timezone('UTC', timestamptz) gives the UTC wall time, whatever the session zone.
            return func.to_char(func.date_trunc(bucket, func.timezone("UTC", col)),
                                'YYYY-MM-DD"T"HH24:00:00')
        # SQLite stores naive UTC text; strftime reads it as UTC.
        fmt = "%Y-%m-%dT%H:00:00" if bucket == "hour" else "%Y-%m-%dT00:00:00"
        return func.strftime(fmt, col)


# --- helpers ------------------------------------------------------------------------------


def _aware(value: dt.datetime, name: str) -> dt.datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware, received naive {value.isoformat()}")
    return value.astimezone(dt.UTC)


def _floor(t: dt.datetime, bucket: str) -> dt.datetime:
    t = t.astimezone(dt.UTC).replace(minute=0, second=0, microsecond=0)
    return t.replace(hour=0) if bucket == "day" else t


def _parse_bucket(value: str) -> dt.datetime:
    return dt.datetime.fromisoformat(value).replace(tzinfo=dt.UTC)


def _conditions(filters: InspectionFilter | None) -> list[ColumnElement[bool]]:
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
    if filters.reviewed is not None:
        # "= true", not "IS TRUE": PostgreSQL uses an index only for the former.
        conds.append(InspectionRow.reviewed == filters.reviewed)
    return conds


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
        "reviewed": False, "review_id": None,
    }


_ROW_FIELDS = tuple(k for k in Inspection.model_fields)


def _inspection(row: InspectionRow) -> Inspection:
    return Inspection.model_validate({name: getattr(row, name) for name in _ROW_FIELDS})


def _review(row: ReviewRow) -> Review:
    return Review(id=row.id, inspection_id=row.inspection_id, reviewer=row.reviewer,
                  created_at=row.created_at, digest=row.digest,
                  body=ReviewBody.model_validate(row.body))


def _validate_review(body: ReviewBody, row: InspectionRow, class_names: Sequence[str]) -> None:
    called = {d["id"]: d["class"] for d in row.defects}
    known = list(class_names)
    for i, o in enumerate(body.defects):
        if o.defect_id not in called:
            raise UnknownDefectError(
                ("defects", i, "defect_id"), o.defect_id,
                f"inspection {row.id} has no defect {o.defect_id}; its defect ids are "
                f"{sorted(called)}")
        if o.outcome == "reclassified":
            assert o.class_ is not None  # the schema requires it
            _check_class(("defects", i, "class"), o.class_, known)
            if o.class_ == called[o.defect_id]:
                raise UnknownClassError(
                    ("defects", i, "class"), o.class_,
                    f"defect {o.defect_id} is reclassified as {o.class_!r}, the class the "
                    "model gave it; expected another class, or outcome 'confirmed'")
    for i, m in enumerate(body.missed):
        _check_class(("missed", i, "class"), m.class_, known)
        _check_box(("missed", i, "bbox"), m.bbox, row.width, row.height)


def _check_class(loc: tuple[str | int, ...], value: str, known: list[str]) -> None:
    if value not in known:
        raise UnknownClassError(loc, value,
                                f"unknown class {value!r}; expected one of {known}")


def _check_box(loc: tuple[str | int, ...], box: Box, width: int, height: int) -> None:
    x0, y0, x1, y1 = box
    if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
        raise InvalidBoxError(
            loc, list(box),
            f"box {list(box)} is outside the {width}x{height} image or has no area; expected "
            f"[x_min, y_min, x_max, y_max] with 0 <= x_min < x_max <= {width} and "
            f"0 <= y_min < y_max <= {height}")
