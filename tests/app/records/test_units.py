"""A review board by board (:mod:`app.records.units`): where a point lands, and each board's
verdict after the review, on hand-computed cases."""

from __future__ import annotations

from typing import Any

import pytest

from app.records import Review, ReviewBody
from app.records.cfx import review_message
from app.records.schemas import utcnow
from app.records.units import box_centroid, holds, reviewed_units, unit_at
from tests.app.records.factory import defect, make_record
from tests.helpers.cfx import validate_cfx

# Two boards side by side on a 1280 x 480 panel, and a rail below them (y >= 400) on none.
LEFT = [0, 0, 640, 400]
RIGHT = [640, 0, 1280, 400]


def panel(verdicts: tuple[str, str] = ("fail", "fail"), **overrides: Any) -> Any:
    """Calls 1, 2 on the left board, 3 on the right, 4 on the rail (counted, on no board)."""
    return make_record(
        width=1280, height=480,
        defects=[defect(1, box=(10, 10, 20, 20)), defect(2, "open", box=(100, 100, 120, 110)),
                 defect(3, "spur", box=(700, 10, 720, 20)), defect(4, box=(10, 420, 20, 430))],
        units=[{"position": 1, "identifier": "P-1", "verdict": verdicts[0], "defect_ids": [1, 2],
                "bbox": LEFT},
               {"position": 2, "identifier": "P-2", "verdict": verdicts[1], "defect_ids": [3],
                "bbox": RIGHT}],
        **overrides)


def review(defects: dict[int, str] | None = None, missed: list[list[int]] | None = None,
           ) -> ReviewBody:
    return ReviewBody.model_validate({
        "defects": [{"defect_id": i, "outcome": o, **({"class": "pin_hole"}
                                                       if o == "reclassified" else {})}
                    for i, o in (defects or {}).items()],
        "missed": [{"bbox": b, "class": "spur"} for b in missed or []]})


def verdicts(record: Any, body: ReviewBody) -> list[tuple[int, str, str]]:
    return [(u.position, u.verdict, u.reviewed_verdict)
            for u in reviewed_units(record, body).units]


def test_frames_are_max_exclusive_and_a_point_lands_on_at_most_one() -> None:
    assert holds(LEFT, 0, 0) and holds(LEFT, 639.99, 399.5)
    assert not holds(LEFT, 640, 10) and not holds(LEFT, 10, 400) and not holds(LEFT, -0.01, 5)
    frames = [(1, LEFT), (2, RIGHT)]
    assert unit_at(frames, 639.5, 0) == 1
    assert unit_at(frames, 640, 0) == 2
    assert unit_at(frames, 700, 400) is None


def test_a_missed_box_lands_by_the_centroid_of_its_pixels() -> None:
    # Pixels 630..649: their mean x is 639.5, on the left board (a box centre of 640 would not).
    assert box_centroid([630, 0, 650, 20]) == (639.5, 9.5)
    assert box_centroid([10, 10, 11, 11]) == (10.0, 10.0)
    got = reviewed_units(panel(), review(missed=[[630, 0, 650, 20], [631, 0, 651, 20],
                                                 [0, 390, 10, 420]]))
    assert [u.missed for u in got.units] == [[0], [1]]
    # Centroid y = 404.5: on the rail, on no board.
    assert got.outside.missed == [2]


@pytest.mark.parametrize(("outcomes", "missed", "expected"), [
    # Every call false: both boards pass.
    ({1: "false_call", 2: "false_call", 3: "false_call"}, [], ["pass", "pass"]),
    # One confirmed call is enough to fail its board, and only its board.
    ({1: "false_call", 2: "confirmed", 3: "false_call"}, [], ["fail", "pass"]),
    # A reclassified call is a real defect too.
    ({1: "false_call", 2: "false_call", 3: "reclassified"}, [], ["pass", "fail"]),
    # A missed box fails the board holding it, even with all its calls false.
    ({1: "false_call", 2: "false_call", 3: "false_call"}, [[700, 300, 710, 310]],
     ["pass", "fail"]),
    # A call left without an outcome keeps the model's fail...
    ({1: "false_call", 3: "false_call"}, [], ["fail", "pass"]),
    # ... and nothing at all reviewed changes nothing.
    ({}, [], ["fail", "fail"]),
    # A missed box on no board fails none.
    ({1: "false_call", 2: "false_call", 3: "false_call"}, [[0, 410, 10, 420]], ["pass", "pass"]),
])
def test_reviewed_verdicts_of_a_panel(outcomes: dict[int, str], missed: list[list[int]],
                                      expected: list[str]) -> None:
    assert verdicts(panel(), review(outcomes, missed)) == [
        (1, "fail", expected[0]), (2, "fail", expected[1])]


