"""A finished board's panel in the records' types: its units with their verdicts, the defects
its recipe set aside and the recipe revision applied.

The same objects go into the board's record (:mod:`app.services.record_hook`) and into its
answer (:class:`app.api.schemas.PredictionOut`), so the record and the answer cannot drift
apart field by field.
"""

from __future__ import annotations

from app.records import IgnoredRecord, RecipeRef, UnitRecord
from app.services.inspection import InspectedBoard

__all__ = ["ignored_records", "recipe_ref", "unit_records"]


def unit_records(inspection: InspectedBoard) -> list[UnitRecord]:
    """The boards of the panel with their verdicts (one, the whole image, without a recipe)."""
    return [UnitRecord(position=u.position, identifier=u.identifier, verdict=u.verdict,
                       defect_ids=u.defect_ids, bbox=u.bbox) for u in inspection.units]


def ignored_records(inspection: InspectedBoard) -> list[IgnoredRecord]:
    """The defects the recipe set aside, each with the zone and the rule that did."""
    return [IgnoredRecord(**i.defect.model_dump(), zone=i.zone, reason=i.reason)
            for i in inspection.ignored]


def recipe_ref(inspection: InspectedBoard) -> RecipeRef | None:
    """The recipe revision applied; ``None``: none."""
    recipe = inspection.recipe
    return None if recipe is None else RecipeRef(
        product=recipe.product, revision=recipe.revision, sha256=recipe.sha256)
