"""Product recipes: what a product's panel looks like and how its defects are judged, and the
pure function that applies one to the defects of an inspected panel.

A recipe says, in the golden board's (= the panel's) pixels:

* ``units``: the boards of the panel, each a box with a position number. None: one unit, the
  whole image. Every unit gets its own verdict, by the product's fail rule applied to the
  defects whose centroid it holds.
* ``zones``: polygons, matched in order (the first zone holding a defect's centroid is the
  defect's zone). ``action: ignore``: its defects leave every verdict alone but are listed
  apart, with the zone's name, for audit. ``action: rules``: its own ``min_area_px``,
  ``min_confidence`` and ``ignored_classes`` in place of the product's.
* ``rules``: the product's operating point (threshold, minimum area and confidence, the fail
  rule), between the request's query parameters and the service's settings.

A zone may be looser than the product (a smaller ``min_area_px``, for a fine-pitch area): the
board is then post-processed at the loosest rule of any zone (:func:`loosest`) and each defect
judged by its own zone's. Every defect found at that level is either counted or listed in
``ignored`` with why, so the class mask (which holds them all) always agrees with the two lists.

No HTTP and no I/O here: :mod:`app.services.recipe_store` stores recipes, the inspection service
applies them with :func:`apply_recipe`.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import math
from collections.abc import Sequence
from typing import Any, Literal

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from app.core.domain_errors import DomainError
from app.core.rules import MinAreaPx, MinConfidence, RuleOverrides
from app.inference.defects import Defect, PostprocessConfig, Summary
from app.inference.postprocess import summarize
from app.records.units import unit_at
from pcb_inspect.classes import CLASS_NAMES

__all__ = [
    "MAX_UNITS",
    "MAX_VERTICES",
    "MAX_ZONES",
    "IgnoredDefect",
    "PanelResult",
    "ProductRules",
    "RecipeBody",
    "RecipeFitError",
    "Unit",
    "UnitVerdict",
    "Zone",
    "apply_recipe",
    "canonical_json",
    "loosest",
    "unit_identifiers",
]

#: Bounds of what a client may send: a panel of more boards, or a zone of more vertices, is
#: not a real product but a mistake (or an attack on the per-defect matching).
MAX_UNITS = 256
MAX_ZONES = 64
MAX_VERTICES = 64
#: Coordinates beyond this are no board's pixels (the decoder refuses larger images anyway).
_MAX_COORD = 1_000_000
ZONE_NAME_PATTERN = r"^[A-Za-z0-9._ -]{1,64}$"

Reason = Literal["zone", "class", "min_area_px", "min_confidence"]


def _holds_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return True
    return isinstance(value, list | tuple) and any(_holds_bool(v) for v in value)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @field_validator("*", mode="before")
    @classmethod
    def _no_booleans(cls, value: Any) -> Any:
        # No recipe field is a boolean, and pydantic's lax mode would read JSON true as 1.
        if _holds_bool(value):
            raise ValueError(f"expected numbers or text, received a boolean in {value!r}")
        return value


class Unit(_Strict):
    """One board of the panel: its position number and its box, panel pixels."""

    position: int = Field(ge=1, le=9999, description="The board's position in the panel.")
    bbox: tuple[int, int, int, int] = Field(
        description="[x_min, y_min, x_max, y_max] in panel pixels, max exclusive."
    )

    @field_validator("bbox")
    @classmethod
    def _a_box(cls, bbox: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
        x0, y0, x1, y1 = bbox
        if not (0 <= x0 < x1 <= _MAX_COORD and 0 <= y0 < y1 <= _MAX_COORD):
            raise ValueError(
                f"expected [x_min, y_min, x_max, y_max] with 0 <= x_min < x_max and "
                f"0 <= y_min < y_max (max exclusive), received {list(bbox)}"
            )
        return bbox


class Zone(_Strict):
    """A polygon of the panel that is ignored or has its own rules."""

    name: str = Field(pattern=ZONE_NAME_PATTERN,
                      description="1-64 of A-Z a-z 0-9 . _ - and space; unique in the recipe.")
    polygon: list[tuple[float, float]] = Field(
        min_length=3, max_length=MAX_VERTICES,
        description=f"[[x, y], ...] in panel pixels, 3 to {MAX_VERTICES} vertices.",
    )
    action: Literal["ignore", "rules"] = Field(
        description="'ignore': its defects are listed apart and judge nothing; 'rules': its "
        "own min_area_px, min_confidence and ignored_classes."
    )
    min_area_px: MinAreaPx | None = None
    min_confidence: MinConfidence | None = None
    ignored_classes: list[str] = Field(default_factory=list, max_length=len(CLASS_NAMES))

    @field_validator("polygon")
    @classmethod
    def _finite(cls, polygon: list[tuple[float, float]]) -> list[tuple[float, float]]:
        for x, y in polygon:
            if not (math.isfinite(x) and math.isfinite(y)
                    and 0 <= x <= _MAX_COORD and 0 <= y <= _MAX_COORD):
                raise ValueError(f"vertex [{x}, {y}]: expected finite pixel coordinates >= 0")
        if cv2.contourArea(np.asarray(polygon, dtype=np.float32)) <= 0:
            raise ValueError(f"the polygon {[list(p) for p in polygon]} encloses no area")
        return polygon

    @field_validator("ignored_classes")
    @classmethod
    def _known_classes(cls, classes: list[str]) -> list[str]:
        for name in classes:
            if name not in CLASS_NAMES:
                raise ValueError(
                    f"unknown class {name!r}: expected one of {', '.join(CLASS_NAMES)}"
                )
        if len(set(classes)) != len(classes):
            raise ValueError(f"a class is listed twice in {classes}")
        return classes

    @model_validator(mode="after")
    def _rules_fit_action(self) -> Zone:
        given = [k for k in ("min_area_px", "min_confidence") if getattr(self, k) is not None]
        if self.ignored_classes:
            given.append("ignored_classes")
        if self.action == "ignore" and given:
            raise ValueError(
                f"zone {self.name!r}: action 'ignore' takes no rules, received {given}; use "
                "action 'rules' for a zone with its own rules"
            )
        if self.action == "rules" and not given:
            raise ValueError(
                f"zone {self.name!r}: action 'rules' needs at least one of min_area_px, "
                "min_confidence, ignored_classes"
            )
        return self

    def contains(self, x: float, y: float) -> bool:
        """Whether ``(x, y)`` lies in the polygon or on its edge."""
        contour = np.asarray(self.polygon, dtype=np.float32)
        return cv2.pointPolygonTest(contour, (float(x), float(y)), False) >= 0


# The rules' partial form under the name the API has always documented it by.
class ProductRules(RuleOverrides):
    """The product's operating point; a rule not given falls back to the service's."""


def _repeated(values: list[Any]) -> list[Any]:
    """The values that occur more than once, sorted (empty when all are distinct)."""
    return sorted(v for v, n in collections.Counter(values).items() if n > 1)


class RecipeBody(_Strict):
    """What ``PUT /v1/products/{product}/recipe`` takes."""

    units: list[Unit] = Field(
        default_factory=list, max_length=MAX_UNITS,
        description="The boards of the panel; none: one unit, the whole image.",
    )
    zones: list[Zone] = Field(
        default_factory=list, max_length=MAX_ZONES,
        description="Matched in order: a defect's zone is the first holding its centroid.",
    )
    rules: ProductRules = Field(default_factory=ProductRules)

    @field_validator("units")
    @classmethod
    def _distinct_units(cls, units: list[Unit]) -> list[Unit]:
        twice = _repeated([u.position for u in units])
        if twice:
            raise ValueError(f"position(s) {twice} given to several units; expected unique")
        # Units sorted by x_min: a unit can only overlap those starting before its x_max.
        ordered = sorted(units, key=lambda u: u.bbox[0])
        for i, a in enumerate(ordered):
            for b in ordered[i + 1:]:
                if b.bbox[0] >= a.bbox[2]:
                    break
                if b.bbox[1] < a.bbox[3] and a.bbox[1] < b.bbox[3]:
                    raise ValueError(
                        f"units {a.position} {list(a.bbox)} and {b.position} {list(b.bbox)} "
                        "overlap; expected disjoint boards"
                    )
        return sorted(units, key=lambda u: u.position)

    @field_validator("zones")
    @classmethod
    def _distinct_zones(cls, zones: list[Zone]) -> list[Zone]:
        twice = _repeated([z.name for z in zones])
        if twice:
            raise ValueError(f"zone name(s) {twice} used twice; expected unique names")
        return zones

    def check_fits(self, width: int, height: int) -> None:
        """Raises :class:`RecipeFitError` naming the first unit or zone outside a
        ``width`` x ``height`` golden board."""
        for i, unit in enumerate(self.units):
            x0, y0, x1, y1 = unit.bbox
            if x1 > width or y1 > height:
                raise RecipeFitError(
                    f"units[{i}].bbox",
                    f"unit {unit.position} {list(unit.bbox)} reaches outside the golden board "
                    f"({width}x{height} px; max exclusive)",
                )
        for i, zone in enumerate(self.zones):
            for x, y in zone.polygon:
                if x > width or y > height:
                    raise RecipeFitError(
                        f"zones[{i}].polygon",
                        f"zone {zone.name!r} has vertex [{x}, {y}] outside the golden board "
                        f"({width}x{height} px)",
                    )

    def canonical(self) -> dict[str, Any]:
        """The JSON form with every default filled in and units by position, so that two
        bodies meaning the same recipe have the same form (and sha256)."""
        return self.model_dump(mode="json")


class RecipeFitError(DomainError, ValueError):
    """A unit or zone that does not fit the golden board; ``field`` names it."""

    code = "invalid_recipe"

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


def canonical_json(value: Any) -> bytes:
    """The one JSON text of ``value`` that its sha256 is taken of: sorted keys, no spaces."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False).encode()


