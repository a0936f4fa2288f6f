"""The rules a board is judged by: one model, one set of bounds, one validator.

:class:`Rules` is the complete set that post-processing applies (the model card's operating
point, the settings' fail rule, overridden by a product's recipe and by a request).
:class:`RuleOverrides` is its partial form, every rule optional: what a recipe or a request
sets; :func:`resolve` lays them over the complete one. The field types below carry each rule's
bounds once, for the model card, the query parameters and the recipe body alike.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    field_validator,
)

__all__ = [
    "EXPECTED",
    "FailMinAreaMm2",
    "FailMinCount",
    "FailRule",
    "MergeDistancePx",
    "MinAreaPx",
    "MinConfidence",
    "PixelsPerMm",
    "RuleOverrides",
    "Rules",
    "Threshold",
    "resolve",
]

# Upper bounds far beyond any real scan: they only stop absurd values (and overflows) early.
Threshold = Annotated[float, Field(ge=0, le=1)]
MinAreaPx = Annotated[int, Field(ge=0, le=10**9)]
MinConfidence = Annotated[float, Field(ge=0, le=1)]
PixelsPerMm = Annotated[float, Field(gt=0, le=100_000)]
FailRule = Literal["count", "area"]
# A minimum of 0 would fail every board, clean ones included: surely a mistake.
FailMinCount = Annotated[int, Field(ge=1, le=10**6)]
FailMinAreaMm2 = Annotated[float, Field(ge=0, le=10**6)]
MergeDistancePx = Annotated[int, Field(ge=0, le=64)]

#: What each rule must be, in words: every refusal names the rule, this and the value received.
EXPECTED: dict[str, str] = {
    "threshold": "in [0, 1]",
    "min_area_px": "an integer >= 0",
    "min_confidence": "in [0, 1]",
    "pixels_per_mm": "a finite number > 0",
    "fail_rule": "'count' or 'area'",
    "fail_min_count": "an integer >= 1",
    "fail_min_area_mm2": "a finite number >= 0",
    "merge_distance_px": "an integer >= 0",
}


def _explained(value: Any, handler: ValidatorFunctionWrapHandler, info: ValidationInfo) -> Any:
    """The one validator of a rule: its bounds (the field's type), no booleans (JSON ``true``
    is not 1), and a refusal that says ``<rule> must be <expected>. Received: <rule>=<value>``
    and then which bound it broke."""
    name = info.field_name or "rule"
    if isinstance(value, bool):
        why = "a boolean is not a number"
    else:
        try:
            return handler(value)
        except ValidationError as exc:
            why = "; ".join(e["msg"] for e in exc.errors())
    raise ValueError(
        f"{name} must be {EXPECTED.get(name, 'valid')}. Received: {name}={value!r} ({why})")


class Rules(BaseModel):
    """The rules that turn a board's output maps into defects and a verdict.

    Attributes:
        threshold: Confidence cut on ``fg`` in ``[0, 1]``. A pixel is a defect pixel where
            ``fg >= threshold`` (compared in float32, so a value equal to the threshold counts)
            and ``fg > 0``: a pixel with no foreground probability at all is never a defect,
            so ``threshold=0`` does not turn the whole board into one defect.
        min_area_px: Defects with fewer pixels than this are dropped (a process rule: the
            smallest defect worth reporting), counted after fragments are merged. ``0`` and
            ``1`` keep everything.
        pixels_per_mm: Image resolution, used to report areas in mm².
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

    model_config = ConfigDict(frozen=True, extra="forbid")

    threshold: Threshold
    min_area_px: MinAreaPx
    pixels_per_mm: PixelsPerMm
    fail_rule: FailRule = "count"
    fail_min_count: FailMinCount = 1
    fail_min_area_mm2: FailMinAreaMm2 = 0.0
    merge_distance_px: MergeDistancePx = 3
    min_confidence: MinConfidence = 0.0

    _check = field_validator("*", mode="wrap")(_explained)


class RuleOverrides(BaseModel):
    """The rules a product's recipe or a request sets; one not given (``None``) is taken from
    the next layer down (:func:`resolve`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    threshold: Threshold | None = None
    min_area_px: MinAreaPx | None = None
    min_confidence: MinConfidence | None = None
    pixels_per_mm: PixelsPerMm | None = None
    fail_rule: FailRule | None = None
    fail_min_count: FailMinCount | None = None
    fail_min_area_mm2: FailMinAreaMm2 | None = None

    _check = field_validator("*", mode="wrap")(_explained)


def resolve(base: Rules, *layers: RuleOverrides | None) -> Rules:
    """``base`` with every rule that a layer sets; the first layer that sets a rule wins."""
    given: dict[str, Any] = {}
    for layer in reversed([layer for layer in layers if layer is not None]):
        # Only the rules: a subclass may carry more (a request's gating).
        given.update(layer.model_dump(include=set(RuleOverrides.model_fields),
                                      exclude_none=True))
    # Each value was validated by its layer, and the bounds are the same.
    return base.model_copy(update=given) if given else base
