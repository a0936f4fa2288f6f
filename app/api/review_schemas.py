"""Response models of reviews board by board: a panel's units with their verdicts after the
review, next to the model's (see :func:`app.records.units.reviewed_units`).

Additive to the records' own models: a review, an inspection and its units keep every field
they had, and gain the per-unit review.
"""

from __future__ import annotations

from pydantic import Field

from app.api.schemas import InspectionDetailOut
from app.records import Inspection, Review, UnitRecord
from app.records.schemas import Verdict
from app.records.units import ReviewedOutside, ReviewedUnit, UnitReview

__all__ = ["InspectionUnitsOut", "ReviewPreviewOut", "ReviewUnitsOut", "UnitReviewedOut"]


class ReviewUnitsOut(Review):
    """A stored review, and what it makes of each board of the panel."""

    units: list[ReviewedUnit] = Field(
        description="Every board by position, with the model's verdict and the reviewed one "
        "(a board without a recipe's units: one, the whole image).")
    outside: ReviewedOutside = Field(
        description="Calls and missed boxes on no board of the panel (none without units).")

    @classmethod
    def of(cls, review: Review, units: UnitReview) -> ReviewUnitsOut:
        return cls(**dict(review), units=units.units, outside=units.outside)


class UnitReviewedOut(UnitRecord):
    """One board of the panel and its verdicts, the model's and the current review's."""

    reviewed_verdict: Verdict | None = Field(
        None, description="Its verdict after the current review; null until reviewed.")


class InspectionUnitsOut(InspectionDetailOut):
    """The record and its reviews, each board with its reviewed verdict."""

    units: list[UnitReviewedOut] | None = None  # type: ignore[assignment]
    reviews: list[ReviewUnitsOut] = Field(  # type: ignore[assignment]
        description="Every distinct review of the board, oldest first; the last is current, "
        "and sets each unit's reviewed_verdict.")

    @classmethod
    def of(cls, inspection: Inspection,
           reviews: list[tuple[Review, UnitReview]]) -> InspectionUnitsOut:
        fields = dict(inspection)
        current = {u.position: u.reviewed_verdict for u in reviews[-1][1].units} if reviews \
            else {}
        units = fields.pop("units")
        if units is not None:
            units = [UnitReviewedOut(**dict(u), reviewed_verdict=current.get(u.position))
                     for u in units]
        return cls(**fields, units=units,
                   reviews=[ReviewUnitsOut.of(r, u) for r, u in reviews])


class ReviewPreviewOut(UnitReview):
    """What a review would make of each board, not recorded."""
