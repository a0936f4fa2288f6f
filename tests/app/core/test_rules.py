"""The one rules model: its bounds hold for the card, a recipe and the post-processing config
alike, every refusal names the rule, what it must be and the value, and overrides resolve in
order (request, then recipe, then the card with the settings' fail rule)."""

from __future__ import annotations

import re
from typing import Any

import pytest
from pydantic import ValidationError

from app.core.rules import RuleOverrides, Rules, resolve
from app.inference.card import ModelCard
from app.inference.defects import PostprocessConfig
from app.services.recipes import RecipeBody

BASE = Rules(threshold=0.5, min_area_px=10, pixels_per_mm=48.0, min_confidence=0.2)


def test_the_post_processing_config_is_the_rules_model() -> None:
    assert PostprocessConfig is Rules


@pytest.mark.parametrize(("field", "value", "expected"), [
    ("threshold", 1.01, "threshold must be in [0, 1]. Received: threshold=1.01"),
    ("min_area_px", 10**9 + 1, "min_area_px must be an integer >= 0. Received: "
                                "min_area_px=1000000001 (Input should be less than or equal"),
    ("min_area_px", True, "min_area_px must be an integer >= 0. Received: min_area_px=True "
                          "(a boolean is not a number)"),
    ("pixels_per_mm", 100_001.0, "pixels_per_mm must be a finite number > 0. Received: "
                                 "pixels_per_mm=100001.0"),
    ("fail_min_count", 0, "fail_min_count must be an integer >= 1. Received: fail_min_count=0"),
])
def test_one_bound_in_every_form(field: str, value: Any, expected: str) -> None:
    full: dict[str, Any] = {"threshold": 0.5, "min_area_px": 0, "pixels_per_mm": 1.0}
    with pytest.raises(ValidationError, match=re.escape(expected)):
        Rules(**{**full, field: value})
    with pytest.raises(ValidationError, match=re.escape(expected)):
        RuleOverrides(**{field: value})
    with pytest.raises(ValidationError, match=re.escape(f"rules.{field}")):
        RecipeBody.model_validate({"rules": {field: value}})


def test_the_card_takes_the_same_bounds() -> None:
    card = {"name": "m", "version": "1", "classes": ["short"]}
    with pytest.raises(ValidationError, match="thresholds.min_area_px"):
        ModelCard.model_validate({**card, "thresholds": {"min_area_px": 10**9 + 1}})
    with pytest.raises(ValidationError, match="pixels_per_mm"):
        ModelCard.model_validate({**card, "pixels_per_mm": 100_001})
    rules = ModelCard.model_validate({**card, "thresholds": {"confidence": 0.4}}).rules(
        RuleOverrides(fail_rule="area", fail_min_area_mm2=0.5))
    assert rules == Rules(threshold=0.4, min_area_px=10, pixels_per_mm=48.0, fail_rule="area",
                          fail_min_area_mm2=0.5, merge_distance_px=3, min_confidence=0.0)


def test_the_first_layer_that_sets_a_rule_wins() -> None:
    request = RuleOverrides(threshold=0.9)
    recipe = RuleOverrides(threshold=0.1, min_area_px=3, fail_rule="area")
    assert resolve(BASE, request, recipe) == BASE.model_copy(update={
        "threshold": 0.9, "min_area_px": 3, "fail_rule": "area"})
    assert resolve(BASE, None, RuleOverrides()) is BASE
