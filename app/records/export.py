"""Streamed exports of inspections: JSON lines and CSV, one line at a time.

Both take an iterator (:meth:`RecordStore.iter_export`) and yield text lines, so a route can
hand them to a ``StreamingResponse`` (through a thread: the store is sync) without building
the file in memory.

JSON lines keep the whole record. The CSV is for a spreadsheet: flat columns, one row per
defect (the model's calls, then the defects a reviewer drew as missed; a board with neither
has one row with the defect columns empty), each with its review outcome. Every cell that a
spreadsheet would read as a formula is neutralised (OWASP, "CSV Injection"): serials, tags
and classes come from the stations and the reviewers, and an export is opened by an admin.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from itertools import islice

from app.records.schemas import Inspection, Review

__all__ = ["CSV_COLUMNS", "csv_lines", "jsonl_lines", "neutralise_cell"]

#: The CSV's columns: the board's (repeated on each of its rows), then one defect's.
CSV_COLUMNS = (
    "id", "created_at", "serial", "line", "station", "product", "tags", "verdict",
    "defect_count", "image_sha256", "image_bytes", "width", "height", "image_path",
    "model_name", "model_version", "model_mode", "weights_sha256",
    "threshold", "min_area_px", "min_confidence", "pixels_per_mm", "fail_rule",
    "fail_min_count", "fail_min_area_mm2",
    "reference_source", "reference_product", "reference_sha256",
    "reviewed", "review_id", "reviewer", "reviewed_at",
    "defect_source", "defect_id", "class", "confidence", "x_min", "y_min", "x_max", "y_max",
    "area_px", "area_mm2", "centroid_x", "centroid_y", "review_outcome", "reviewed_class",
)
#: Joins a board's tags in one cell (a tag is free text without this character, mostly).
TAG_SEPARATOR = ";"

#: What a spreadsheet may take as the start of a formula (OWASP's list): = + - @, tab, CR.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
#: A plain number keeps its sign: ``-0.5`` is a number to a spreadsheet, not a formula.
_NUMBER = re.compile(r"[+-]?\d+(\.\d+)?([eE][+-]?\d+)?")
#: Inspections whose reviews are fetched at once.
_REVIEW_BATCH = 200

ReviewLookup = Callable[[list[str]], Mapping[str, Review]]


def jsonl_lines(items: Iterable[Inspection]) -> Iterator[str]:
    """One JSON object per inspection, each ending in a newline."""
    for item in items:
        yield item.model_dump_json(by_alias=True) + "\n"


def neutralise_cell(value: str) -> str:
    """``value`` as a spreadsheet shows it as text: a cell starting with a formula character
    gets a leading single quote (the writer quotes every cell)."""
    if value.startswith(_FORMULA_START) and not _NUMBER.fullmatch(value):
        return "'" + value
    return value


def csv_lines(items: Iterable[Inspection], reviews: ReviewLookup | None = None) -> Iterator[str]:
    """The header, then one CSV row per defect (RFC 4180, every cell quoted, CRLF line ends).

    Args:
        items: The inspections, in the order to write them.
        reviews: Looks up current reviews by id (:meth:`RecordStore.reviews_by_id`); without
            it the review columns other than ``reviewed`` and ``review_id`` stay empty.
    """
    buf = io.StringIO()
    writer = csv.writer(buf, quoting=csv.QUOTE_ALL)

    def take() -> str:
        out = buf.getvalue()
        buf.seek(0)
        buf.truncate()
        return out

    writer.writerow(CSV_COLUMNS)
    yield take()
    iterator = iter(items)
    while batch := list(islice(iterator, _REVIEW_BATCH)):
        ids = [i.review_id for i in batch if i.review_id]
        found = reviews(ids) if reviews is not None and ids else {}
        for item in batch:
            review = found.get(item.review_id) if item.review_id else None
            for row in _rows(item, review):
                writer.writerow([neutralise_cell(_text(row.get(c))) for c in CSV_COLUMNS])
            yield take()


def _board(item: Inspection, review: Review | None) -> dict[str, object]:
    rules, ref = item.rules, item.reference
    return {
        "id": item.id, "created_at": item.created_at.isoformat(), "serial": item.serial,
        "line": item.line, "station": item.station, "product": item.product,
        "tags": TAG_SEPARATOR.join(item.tags), "verdict": item.verdict,
        "defect_count": item.defect_count, "image_sha256": item.image_sha256,
        "image_bytes": item.image_bytes, "width": item.width, "height": item.height,
        "image_path": item.image_path, "model_name": item.model_name,
        "model_version": item.model_version, "model_mode": item.model_mode,
        "weights_sha256": item.weights_sha256,
        "threshold": rules.threshold, "min_area_px": rules.min_area_px,
        "min_confidence": rules.min_confidence, "pixels_per_mm": rules.pixels_per_mm,
        "fail_rule": rules.fail_rule, "fail_min_count": rules.fail_min_count,
        "fail_min_area_mm2": rules.fail_min_area_mm2,
        "reference_source": ref.source if ref else None,
        "reference_product": ref.product if ref else None,
        "reference_sha256": ref.sha256 if ref else None,
        "reviewed": item.reviewed, "review_id": item.review_id,
        "reviewer": review.reviewer if review else None,
        "reviewed_at": review.created_at.isoformat() if review else None,
    }


def _rows(item: Inspection, review: Review | None) -> Iterator[dict[str, object]]:
    board = _board(item, review)
    outcomes = {o.defect_id: o for o in review.body.defects} if review else {}
    for d in item.defects:
        outcome = outcomes.get(d.id)
        x_min, y_min, x_max, y_max = d.bbox
        yield {
            **board, "defect_source": "model", "defect_id": d.id, "class": d.class_,
            "confidence": d.confidence, "x_min": x_min, "y_min": y_min, "x_max": x_max,
            "y_max": y_max, "area_px": d.area_px, "area_mm2": d.area_mm2,
            "centroid_x": d.centroid[0], "centroid_y": d.centroid[1],
            # A reviewed board's call without an outcome was left unreviewed by the operator.
            "review_outcome": outcome.outcome if outcome else (
                "unreviewed" if review else None),
            "reviewed_class": (outcome.class_ if outcome and outcome.class_ else None),
        }
    for m in review.body.missed if review else ():
        x_min, y_min, x_max, y_max = m.bbox
        yield {
            **board, "defect_source": "missed", "class": m.class_, "x_min": x_min,
            "y_min": y_min, "x_max": x_max, "y_max": y_max, "review_outcome": "missed",
            "reviewed_class": m.class_,
        }
    if not item.defects and not (review and review.body.missed):
        yield board


def _text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
