"""What post-processing works with: its rules (:class:`PostprocessConfig`, the one rules model
of :mod:`app.core.rules`), and what it finds (:class:`Defect`, :class:`Summary`,
:class:`PostprocessResult`).

Pure data, no numpy work: :mod:`app.inference.postprocess` makes them, the API, the overlay and
evaluation read them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from app.core.rules import Rules

__all__ = ["Defect", "PostprocessConfig", "PostprocessResult", "Summary", "is_int"]


#: The rules post-processing applies: the one rules model (:class:`app.core.rules.Rules`),
#: named here for what it configures.
PostprocessConfig = Rules


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