def sha256_of(value: Any) -> str:
    """sha256 of :func:`canonical_json`."""
    return hashlib.sha256(canonical_json(value)).hexdigest()


def loosest(config: PostprocessConfig, recipe: RecipeBody) -> PostprocessConfig:
    """``config`` with the smallest ``min_area_px`` and ``min_confidence`` of it and of every
    zone with rules: what post-processing must keep for :func:`apply_recipe` to judge."""
    area = [z.min_area_px for z in recipe.zones if z.min_area_px is not None]
    conf = [z.min_confidence for z in recipe.zones if z.min_confidence is not None]
    # Minima of validated values: within the bounds without validating again.
    return config.model_copy(update={
        "min_area_px": min([config.min_area_px, *area]),
        "min_confidence": min([config.min_confidence, *conf]),
    })


@dataclasses.dataclass(frozen=True)
class UnitVerdict:
    """One board of the panel and its verdict."""

    position: int
    bbox: tuple[int, int, int, int]
    identifier: str | None
    verdict: Literal["pass", "fail"]
    #: The counted defects whose centroid it holds.
    defect_ids: list[int]


@dataclasses.dataclass(frozen=True)
class IgnoredDefect:
    """A defect the recipe set aside: it counts in no verdict.

    ``zone`` is the zone that set it aside (``None``: the product's own rule, for a defect
    outside every zone that only a looser zone's rule let through post-processing);
    ``reason``: ``zone`` (an ignore zone), ``class`` (the zone ignores its class),
    ``min_area_px`` or ``min_confidence`` (below the rule of its zone, or the product's).
    """

    defect: Defect
    zone: str | None
    reason: Reason


