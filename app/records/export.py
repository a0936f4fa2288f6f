"""Streamed exports of inspections: JSON lines and CSV, one line at a time.

Both take an iterator (:meth:`RecordStore.iter_export`) and yield text lines, so a route can
hand them to a ``StreamingResponse`` (through a thread: the store is sync) without building
the file in memory.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Iterator

from app.records.schemas import Inspection

__all__ = ["CSV_COLUMNS", "csv_lines", "jsonl_lines"]

#: The CSV's columns: one row per board; defects, rules and tags as compact JSON cells.
CSV_COLUMNS = (
    "id", "created_at", "serial", "line", "station", "product", "tags", "verdict",
    "defect_count", "image_sha256", "image_bytes", "width", "height", "image_path",
    "model_name", "model_version", "model_mode", "weights_sha256", "rules", "defects",
    "reference", "reviewed", "review_id",
)


def jsonl_lines(items: Iterable[Inspection]) -> Iterator[str]:
    """One JSON object per inspection, each ending in a newline."""
    for item in items:
        yield item.model_dump_json(by_alias=True) + "\n"


def csv_lines(items: Iterable[Inspection]) -> Iterator[str]:
    """The header, then one CSV row per inspection (RFC 4180 quoting, CRLF line ends)."""
    buf = io.StringIO()
    writer = csv.writer(buf)

    def take() -> str:
        out = buf.getvalue()
        buf.seek(0)
        buf.truncate()
        return out

    writer.writerow(CSV_COLUMNS)
    yield take()
    for item in items:
        data = item.model_dump(mode="json", by_alias=True)
        data["defect_count"] = item.defect_count
        writer.writerow([_cell(data.get(c)) for c in CSV_COLUMNS])
        yield take()


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, dict)):
        return json.dumps(value, separators=(",", ":"))
    return str(value)
