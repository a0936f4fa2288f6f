"""The dashboard numbers of :meth:`app.records.store.RecordStore.stats`: boards and fail rate
per UTC hour or day, and the review outcomes per class.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Sequence
from typing import Literal

from sqlalchemy import ColumnElement, and_, case, func, literal_column, select, true
from sqlalchemy.orm import Session, sessionmaker

from app.records.models import InspectionRow, ReviewRow
from app.records.schemas import ClassStats, Stats, TimeBucket, ordered_classes, rate, utcnow

__all__ = ["BUCKETS", "compute_stats"]

#: The bucket sizes :func:`compute_stats` knows.
BUCKETS: dict[str, dt.timedelta] = {"hour": dt.timedelta(hours=1), "day": dt.timedelta(days=1)}


def compute_stats(read: sessionmaker[Session], dialect: str, since: dt.datetime,
                  until: dt.datetime | None, bucket: Literal["hour", "day"],
                  class_names: Sequence[str]) -> Stats:
    """:meth:`RecordStore.stats <app.records.store.RecordStore.stats>`, reading through
    ``read`` from a database of this ``dialect`` (``"postgresql"`` or ``"sqlite"``).
    """
    if bucket not in BUCKETS:
        raise ValueError(f"bucket must be 'hour' or 'day', received {bucket!r}")
    since = _aware(since, "since")
    until = utcnow() if until is None else _aware(until, "until")
    in_range = and_(InspectionRow.created_at >= since, InspectionRow.created_at < until)
    key = _bucket_key(dialect, bucket)
    failed = func.sum(case((InspectionRow.verdict == "fail", 1), else_=0))
    stmt = (select(key.label("b"), func.count(), failed)
            .where(in_range).group_by(literal_column("b")))
    reviewed_stmt = (select(InspectionRow.defects, ReviewRow.body)
                     .join(ReviewRow, ReviewRow.id == InspectionRow.review_id)
                     .where(in_range, InspectionRow.reviewed == true()))
    with read() as session:
        counts = {_parse_bucket(b): (int(n), int(f or 0))
                  for b, n, f in session.execute(stmt)}
        reviewed = list(session.execute(reviewed_stmt))

    buckets = []
    step = BUCKETS[bucket]
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


def _bucket_key(dialect: str, bucket: str) -> ColumnElement[str]:
    col = InspectionRow.created_at
    if dialect == "postgresql":
        # timezone('UTC', timestamptz) gives the UTC wall time, whatever the session zone.
        return func.to_char(func.date_trunc(bucket, func.timezone("UTC", col)),
                            'YYYY-MM-DD"T"HH24:00:00')
    # SQLite stores naive UTC text; strftime reads it as UTC.
    fmt = "%Y-%m-%dT%H:00:00" if bucket == "hour" else "%Y-%m-%dT00:00:00"
    return func.strftime(fmt, col)


def _aware(value: dt.datetime, name: str) -> dt.datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware, received naive {value.isoformat()}")
    return value.astimezone(dt.UTC)


def _floor(t: dt.datetime, bucket: str) -> dt.datetime:
    t = t.astimezone(dt.UTC).replace(minute=0, second=0, microsecond=0)
    return t.replace(hour=0) if bucket == "day" else t


def _parse_bucket(value: str) -> dt.datetime:
    return dt.datetime.fromisoformat(value).replace(tzinfo=dt.UTC)