@dataclasses.dataclass(frozen=True)
class PanelResult:
    """The recipe applied to a panel's defects."""

    defects: list[Defect]
    ignored: list[IgnoredDefect]
    units: list[UnitVerdict]
    summary: Summary


def unit_identifiers(
    positions: Sequence[int], serial: str | None, unit_serials: Sequence[str] | None,
    default_unit: bool,
) -> list[str | None]:
    """Each unit's identifier, in ``positions`` order: its own of ``unit_serials`` (one per
    unit, by position), else the panel ``serial`` and its position (``SER123-2``), else
    ``None``. The one unit of a recipe without units is the board itself: its identifier is
    ``serial``.

    Raises:
        ValueError: ``unit_serials`` does not have one serial per unit.
    """
    if unit_serials:
        if len(unit_serials) != len(positions):
            raise ValueError(
                f"unit_serials: expected one serial per unit ({len(positions)}, by position), "
                f"received {len(unit_serials)}"
            )
        return list(unit_serials)
    if serial is None:
        return [None] * len(positions)
    if default_unit:
        return [serial]
    return [f"{serial}-{p}" for p in positions]


def _zone_of(defect: Defect, zones: Sequence[Zone]) -> Zone | None:
    x, y = defect.centroid
    return next((z for z in zones if z.contains(x, y)), None)


