"""Reviews: validation errors that name the bad value, idempotent resend, history, export."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from app.records import (
    InspectionFilter,
    InvalidBoxError,
    RecordStore,
    ReviewBody,
    UnknownClassError,
    UnknownDefectError,
    UnknownInspectionError,
)
from app.records.ids import new_id
from pcb_inspect.classes import CLASS_NAMES
from tests.app.records.factory import defect, make_record

BODY: dict[str, Any] = {
    "defects": [{"defect_id": 1, "outcome": "confirmed"},
                {"defect_id": 2, "outcome": "false_call"}],
    "missed": [{"bbox": [100, 100, 120, 130], "class": "spur"}],
}


def _review(store: RecordStore, inspection_id: str, body: dict[str, Any],
            reviewer: str = "op-1") -> tuple[Any, bool]:
    return store.add_review(inspection_id, reviewer, body, class_names=CLASS_NAMES)


@pytest.fixture
def board(store: RecordStore) -> str:
    rec = make_record()
    store.add(rec)
    return rec.id


def test_review_is_stored_and_marks_the_board(store: RecordStore, board: str) -> None:
    review, created = _review(store, board, BODY)
    assert created and review.reviewer == "op-1" and review.inspection_id == board
    got = store.get(board)
    assert got.reviewed and got.review_id == review.id
    assert store.count(InspectionFilter(reviewed=True)) == 1
    assert store.reviews(board) == [review]


def test_resending_the_same_review_is_a_no_op(store: RecordStore, board: str) -> None:
    first, created = _review(store, board, BODY)
    # The same review, its lists in another order: the same canonical body.
    shuffled = {"missed": BODY["missed"], "defects": list(reversed(BODY["defects"]))}
    again, created_again = _review(store, board, shuffled)
    assert created and not created_again and again == first
    assert len(store.reviews(board)) == 1


def test_a_different_review_is_kept_in_the_history(store: RecordStore, board: str) -> None:
    first, _ = _review(store, board, BODY)
    changed = {"defects": [{"defect_id": 1, "outcome": "confirmed"},
                           {"defect_id": 2, "outcome": "reclassified", "class": "spur"}]}
    second, created = _review(store, board, changed)
    assert created and second.id != first.id
    history = store.reviews(board)
    assert [r.id for r in history] == [first.id, second.id]
    assert store.get(board).review_id == second.id
    # Going back to the first review is a new current review, not a no-op.
    third, created = _review(store, board, BODY)
    assert created and third.digest == first.digest and store.get(board).review_id == third.id
    # Another reviewer agreeing with the current review is recorded too (who confirmed it).
    _, created = _review(store, board, BODY, reviewer="op-2")
    assert created and len(store.reviews(board)) == 4


def test_unknown_inspection(store: RecordStore) -> None:
    missing = new_id()
    with pytest.raises(UnknownInspectionError, match=missing):
        _review(store, missing, BODY)
    with pytest.raises(UnknownInspectionError):
        store.reviews(missing)


def test_unknown_defect_id_names_it_and_the_known_ids(store: RecordStore, board: str) -> None:
    with pytest.raises(UnknownDefectError) as err:
        _review(store, board, {"defects": [{"defect_id": 7, "outcome": "confirmed"}]})
    assert err.value.value == 7 and err.value.loc == ("defects", 0, "defect_id")
    assert "no defect 7" in str(err.value) and "[1, 2]" in str(err.value)


@pytest.mark.parametrize("body, loc", [
    ({"defects": [{"defect_id": 1, "outcome": "reclassified", "class": "scratch"}]},
     ("defects", 0, "class")),
    ({"missed": [{"bbox": [1, 1, 5, 5], "class": "scratch"}]}, ("missed", 0, "class")),
])
def test_unknown_class_names_it_and_the_class_list(store: RecordStore, board: str,
                                                    body: dict[str, Any],
                                                    loc: tuple[Any, ...]) -> None:
    with pytest.raises(UnknownClassError) as err:
        _review(store, board, body)
    assert err.value.value == "scratch" and err.value.loc == loc
    assert "'scratch'" in str(err.value) and "'pin_hole'" in str(err.value)


def test_reclassified_to_the_same_class_is_refused(store: RecordStore, board: str) -> None:
    with pytest.raises(UnknownClassError, match="'short', the class the model gave it"):
        _review(store, board,
                {"defects": [{"defect_id": 1, "outcome": "reclassified", "class": "short"}]})


@pytest.mark.parametrize("box", [
    [600, 400, 641, 420],   # past the right edge (640 wide)
    [10, 470, 20, 481],     # past the bottom edge (480 high)
    [-1, 0, 10, 10],        # negative
    [10, 10, 10, 20],       # no width
    [10, 20, 30, 20],       # no height
    [30, 10, 20, 20],       # inverted
])
def test_bad_missed_box_names_it(store: RecordStore, board: str, box: list[int]) -> None:
    with pytest.raises(InvalidBoxError) as err:
        _review(store, board, {"missed": [{"bbox": box, "class": "open"}]})
    assert err.value.value == box and str(box) in str(err.value)
    assert "640x480" in str(err.value)
    assert store.reviews(board) == []  # nothing stored


def test_box_may_touch_the_edges(store: RecordStore, board: str) -> None:
    _, created = _review(store, board, {"missed": [{"bbox": [0, 0, 640, 480], "class": "open"}]})
    assert created


def test_body_shape_errors() -> None:
    with pytest.raises(ValidationError, match="needs the new 'class'"):
        ReviewBody.model_validate({"defects": [{"defect_id": 1, "outcome": "reclassified"}]})
    with pytest.raises(ValidationError, match="only taken with outcome 'reclassified'"):
        ReviewBody.model_validate(
            {"defects": [{"defect_id": 1, "outcome": "confirmed", "class": "open"}]})
    with pytest.raises(ValidationError, match="defect_id 1 has two outcomes"):
        ReviewBody.model_validate({"defects": [{"defect_id": 1, "outcome": "confirmed"},
                                               {"defect_id": 1, "outcome": "false_call"}]})
    with pytest.raises(ValidationError):
        ReviewBody.model_validate({"defects": [{"defect_id": 1, "outcome": "maybe"}]})


def test_reviewed_for_export_lists_reviewed_boards_with_kept_images(store: RecordStore) -> None:
    kept = make_record(image_path="ab/" + "e" * 62 + ".png", defects=[defect(1)])
    not_kept = make_record(defects=[defect(1)])
    unreviewed = make_record(image_path="cd/" + "f" * 62 + ".png")
    store.add_many([kept, not_kept, unreviewed])
    for rec in (kept, not_kept):
        _review(store, rec.id, {"defects": [{"defect_id": 1, "outcome": "confirmed"}]})
    latest, _ = _review(store, kept.id, {"defects": [{"defect_id": 1, "outcome": "false_call"}]})
    out = list(store.reviewed_for_export())
    assert [(r.inspection.id, r.review.id) for r in out] == [(kept.id, latest.id)]
    assert out[0].review.body.defects[0].outcome == "false_call"
