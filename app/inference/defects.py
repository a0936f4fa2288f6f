"""What post-processing works with: its rules (:class:`PostprocessConfig`), and what it finds
(:class:`Defect`, :class:`Summary`, :class:`PostprocessResult`).

Pure data, no numpy work: :mod:`app.inference.postprocess` makes them, the API, the overlay and
evaluation read them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

__all__ = ["Defect", "PostprocessConfig", "PostprocessResult", "Summary", "is_int"]


@dataclass(frozen=True)
class PostprocessConfig:
    """Rules that turn the output maps into defects and a verdict.

    Attributes:
        threshold: Confidence cut on ``fg`` in ``[0, 1]``. A pixel is a defect pixel where
            ``fg >= threshold`` (compared in float32, so a value equal to the threshold counts)
            and ``fg > 0``: a pixel with no foreground probability at all is never a defect,
            so ``threshold=0`` does not turn the whole board into one defect.
        min_area_px: Defects with fewer pixels than this are dropped (a process rule: the
            smallest defect worth reporting), counted after fragments are merged. ``0`` and
            ``1`` keep everything.
        pixels_per_mm: Image resolution, used to report areas in mm²; must be > 0.
        fail_rule: ``"count"`` fails a board on the number of defects, ``"area"`` on their
            total area in mm².
        fail_min_count: Count rule: the board fails when ``defect_count >= fail_min_count``.
        fail_min_area_mm2: Area rule: the board fails when ``defect_area_mm2 >
            fail_min_area_mm2`` (strictly greater, so ``0.0`` fails on any defect).
        merge_distance_px: Fragments of defect pixels separated by at most this many
            background pixels (horizontally, vertically or diagonally: the Chebyshev distance
            between their nearest pixels is at most ``merge_distance_px + 1``) are one defect.
            The gap's pixels are not added to it. ``0``: plain 8-connected components.
        min_confidence: The operating point's second rule: defects whose ``confidence`` is
            below this are dropped (after merging), like those below ``min_area_px``.
    """

    threshold: float
    min_area_px: int
    pixels_per_mm: float
    fail_rule: Literal["count", "area"] = "count"
    fail_min_count: int = 1
    fail_min_area_mm2: float = 0.0
    merge_distance_px: int = 3
    min_confidence: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_confidence <= 1.0:
            raise ValueError(
                "min_confidence must be in [0, 1]. "
                f"Received: min_confidence={self.min_confidence!r}"
            )
        # `not (a <= x <= b)` rather than `x < a or x > b` so that NaN is rejected too.
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1]. Received: threshold={self.threshold!r}")
        if not is_int(self.min_area_px) or self.min_area_px < 0:
            raise ValueError(
                f"min_area_px must be an integer >= 0. Received: min_area_px={self.min_area_px!r}"
            )
        if not (self.pixels_per_mm > 0 and math.isfinite(self.pixels_per_mm)):
            raise ValueError(
                "pixels_per_mm must be a finite number > 0. "
                f"Received: pixels_per_mm={self.pixels_per_mm!r}"
            )
        if self.fail_rule not in ("count", "area"):
            raise ValueError(
                f"fail_rule must be 'count' or 'area'. Received: fail_rule={self.fail_rule!r}"
            )
        # A minimum of 0 would fail every board, clean ones included: surely a mistake.
        if not is_int(self.fail_min_count) or self.fail_min_count < 1:
            raise ValueError(
                "fail_min_count must be an integer >= 1. "
                f"Received: fail_min_count={self.fail_min_count!r}"
            )
        if not (self.fail_min_area_mm2 >= 0 and math.isfinite(self.fail_min_area_mm2)):
            raise ValueError(
                "fail_min_area_mm2 must be a finite number >= 0. "
                f"Received: fail_min_area_mm2={self.fail_min_area_mm2!r}"
            )
        if not is_int(self.merge_distance_px) or self.merge_distance_px < 0:
            raise ValueError(
                "merge_distance_px must be an integer >= 0. "
                f"Received: merge_distance_px={self.merge_distance_px!r}"
            )


class Defect(BaseModel):
    """One defect: the pixels of one 8-connected component of defect pixels, any class, after
    merging fragments at most ``merge_distance_px`` apart.

    The one type of a defect: post-processing makes it, the API answers with it and the
    records store it. Its class is ``class`` in JSON and ``class_`` in Python (a keyword); dump
    with ``by_alias=True`` for the JSON form.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    id: int = Field(
        ge=1, description="1-based, ordered by position (top to bottom, left to right)."
    )
    class_: str = Field(
        alias="class",
        description="Defect class, e.g. 'short': the winner of the vote of its pixels, where "
        "each pixel gives P(defect) x P(class | defect) to its class (ties: the lower class id).",
    )
    confidence: float = Field(
        ge=0,
        le=1,
        description="Mean P(defect) over the defect's pixels times its class purity (the "
        "winning class's share of the vote), rounded to 4 decimals: low for a faint defect and "
        "for one whose pixels disagree on the class.",
    )
    bbox: tuple[int, int, int, int] = Field(
        description="[x_min, y_min, x_max, y_max], max exclusive, pixels: the box of the "
        "defect's own pixels (merging does not grow it)."
    )
    area_px: int = Field(ge=0, description="Defect pixels (P(defect) >= threshold).")
    area_mm2: float = Field(ge=0, description="area_px / pixels_per_mm², rounded to 6 decimals.")
    centroid: tuple[float, float] = Field(
        description="[x, y], the mean of the pixels' coordinates, rounded to 2 decimals."
    )


@dataclass(frozen=True)
class Summary:
    """Board-level totals and the verdict.

    Attributes:
        defect_count: Number of defects kept.
        defect_area_px: Total pixels of the defects kept.
        defect_area_mm2: ``defect_area_px / pixels_per_mm**2``, rounded to 6 decimals.
        defect_area_ratio: ``defect_area_px / (H * W)``, rounded to 6 decimals.
        by_class: Defect count per class, with EVERY class name present in ``class_names``
            order, 0 for classes with no defect, so clients see a fixed set of keys.
        verdict: ``"pass"`` or ``"fail"`` under the configured rule.
    """

    defect_count: int
    defect_area_px: int
    defect_area_mm2: float
    defect_area_ratio: float
    by_class: dict[str, int]
    verdict: Literal["pass", "fail"]


# eq=False: the generated __eq__ would compare numpy arrays, whose truth value is ambiguous.
@dataclass(frozen=True, eq=False)
class PostprocessResult:
    """Everything post-processing produces for one image.

    Attributes:
        class_map: ``(H, W)`` uint8; 0 = background, ``k`` = ``class_names[k - 1]``. Every
            pixel of a defect holds that defect's one class, so the map agrees with the defect
            list; pixels of dropped defects (below ``min_area_px``) and merged-over gaps are 0.
        defects: The defects kept, ordered by id.
        summary: Totals and verdict.
    """

    class_map: np.ndarray
    defects: list[Defect]
    summary: Summary


def is_int(value: object) -> bool:
    """True for Python and numpy integers, but not bools (which are ints in Python)."""
    return isinstance(value, int | np.integer) and not isinstance(value, bool)
