"""The reviews of :class:`app.records.store.RecordStore`: adding one (checked against the
inspection it reviews) and reading an inspection's history, inside the store's transactions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.records.errors import (
    InvalidBoxError,
    UnknownClassError,
    UnknownDefectError,
    UnknownInspectionError,
)
from app.records.ids import REVIEW_PREFIX, new_id
from app.records.models import InspectionRow, ReviewRow
from app.records.schemas import Box, Review, ReviewBody, utcnow

__all__ = ["add_review", "check_review", "review_history", "review_of"]


def add_review(session: Session, inspection_id: str, reviewer: str, body: ReviewBody,
               class_names: Sequence[str]) -> tuple[Review, bool]:
    """:meth:`RecordStore.add_review <app.records.store.RecordStore.add_review>` in its write
    transaction ``session``: the review and whether it is new.
    """
    digest = body.digest()
    # FOR UPDATE (PostgreSQL) serialises reviews of one board, so two identical resends racing
    # each other still store one row; SQLite's BEGIN IMMEDIATE does.
    row = session.scalars(
        select(InspectionRow).where(InspectionRow.id == inspection_id).with_for_update()
    ).one_or_none()
    if row is None:
        raise UnknownInspectionError(inspection_id)
    check_review(body, row.id, {d["id"]: d["class"] for d in row.defects}, row.width,
                 row.height, class_names)
    if row.review_id is not None:
        current = session.get(ReviewRow, row.review_id)
        if current is not None and current.digest == digest and current.reviewer == reviewer:
            return review_of(current), False
    new = ReviewRow(id=new_id(REVIEW_PREFIX), inspection_id=inspection_id, reviewer=reviewer,
                    created_at=utcnow(), digest=digest, body=body.canonical())
    session.add(new)
    row.reviewed = True
    row.review_id = new.id
    return review_of(new), True


def review_history(session: Session, inspection_id: str) -> list[Review]:
    """The reviews of an inspection, oldest first; :class:`UnknownInspectionError` if there is
    no such inspection.
    """
    if session.get(InspectionRow, inspection_id) is None:
        raise UnknownInspectionError(inspection_id)
    rows = session.scalars(
        select(ReviewRow).where(ReviewRow.inspection_id == inspection_id)
        .order_by(ReviewRow.created_at, ReviewRow.id)
    )
    return [review_of(r) for r in rows]


def review_of(row: ReviewRow) -> Review:
    """The :class:`Review` of a stored review row."""
    return Review(id=row.id, inspection_id=row.inspection_id, reviewer=row.reviewer,
                  created_at=row.created_at, digest=row.digest,
                  body=ReviewBody.model_validate(row.body))


def check_review(body: ReviewBody, inspection_id: str, called: Mapping[int, str], width: int,
                 height: int, class_names: Sequence[str]) -> None:
    """Raises the :class:`ReviewValidationError` of the first part of ``body`` that does not
    fit the inspection: its calls ``called`` (id: class), its image size, the classes."""
    known = list(class_names)
    for i, o in enumerate(body.defects):
        if o.defect_id not in called:
            raise UnknownDefectError(
                ("defects", i, "defect_id"), o.defect_id,
                f"inspection {inspection_id} has no defect {o.defect_id}; its defect ids are "
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
        _check_box(("missed", i, "bbox"), m.bbox, width, height)


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
