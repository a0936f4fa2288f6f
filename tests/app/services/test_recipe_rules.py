"""Recipes as pure logic: validation, the canonical form, and :func:`apply_recipe` on
hand-made defects whose units, zones and verdicts are worked out by hand."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from app.inference.defects import Defect, PostprocessConfig
from app.services.recipes import (
    MAX_UNITS,
    MAX_VERTICES,
    RecipeBody,
    RecipeFitError,
    apply_recipe,
    canonical_json,
    loosest,
    sha256_of,
    unit_identifiers,
)
from pcb_inspect.classes import CLASS_NAMES

W, H = 200, 100
#: Count rule: one defect fails a board. 10 px/mm: 100 px are 1 mm^2.
COUNT = PostprocessConfig(threshold=0.5, min_area_px=30, pixels_per_mm=10.0,
                          min_confidence=0.2)


def defect(id: int, cx: float, cy: float, area: int = 40, cls: str = "short",
           conf: float = 0.9) -> Defect:
    return Defect(id=id, class_=cls, confidence=conf,
                  bbox=(int(cx) - 2, int(cy) - 2, int(cx) + 3, int(cy) + 3), area_px=area,
                  area_mm2=round(area / 100, 6), centroid=(cx, cy))


def panel(**extra: Any) -> RecipeBody:
    """Two boards side by side: 1 on the left half, 2 on the right half."""
    return RecipeBody.model_validate({
        "units": [{"position": 2, "bbox": [100, 0, 200, 100]},
                  {"position": 1, "bbox": [0, 0, 100, 100]}],
        **extra,
    })


def apply(defects: list[Defect], recipe: RecipeBody | None, config: PostprocessConfig = COUNT,
          **kw: Any) -> Any:
    return apply_recipe(defects, recipe, config, CLASS_NAMES, W, H, **kw)


# --- apply_recipe ------------------------------------------------------------------------------


def test_without_a_recipe_one_unit_is_the_whole_image() -> None:
    found = [defect(1, 10, 10), defect(2, 150, 50)]
    out = apply(found, None, serial="SER1")
    assert out.defects == found and out.ignored == []
    [unit] = out.units
    assert (unit.position, unit.bbox, unit.identifier) == (1, (0, 0, W, H), "SER1")
    assert (unit.verdict, unit.defect_ids) == ("fail", [1, 2])
    assert out.summary.defect_count == 2 and out.summary.verdict == "fail"
    assert out.summary.defect_area_px == 80 and out.summary.defect_area_ratio == 0.004


def test_a_clean_board_without_a_recipe_passes() -> None:
    out = apply([], None)
    assert [(u.verdict, u.identifier, u.defect_ids) for u in out.units] == [("pass", None, [])]
    assert out.summary.verdict == "pass"


def test_a_defect_belongs_to_the_unit_holding_its_centroid() -> None:
    # Centroid x=99.99 is in unit 1 ([0, 100)); x=100.0 is unit 2's first column (max
    # exclusive). The bbox of defect 3 straddles the border, its centroid does not.
    found = [defect(1, 99.99, 50), defect(2, 100.0, 50), defect(3, 120, 50)]
    out = apply(found, panel(), serial="P7")
    assert [(u.position, u.identifier, u.verdict, u.defect_ids) for u in out.units] == [
        (1, "P7-1", "fail", [1]), (2, "P7-2", "fail", [2, 3])]


def test_one_board_fails_and_the_other_passes() -> None:
    out = apply([defect(1, 150, 40)], panel())
    assert [(u.position, u.verdict, u.defect_ids) for u in out.units] == [
        (1, "pass", []), (2, "fail", [1])]
    assert out.summary.verdict == "fail"


def test_defects_outside_every_unit_count_for_the_panel_only() -> None:
    recipe = RecipeBody.model_validate({"units": [{"position": 1, "bbox": [0, 0, 50, 50]}]})
    out = apply([defect(1, 80, 80)], recipe)
    assert [(u.verdict, u.defect_ids) for u in out.units] == [("pass", [])]
    assert out.summary.verdict == "fail" and out.defects == [defect(1, 80, 80)]


def test_the_area_rule_is_applied_per_unit() -> None:
    # Fails above 0.5 mm^2 = 50 px: unit 1 has 40 px (pass), unit 2 has 40 + 20 = 60 px (fail);
    # the panel has 100 px (fail).
    rule = PostprocessConfig(threshold=0.5, min_area_px=0, pixels_per_mm=10.0,
                             fail_rule="area", fail_min_area_mm2=0.5)
    found = [defect(1, 50, 50, area=40), defect(2, 150, 50, area=40),
             defect(3, 160, 60, area=20)]
    out = apply(found, panel(), rule)
    assert [(u.verdict, u.defect_ids) for u in out.units] == [("pass", [1]), ("fail", [2, 3])]
    assert out.summary.defect_area_mm2 == 1.0 and out.summary.verdict == "fail"


def test_a_defect_in_an_ignore_zone_is_listed_apart_and_judges_nothing() -> None:
    recipe = panel(zones=[{"name": "fiducial", "action": "ignore",
                           "polygon": [[140, 20], [180, 20], [180, 60], [140, 60]]}])
    found = [defect(1, 30, 30), defect(2, 160, 40)]
    out = apply(found, recipe)
    assert [d.id for d in out.defects] == [1]
    assert [(i.defect.id, i.zone, i.reason) for i in out.ignored] == [(2, "fiducial", "zone")]
    assert [(u.verdict, u.defect_ids) for u in out.units] == [("fail", [1]), ("pass", [])]
    assert out.summary.defect_count == 1 and out.summary.by_class["short"] == 1


def test_a_vertex_or_edge_of_a_zone_holds_a_centroid() -> None:
    recipe = panel(zones=[{"name": "tri", "action": "ignore",
                           "polygon": [[0, 0], [40, 0], [0, 40]]}])
    # (20, 20) is on the hypotenuse; (0, 0) is a vertex; (21, 21) is just outside.
    out = apply([defect(1, 20, 20), defect(2, 0, 0), defect(3, 21, 21)], recipe)
    assert [i.defect.id for i in out.ignored] == [1, 2]
    assert [d.id for d in out.defects] == [3]


def test_zone_rules_replace_the_products() -> None:
    recipe = panel(zones=[
        # Looser area, stricter confidence, and opens ignored, on the left board.
        {"name": "bga", "action": "rules", "min_area_px": 5, "min_confidence": 0.8,
         "ignored_classes": ["open"], "polygon": [[0, 0], [100, 0], [100, 100], [0, 100]]},
    ])
    found = [
        defect(1, 10, 10, area=10),               # in bga: 10 >= 5, counted
        defect(2, 20, 20, area=40, conf=0.7),     # in bga: 0.7 < 0.8
        defect(3, 30, 30, cls="open"),            # in bga: class ignored
        defect(4, 150, 50, area=10),              # outside: 10 < product's 30
        defect(5, 160, 60, area=40, conf=0.1),    # outside: 0.1 < product's 0.2
        defect(6, 170, 70, area=30, conf=0.2),    # outside: exactly at both minimums
    ]
    out = apply(found, recipe)
    assert [d.id for d in out.defects] == [1, 6]
    assert [(i.defect.id, i.zone, i.reason) for i in out.ignored] == [
        (2, "bga", "min_confidence"), (3, "bga", "class"), (4, None, "min_area_px"),
        (5, None, "min_confidence")]
    assert [(u.verdict, u.defect_ids) for u in out.units] == [("fail", [1]), ("fail", [6])]


def test_the_first_zone_holding_a_centroid_decides() -> None:
    square = [[0, 0], [100, 0], [100, 100], [0, 100]]
    first_ignores = panel(zones=[{"name": "a", "action": "ignore", "polygon": square},
                                 {"name": "b", "action": "rules", "min_area_px": 1,
                                  "polygon": square}])
    first_rules = panel(zones=list(reversed(first_ignores.model_dump()["zones"])))
    d = [defect(1, 50, 50)]
    assert [i.zone for i in apply(d, first_ignores).ignored] == ["a"]
    out = apply(d, first_rules)
    assert out.ignored == [] and [x.id for x in out.defects] == [1]


def test_loosest_takes_the_smallest_minimums_of_product_and_zones() -> None:
    square = [[0, 0], [10, 0], [10, 10], [0, 10]]
    recipe = RecipeBody.model_validate({"zones": [
        {"name": "a", "action": "rules", "min_area_px": 12, "polygon": square},
        {"name": "b", "action": "rules", "min_confidence": 0.05, "polygon": square},
        {"name": "c", "action": "ignore", "polygon": square},
    ]})
    loose = loosest(COUNT, recipe)
    assert (loose.min_area_px, loose.min_confidence) == (12, 0.05)
    assert loose.threshold == COUNT.threshold and loose.fail_rule == COUNT.fail_rule
    assert loosest(COUNT, RecipeBody()) == COUNT


def test_unit_identifiers() -> None:
    assert unit_identifiers([1, 2], "SER", None, False) == ["SER-1", "SER-2"]
    assert unit_identifiers([1, 2], "SER", ["A", "B"], False) == ["A", "B"]
    assert unit_identifiers([1], "SER", None, True) == ["SER"]
    assert unit_identifiers([1, 2], None, None, False) == [None, None]
    with pytest.raises(ValueError, match=r"one serial per unit \(2, by position\), received 1"):
        unit_identifiers([1, 2], None, ["A"], False)
    out = apply([], panel(), unit_serials=["L", "R"])
    assert [(u.position, u.identifier) for u in out.units] == [(1, "L"), (2, "R")]


# --- validation --------------------------------------------------------------------------------


def invalid(body: dict[str, Any]) -> str:
    with pytest.raises(ValidationError) as info:
        RecipeBody.model_validate(body)
    err = info.value.errors()[0]
    return ".".join(str(p) for p in err["loc"]) + ": " + err["msg"]


SQUARE = [[0, 0], [10, 0], [10, 10], [0, 10]]


@pytest.mark.parametrize(("body", "where", "what"), [
    ({"units": [{"position": 1, "bbox": [0, 0, 10, 10]},
                {"position": 2, "bbox": [5, 5, 20, 20]}]}, "units", "overlap"),
    ({"units": [{"position": 1, "bbox": [0, 0, 10, 10]},
                {"position": 1, "bbox": [10, 0, 20, 10]}]}, "units", "[1] given to several"),
    ({"units": [{"position": 1, "bbox": [10, 0, 10, 10]}]}, "units.0.bbox", "received [10"),
    ({"units": [{"position": 0, "bbox": [0, 0, 1, 1]}]}, "units.0.position", "greater"),
    ({"units": [{"position": i + 1, "bbox": [i, 0, i + 1, 1]} for i in range(MAX_UNITS + 1)]},
     "units", f"at most {MAX_UNITS}"),
    ({"zones": [{"name": "z", "action": "rules", "ignored_classes": ["scratch"],
                 "polygon": SQUARE}]}, "zones.0.ignored_classes", "unknown class 'scratch'"),
    ({"zones": [{"name": "z", "action": "ignore", "min_area_px": 3, "polygon": SQUARE}]},
     "zones.0", "takes no rules"),
    ({"zones": [{"name": "z", "action": "rules", "polygon": SQUARE}]}, "zones.0",
     "needs at least one"),
    ({"zones": [{"name": "z", "action": "ignore", "polygon": [[0, 0], [5, 5], [10, 10]]}]},
     "zones.0.polygon", "encloses no area"),
    ({"zones": [{"name": "z", "action": "ignore",
                 "polygon": [[i, i * i] for i in range(MAX_VERTICES + 1)]}]},
     "zones.0.polygon", f"at most {MAX_VERTICES}"),
    ({"zones": [{"name": "z", "action": "ignore", "polygon": SQUARE}] * 2}, "zones",
     "used twice"),
    ({"zones": [{"name": "a/b", "action": "ignore", "polygon": SQUARE}]}, "zones.0.name",
     "pattern"),
    ({"rules": {"min_confidence": 1.5}}, "rules.min_confidence", "less than or equal"),
    ({"rules": {"fail_min_count": 0}}, "rules.fail_min_count", "greater than or equal"),
    ({"rules": {"fail_rule": "pixels"}}, "rules.fail_rule", "'count' or 'area'"),
    ({"rules": {"treshold": 0.5}}, "rules.treshold", "Extra inputs"),
])
def test_invalid_recipes_name_the_field(body: dict[str, Any], where: str, what: str) -> None:
    message = invalid(body)
    assert message.startswith(where + ":"), message
    assert what in message, message


def test_units_must_lie_inside_the_golden_board() -> None:
    recipe = panel()
    recipe.check_fits(200, 100)
    with pytest.raises(RecipeFitError, match=r"units\[1\]\.bbox: unit 2 \[100, 0, 200, 100\] "
                       r"reaches outside the golden board \(199x100"):
        recipe.check_fits(199, 100)
    zoned = RecipeBody.model_validate(
        {"zones": [{"name": "rail", "action": "ignore", "polygon": [[0, 0], [250, 0], [0, 9]]}]})
    with pytest.raises(RecipeFitError) as info:
        zoned.check_fits(200, 100)
    assert info.value.field == "zones[0].polygon" and "[250.0, 0.0]" in str(info.value)


def test_the_canonical_form_does_not_depend_on_unit_order_or_defaults() -> None:
    a = panel()
    b = RecipeBody.model_validate({
        "units": [{"position": 1, "bbox": [0, 0, 100, 100]},
                  {"position": 2, "bbox": [100, 0, 200, 100]}],
        "zones": [], "rules": {"min_area_px": None},
    })
    assert a.canonical() == b.canonical()
    assert sha256_of(a.canonical()) == sha256_of(b.canonical())
    assert canonical_json({"b": 1, "a": [1.5, "x"]}) == b'{"a":[1.5,"x"],"b":1}'
    changed = panel(rules={"min_area_px": 31})
    assert sha256_of(changed.canonical()) != sha256_of(a.canonical())
