"""Records in and out: pydantic models shared by the store, the spool and (later) the routes.

A defect's class is ``class`` on the wire and in the database, ``class_`` in Python (a
keyword). Dump with ``by_alias=True`` to get the wire form.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Callable, Sequence
from typing import Annotated, Any, Literal, NamedTuple

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    StrictStr,
    field_validator,
    model_validator,
)

from app.core.ids import ProductId
from app.inference.defects import Defect
from app.records.ids import INSPECTION_PREFIX, REVIEW_PREFIX, id_pattern, new_id

__all__ = [
    "Box",
    "ClassStats",
    "DefectOutcome",
    "GoldenBoardRef",
    "Inspection",
    "InspectionFilter",
    "IgnoredRecord",
    "InspectionRecord",
    "MAX_REVIEW_BYTES",
    "META_MAX_CHARS",
    "META_MAX_TAGS",
    "MAX_REVIEW_MISSED",
    "MAX_REVIEW_OUTCOMES",
    "MissedDefect",
    "Page",
    "RecipeRef",
    "RecordedRules",
    "Review",
    "ReviewBody",
    "ReviewRequest",
    "ReviewedInspection",
    "Stats",
    "TimeBucket",
    "UnitRecord",
    "Verdict",
    "utcnow",
]

Verdict = Literal["pass", "fail"]
Outcome = Literal["confirmed", "false_call", "reclassified"]
#: ``[x_min, y_min, x_max, y_max]`` in image pixels, max exclusive (the API's box).
Box = tuple[int, int, int, int]
#: A box an operator sends: JSON integers only (``true`` or ``1.0`` is not a coordinate).
StrictBox = tuple[StrictInt, StrictInt, StrictInt, StrictInt]

#: Outcomes per review, at most: one per defect the model reported, and a board with more
#: calls than this is a failed scan to rescan, not one to review call by call.
MAX_REVIEW_OUTCOMES = 2000
#: Missed defects per review, at most: several times the defects a real board has.
MAX_REVIEW_MISSED = 500
#: Bytes of a review body, at most: a maximal review pretty-printed fits in a third of it.
MAX_REVIEW_BYTES = 512 * 1024

_INSPECTION_ID = id_pattern(INSPECTION_PREFIX)
_SHA256 = r"^[0-9a-f]{64}$"


def utcnow() -> dt.datetime:
    """Now, in UTC (aware)."""
    return dt.datetime.now(dt.UTC)


def _aware_utc(value: dt.datetime) -> dt.datetime:
    # A naive time is ambiguous (the server's zone? UTC?) and would sort wrongly against the
    # stored UTC times, so it is refused rather than guessed.
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"expected a timezone-aware datetime, received naive {value.isoformat()}")
    return value.astimezone(dt.UTC)


UtcDatetime = Annotated[dt.datetime, AfterValidator(_aware_utc)]
#: Longest free-text board metadata (a serial, line, station, tag or unit identifier, and a
#: reviewer's name): its indexed column holds this much. One bound for the records, the
#: service's checks and the API's parameters.
META_MAX_CHARS = 128
#: Most tags per board.
META_MAX_TAGS = 32
#: Free-text board metadata (serial, line, ...).
MetaText = Annotated[str, Field(min_length=1, max_length=META_MAX_CHARS)]


def _unique_by(key: Callable[[Any], int], message: str) -> AfterValidator:
    """Refuses a list in which two items have the same ``key``; ``message`` names it (``{}``:
    the repeated key)."""

    def check(items: list[Any]) -> list[Any]:
        seen: set[int] = set()
        for item in items:
            k = key(item)
            if k in seen:
                raise ValueError(message.format(k))
            seen.add(k)
        return items

    return AfterValidator(check)


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True,
                              protected_namespaces=())


# app.core.rules.Rules as recorded: without merge_distance_px (the model's, not the board's),
# and without bounds, since a record keeps what was applied and older records lack the
# optional rules.
class RecordedRules(_Model):
    """The post-processing and verdict rules the board was judged by."""

    threshold: float
    min_area_px: int
    min_confidence: float | None = None
    pixels_per_mm: float
    fail_rule: Literal["count", "area"]
    fail_min_count: int | None = None
    fail_min_area_mm2: float | None = None


class GoldenBoardRef(_Model):
    """The golden board a board was compared with (stored as the record's ``reference``)."""

    source: Literal["upload", "product"]
    product: ProductId | None = None
    sha256: str = Field(pattern=_SHA256)
    alignment: dict[str, Any] | None = None


class RecipeRef(_Model):
    """The product recipe revision a board was judged by."""

    product: ProductId
    revision: int = Field(ge=1)
    sha256: str = Field(pattern=_SHA256, description="sha256 of the revision's canonical JSON.")


class UnitRecord(_Model):
    """One board of the panel and its verdict (the whole image without a recipe's units)."""

    # Every field is in every answer and record, defaulted or not: the schema says so.
    model_config = ConfigDict(json_schema_serialization_defaults_required=True)

    position: int = Field(ge=1, description="Its position number in the panel (1 without "
                          "units).")
    # Not bounded here: it is made of bounded metadata (a unit serial, or the serial and the
    # position), and a serial of the longest kind with "-256" added is still a valid one.
    identifier: str | None = Field(
        None, description="Its unit_serials entry, else serial-position (e.g. SER123-2), else "
        "the serial for a board without units; null without either.")
    verdict: Verdict = Field(description="The fail rule applied to the defects whose "
                             "centroid it holds.")
    defect_ids: list[int] = Field(default_factory=list,
                                  description="Ids of its defects (in 'defects').")
    bbox: Box = Field(description="[x_min, y_min, x_max, y_max], panel pixels, max exclusive.")


class IgnoredRecord(Defect):
    """A defect the recipe set aside: it counts in no verdict."""

    model_config = ConfigDict(json_schema_serialization_defaults_required=True)

    zone: str | None = Field(None, description="The zone that set it aside; null: the "
                             "product's own rule (outside every zone).")
    reason: Literal["zone", "class", "min_area_px", "min_confidence"] = Field(
        description="'zone': an ignore zone; 'class': its zone ignores the class; "
        "'min_area_px'/'min_confidence': below its zone's (or the product's) rule.")


class InspectionRecord(_Model):
    """What is recorded for one inspected board (single or batch item).

    ``id`` and ``created_at`` default to a new id and now; the route mints the record before
    answering so that it can return ``inspection_id``.
    """

    id: str = Field(default_factory=new_id)
    created_at: UtcDatetime = Field(default_factory=utcnow)
    serial: MetaText | None = None
    line: MetaText | None = None
    station: MetaText | None = None
    product: ProductId | None = None
    tags: list[MetaText] = Field(default_factory=list, max_length=META_MAX_TAGS)
    image_sha256: str = Field(pattern=_SHA256)
    image_bytes: int = Field(ge=0)
    width: int = Field(ge=1)
    height: int = Field(ge=1)
    #: Where the kept image is, relative to the image store; ``None``: not kept (or expired).
    image_path: str | None = None
    model_name: str = Field(max_length=128)
    model_version: str = Field(max_length=64)
    model_mode: str = Field(max_length=32)
    weights_sha256: str = Field(pattern=_SHA256)
    rules: RecordedRules
    verdict: Verdict
    defects: Annotated[
        list[Defect], _unique_by(lambda d: d.id, "defect id {} appears twice; expected unique ids")
    ] = Field(default_factory=list)
    reference: GoldenBoardRef | None = None
    #: The recipe revision applied; ``None``: none (no ``?product=``, or no recipe).
    recipe: RecipeRef | None = None
    #: The boards of the panel with their verdicts (one without a recipe's units); ``None``
    #: for records made before units existed.
    units: list[UnitRecord] | None = None
    #: The defects the recipe's zones set aside; ``None`` as ``units``.
    ignored: list[IgnoredRecord] | None = None

    @field_validator("id")
    @classmethod
    def _id_shape(cls, value: str) -> str:
        if not _INSPECTION_ID.fullmatch(value):
            raise ValueError(
                f"expected an inspection id like 'insp_' + 26 base-32 characters, received "
                f"{value!r}"
            )
        return value


class Inspection(InspectionRecord):
    """A stored inspection: the record plus what the store derives and the review state."""

    #: The product as stored: records written before the one product-id rule took up to 128
    #: characters of any text, and they are read back as they are (never refused).
    product: str | None = None
    defect_count: int
    reviewed: bool
    #: The current (latest) review's id; ``None`` until the board is reviewed.
    review_id: str | None = None


class DefectOutcome(_Model):
    """The operator's call on one defect the model reported."""

    defect_id: StrictInt
    outcome: Outcome
    class_: StrictStr | None = Field(None, alias="class")

    @model_validator(mode="after")
    def _class_with_reclassified(self) -> DefectOutcome:
        if self.outcome == "reclassified" and self.class_ is None:
            raise ValueError(
                f"defect {self.defect_id}: outcome 'reclassified' needs the new 'class'"
            )
        if self.outcome != "reclassified" and self.class_ is not None:
            raise ValueError(
                f"defect {self.defect_id}: 'class' ({self.class_!r}) is only taken with outcome "
                f"'reclassified', received outcome {self.outcome!r}"
            )
        return self


class MissedDefect(_Model):
    """A defect the model did not report, drawn by the operator."""

    bbox: StrictBox
    class_: StrictStr = Field(alias="class")


class ReviewBody(_Model):
    """What an operator sends: an outcome per reported defect and the defects it missed.

    Defects without an outcome are left unreviewed (they count in no rate).
    """

    defects: Annotated[
        list[DefectOutcome],
        _unique_by(lambda o: o.defect_id, "defect_id {} has two outcomes; expected one"),
    ] = Field(default_factory=list)
    missed: list[MissedDefect] = Field(default_factory=list)

    def canonical(self) -> dict[str, Any]:
        """The body with its lists in a fixed order, so equal reviews compare equal."""
        return {
            "defects": [o.model_dump(by_alias=True, exclude_none=True)
                        for o in sorted(self.defects, key=lambda o: o.defect_id)],
            "missed": [m.model_dump(by_alias=True)
                       for m in sorted(self.missed, key=lambda m: (m.bbox, m.class_))],
        }

    def digest(self) -> str:
        """sha256 of the canonical JSON: equal for a resend of the same review."""
        text = json.dumps(self.canonical(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()


class ReviewRequest(ReviewBody):
    """A review as an operator sends it: bounded lists, and at least one of them given.

    ``{}`` says nothing about the board and is refused; a board without calls is reviewed
    clean with ``{"defects": [], "missed": []}``. (Stored reviews are read as
    :class:`ReviewBody`, whatever their size when they were taken.)
    """

    # The schema says so too: {} is not a review.
    model_config = ConfigDict(json_schema_extra={"minProperties": 1})

    defects: list[DefectOutcome] = Field(default_factory=list, max_length=MAX_REVIEW_OUTCOMES)
    missed: list[MissedDefect] = Field(default_factory=list, max_length=MAX_REVIEW_MISSED)

    @model_validator(mode="before")
    @classmethod
    def _says_something(cls, data: Any) -> Any:
        if isinstance(data, dict) and "defects" not in data and "missed" not in data:
            raise ValueError(
                "a review needs 'defects' (an outcome per call) and/or 'missed' (the defects "
                f"the model missed), received {sorted(data)}; send "
                '{"defects": [], "missed": []} to review a board without calls as clean')
        return data


class Review(_Model):
    """One stored review (every distinct one is kept; the inspection points at the latest)."""

    id: str = Field(pattern="^" + id_pattern(REVIEW_PREFIX).pattern + "$")
    inspection_id: str
    reviewer: str
    created_at: UtcDatetime
    digest: str
    body: ReviewBody


class ReviewedInspection(NamedTuple):
    """A reviewed inspection with its current review (for the training export)."""

    inspection: Inspection
    review: Review


class InspectionFilter(_Model):
    """Filters of :meth:`RecordStore.query` and :meth:`RecordStore.iter_export`.

    ``since`` is inclusive, ``until`` exclusive; ``None`` fields do not filter.
    """

    since: UtcDatetime | None = None
    until: UtcDatetime | None = None
    verdict: Verdict | None = None
    product: ProductId | None = None
    serial: str | None = None
    line: str | None = None
    station: str | None = None
    reviewed: bool | None = None
    #: Tags a record must all carry.
    tags: tuple[str, ...] = ()


class Page(NamedTuple):
    """One page of :meth:`RecordStore.query`; ``next_cursor`` is ``None`` on the last page."""

    items: list[Inspection]
    next_cursor: str | None


class TimeBucket(_Model):
    """Boards inspected in one hour (or day) starting at ``start``."""

    start: dt.datetime
    boards: int
    failed: int
    fail_rate: float | None


class ClassStats(_Model):
    """Review outcomes of the calls the model made of one class (current reviews only).

    ``false_call_rate`` is ``false_calls / reviewed_calls``; ``None`` with no reviewed call.
    ``missed`` counts defects of this class the operator drew because the model missed them.
    """

    class_: str = Field(alias="class")
    reviewed_calls: int
    confirmed: int
    false_calls: int
    reclassified: int
    missed: int
    false_call_rate: float | None


class Stats(_Model):
    """The dashboard's figures for the inspections made in ``[since, until)``."""

    since: dt.datetime
    until: dt.datetime
    bucket: Literal["hour", "day"]
    boards: int
    failed: int
    fail_rate: float | None
    reviewed: int
    buckets: list[TimeBucket]
    classes: list[ClassStats]


def rate(part: int, whole: int) -> float | None:
    """``part / whole``, or ``None`` when there is nothing to divide."""
    return part / whole if whole else None


def ordered_classes(class_names: Sequence[str], seen: Sequence[str]) -> list[str]:
    """``class_names`` in their order, then any other class seen (e.g. of an older model)."""
    extra = sorted(set(seen) - set(class_names))
    return [*class_names, *extra]
