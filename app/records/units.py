"""The boards of a panel and a review of it: which unit holds a point, and each unit's verdict
after the review.

One rule places everything on a unit: the unit whose frame (max exclusive) holds the point.
A defect is placed by its centroid when the recipe is applied
(:func:`app.services.recipes.apply_recipe`), and a missed box an operator draws by the centroid
of its pixels, so that a box drawn around a defect lands where the defect would.
The review page, the review API and the CFX review message all read a review's units from
:func:`reviewed_units`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from pydantic import BaseModel, ConfigDict, Field

from app.records.schemas import Box, InspectionRecord, ReviewBody, UnitRecord, Verdict

__all__ = [
    "ReviewedOutside",
    "ReviewedUnit",
    "UnitReview",
    "box_centroid",
    "holds",
    "record_units",
    "reviewed_units",
    "unit_at",
]


def holds(frame: Sequence[int], x: float, y: float) -> bool:
    """Whether the frame ``[x_min, y_min, x_max, y_max]`` (max exclusive) holds ``(x, y)``."""
    x0, y0, x1, y1 = frame
    return x0 <= x < x1 and y0 <= y < y1


def unit_at(frames: Iterable[tuple[int, Sequence[int]]], x: float, y: float) -> int | None:
    """The position of the first of ``frames`` (``(position, bbox)``) holding ``(x, y)``;
    ``None`` if none does. Units do not overlap, so at most one holds a point."""
    return next((position for position, frame in frames if holds(frame, x, y)), None)


def box_centroid(box: Sequence[int]) -> tuple[float, float]:
    """The centroid of a filled box's pixels (max exclusive), as a defect's centroid is the mean
    of its pixels' coordinates: ``[10, 10, 20, 20]`` -> ``(14.5, 14.5)``."""
    x0, y0, x1, y1 = box
    return (x0 + x1 - 1) / 2, (y0 + y1 - 1) / 2


def record_units(record: InspectionRecord) -> list[UnitRecord]:
    """The record's units by position; a record made before units existed (``units``
    ``None``) or without any is one unit, the whole board, holding every defect."""
    listed = getattr(record, "units", None)
    if listed:
        # Records rebuilt from rows or messages may carry plain dicts.
        units = [UnitRecord.model_validate(u) if isinstance(u, Mapping) else u for u in listed]
        return sorted(units, key=lambda u: u.position)
    return [UnitRecord(position=1, identifier=record.serial, verdict=record.verdict,
                       defect_ids=[d.id for d in record.defects],
                       bbox=(0, 0, record.width, record.height))]


class _Out(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ReviewedUnit(_Out):
    """One board of the panel: the model's verdict and the verdict after the review."""

    position: int = Field(description="Its position number in the panel (1 without units).")
    identifier: str | None = Field(description="As the inspection named it; null without one.")
    bbox: Box = Field(description="Its frame [x_min, y_min, x_max, y_max], max exclusive.")
    verdict: Verdict = Field(description="The model's verdict on this board.")
    reviewed_verdict: Verdict = Field(
        description="After the review: 'fail' when a call of the board is confirmed or "
        "reclassified, when a missed box is drawn on it, or when the model failed it and some "
        "of its calls have no outcome; 'pass' otherwise.")
    defect_ids: list[int] = Field(description="The model's calls on this board.")
    missed: list[int] = Field(
        description="Indexes (0-based, into the review's 'missed') of the missed boxes whose "
        "centroid this board's frame holds.")
    confirmed: int = Field(description="Its calls confirmed.")
    false_calls: int = Field(description="Its calls marked false.")
    reclassified: int = Field(description="Its calls reclassified.")
    unreviewed: int = Field(description="Its calls without an outcome.")


class ReviewedOutside(_Out):
    """What lies outside every board of a panel (empty for a board without units)."""

    defect_ids: list[int] = Field(description="Counted calls whose centroid is on no board.")
    missed: list[int] = Field(description="Indexes of missed boxes whose centroid is on no "
                                          "board.")


class UnitReview(_Out):
    """A review, board by board."""

    units: list[ReviewedUnit] = Field(description="Every board, by position.")
    outside: ReviewedOutside


def _verdict(machine: Verdict, outcomes: Sequence[str | None], missed: int) -> Verdict:
    if missed or any(o in ("confirmed", "reclassified") for o in outcomes):
        return "fail"
    # A call left without an outcome keeps the model's say: it cannot pass a board it failed.
    if machine == "fail" and any(o is None for o in outcomes):
        return "fail"
    return "pass"


def reviewed_units(record: InspectionRecord, body: ReviewBody) -> UnitReview:
    """Each unit of ``record`` under the review ``body``: its calls (as the record placed
    them), the missed boxes of ``body`` whose centroid it holds (:func:`box_centroid`,
    :func:`unit_at`) and its verdict after the review."""
    units = record_units(record)
    outcome = {o.defect_id: o.outcome for o in body.defects}
    frames = [(u.position, u.bbox) for u in units]
    missed: dict[int | None, list[int]] = {}
    for i, m in enumerate(body.missed):
        missed.setdefault(unit_at(frames, *box_centroid(m.bbox)), []).append(i)
    out = []
    placed: set[int] = set()
    for u in units:
        calls = [outcome.get(i) for i in u.defect_ids]
        placed.update(u.defect_ids)
        mine = missed.get(u.position, [])
        out.append(ReviewedUnit(
            position=u.position, identifier=u.identifier, bbox=u.bbox, verdict=u.verdict,
            reviewed_verdict=_verdict(u.verdict, calls, len(mine)),
            defect_ids=list(u.defect_ids), missed=mine,
            confirmed=calls.count("confirmed"), false_calls=calls.count("false_call"),
            reclassified=calls.count("reclassified"), unreviewed=calls.count(None)))
    outside = ReviewedOutside(defect_ids=[d.id for d in record.defects if d.id not in placed],
                              missed=missed.get(None, []))
    return UnitReview(units=out, outside=outside)