def test_a_board_the_model_passed_keeps_passing_unless_the_review_finds_a_defect() -> None:
    record = make_record(width=1280, height=480, defects=[], units=[
        {"position": 1, "verdict": "pass", "bbox": LEFT},
        {"position": 2, "verdict": "pass", "bbox": RIGHT}], verdict="pass")
    assert verdicts(record, review()) == [(1, "pass", "pass"), (2, "pass", "pass")]
    assert verdicts(record, review(missed=[[10, 10, 20, 20]])) == [
        (1, "pass", "fail"), (2, "pass", "pass")]


def test_counts_identifiers_and_what_lies_on_no_board() -> None:
    got = reviewed_units(panel(), review({1: "reclassified", 2: "false_call", 4: "confirmed"}))
    one, two = got.units
    assert (one.identifier, one.bbox, one.defect_ids) == ("P-1", (0, 0, 640, 400), [1, 2])
    assert (one.confirmed, one.false_calls, one.reclassified, one.unreviewed) == (0, 1, 1, 0)
    assert (two.confirmed, two.false_calls, two.reclassified, two.unreviewed) == (0, 0, 0, 1)
    assert got.outside.defect_ids == [4] and got.outside.missed == []


def test_units_come_in_panel_order_whatever_the_record_lists() -> None:
    record = panel()
    flipped = record.model_copy(update={"units": record.units[::-1]})  # type: ignore[index]
    assert [u.position for u in reviewed_units(flipped, review()).units] == [1, 2]


def test_a_board_without_units_is_one_unit_the_whole_board() -> None:
    record = make_record(serial="SN-9", defects=[defect(1), defect(2, "open")])
    assert record.units is None  # a record made before units existed
    got = reviewed_units(record, review({1: "false_call", 2: "false_call"},
                                        [[600, 460, 640, 480]]))
    (unit,) = got.units
    assert (unit.position, unit.identifier, unit.bbox) == (1, "SN-9", (0, 0, 640, 480))
    assert (unit.verdict, unit.reviewed_verdict, unit.defect_ids, unit.missed) == (
        "fail", "fail", [1, 2], [0])
    assert got.outside.defect_ids == [] and got.outside.missed == []
    assert reviewed_units(record, review({1: "false_call", 2: "false_call"})).units[
        0].reviewed_verdict == "pass"


@pytest.mark.parametrize(("outcomes", "missed"), [
    ({1: "false_call", 2: "false_call", 3: "confirmed"}, [[630, 0, 650, 20], [0, 410, 10, 420]]),
    ({1: "false_call", 2: "false_call", 3: "false_call"}, []),
    ({1: "false_call"}, [[700, 300, 710, 310]]),
])
def test_the_cfx_review_message_judges_each_unit_by_the_same_function(
        outcomes: dict[int, str], missed: list[list[int]]) -> None:
    record = panel()
    body = review(outcomes, missed)
    message = review_message(record, Review(
        id="rev_" + "0" * 26, inspection_id=record.id, reviewer="alice", created_at=utcnow(),
        digest=body.digest(), body=body), "acme.aoi")
    units = validate_cfx(message.body)["MessageBody"]["InspectedUnits"]
    judged = reviewed_units(record, body).units
    assert [(u["UnitPositionNumber"], u["OverallResult"]) for u in units] == [
        (u.position, "Failed" if u.reviewed_verdict == "fail" else "Passed") for u in judged]
    # Each unit reports its calls and the missed boxes on it; a box on no unit is not reported.
    drawn = [[d for d in u["Inspections"][0]["DefectsFound"]
              if d["VerificationDetail"] == "missed by the AOI: drawn by the reviewer"]
             for u in units]
    assert [len(d) for d in drawn] == [len(u.missed) for u in judged]
    assert [len(u["Inspections"][0]["DefectsFound"]) for u in units] == [
        len(u.defect_ids) + len(u.missed) for u in judged]