def _below(defect: Defect, min_area_px: int, min_confidence: float) -> Reason | None:
    if defect.area_px < min_area_px:
        return "min_area_px"
    # The reported (rounded) confidence, as post-processing compares it.
    if round(defect.confidence, 4) < min_confidence:
        return "min_confidence"
    return None


def apply_recipe(
    defects: Sequence[Defect],
    recipe: RecipeBody | None,
    config: PostprocessConfig,
    class_names: Sequence[str],
    width: int,
    height: int,
    serial: str | None = None,
    unit_serials: Sequence[str] | None = None,
) -> PanelResult:
    """Sorts a panel's defects into counted and ignored, and judges the panel and each unit.

    Args:
        defects: What post-processing found (at :func:`loosest` of ``config``).
        recipe: The product's recipe; ``None``: no zones and one unit, the whole image.
        config: The product's rules (not loosened): the fail rule, and the minimums of defects
            outside every zone.
        class_names: The model's classes, for the summary's ``by_class``.
        width, height: The inspected image's size (the default unit, the area ratio).
        serial, unit_serials: For the units' identifiers (:func:`unit_identifiers`).

    Returns:
        The counted defects (ids unchanged), the ignored ones, the units by position, and
        the summary of the counted defects under ``config``'s fail rule.

    Raises:
        ValueError: ``unit_serials`` does not have one serial per unit.
    """
    zones = recipe.zones if recipe is not None else []
    units = recipe.units if recipe is not None else []
    default_unit = not units
    boxes = [(1, (0, 0, width, height))] if default_unit else [(u.position, u.bbox) for u in units]
    identifiers = unit_identifiers([p for p, _ in boxes], serial, unit_serials, default_unit)

    counted: list[Defect] = []
    ignored: list[IgnoredDefect] = []
    for d in defects:
        zone = _zone_of(d, zones)
        if zone is None:
            reason = _below(d, config.min_area_px, config.min_confidence)
            if reason is None:
                counted.append(d)
            else:
                ignored.append(IgnoredDefect(d, None, reason))
            continue
        if zone.action == "ignore":
            ignored.append(IgnoredDefect(d, zone.name, "zone"))
            continue
        if d.class_ in zone.ignored_classes:
            ignored.append(IgnoredDefect(d, zone.name, "class"))
            continue
        reason = _below(
            d,
            config.min_area_px if zone.min_area_px is None else zone.min_area_px,
            config.min_confidence if zone.min_confidence is None else zone.min_confidence,
        )
        if reason is None:
            counted.append(d)
        else:
            ignored.append(IgnoredDefect(d, zone.name, reason))

    names = tuple(class_names)
    verdicts = []
    # The one rule that places a point on a unit: reviews place missed boxes by it too.
    unit_of = {d.id: unit_at(boxes, *d.centroid) for d in counted}
    for (position, (x0, y0, x1, y1)), identifier in zip(boxes, identifiers, strict=True):
        inside = [d for d in counted if unit_of[d.id] == position]
        unit_summary = summarize(inside, names, max(1, (x1 - x0) * (y1 - y0)), config)
        verdicts.append(UnitVerdict(position, (x0, y0, x1, y1), identifier,
                                    unit_summary.verdict, [d.id for d in inside]))
    summary = summarize(counted, names, width * height, config)
    return PanelResult(counted, ignored, verdicts, summary)
