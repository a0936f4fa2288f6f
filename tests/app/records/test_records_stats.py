"""The dashboard's figures, against numbers worked out by hand."""

from __future__ import annotations

import pytest

from app.records import RecordStore
from pcb_inspect.classes import CLASS_NAMES
from tests.app.records.factory import at, defect, make_record


@pytest.fixture
def filled(store: RecordStore) -> RecordStore:
    """Boards between 2025-03-01 09:59 and 13:00 UTC, three of them reviewed in range.

    10:xx  A fail (short, open, short), B fail (short), D pass
    11:xx  nothing
    12:xx  C fail (open, spur), E, F, G pass
    outside [10:00, 13:00): X at 09:59 fail (reviewed), Y at 13:00 pass
    """
    a = make_record(created_at=at(10, 5), defects=[defect(1, "short"), defect(2, "open"),
                                                   defect(3, "short")])
    b = make_record(created_at=at(10, 20), defects=[defect(1, "short")])
    d = make_record(created_at=at(10, 59, 59), defects=[])
    c = make_record(created_at=at(12, 10), defects=[defect(1, "open"), defect(2, "spur")])
    passes = [make_record(created_at=at(12, m), defects=[]) for m in (0, 30, 59)]
    x = make_record(created_at=at(9, 59), defects=[defect(1, "short")])
    y = make_record(created_at=at(13, 0), defects=[])
    store.add_many([a, b, c, d, x, y, *passes])

    def review(rec_id: str, body: dict[str, object]) -> None:
        store.add_review(rec_id, "op", body, class_names=CLASS_NAMES)

    review(a.id, {"defects": [{"defect_id": 1, "outcome": "confirmed"},
                              {"defect_id": 2, "outcome": "false_call"},
                              {"defect_id": 3, "outcome": "false_call"}],
                  "missed": [{"bbox": [1, 1, 9, 9], "class": "spur"}]})
    # B's first review is replaced: only the current one counts.
    review(b.id, {"defects": [{"defect_id": 1, "outcome": "false_call"}]})
    review(b.id, {"defects": [{"defect_id": 1, "outcome": "confirmed"}]})
    review(c.id, {"defects": [{"defect_id": 1, "outcome": "reclassified", "class": "short"},
                              {"defect_id": 2, "outcome": "confirmed"}]})
    review(x.id, {"defects": [{"defect_id": 1, "outcome": "false_call"}]})
    return store


def test_hourly_buckets_and_fail_rate(filled: RecordStore) -> None:
    s = filled.stats(at(10), until=at(13), class_names=CLASS_NAMES)
    assert [(b.start, b.boards, b.failed, b.fail_rate) for b in s.buckets] == [
        (at(10), 3, 2, 2 / 3),
        (at(11), 0, 0, None),
        (at(12), 4, 1, 0.25),
    ]
    assert (s.boards, s.failed, s.fail_rate, s.reviewed) == (7, 3, 3 / 7, 3)


def test_false_call_rate_per_class(filled: RecordStore) -> None:
    s = filled.stats(at(10), until=at(13), class_names=CLASS_NAMES)
    by_class = {c.class_: c for c in s.classes}
    assert [c.class_ for c in s.classes] == list(CLASS_NAMES)
    # short: A1 confirmed, A3 false call, B1 confirmed (B's first review is history).
    short = by_class["short"]
    assert (short.reviewed_calls, short.confirmed, short.false_calls, short.reclassified) \
        == (3, 2, 1, 0)
    assert short.false_call_rate == pytest.approx(1 / 3)
    # open: A2 false call, C1 reclassified as short (a real defect, not a false call).
    opn = by_class["open"]
    assert (opn.reviewed_calls, opn.false_calls, opn.reclassified, opn.false_call_rate) \
        == (2, 1, 1, 0.5)
    # spur: C2 confirmed; one spur the model missed on A.
    spur = by_class["spur"]
    assert (spur.reviewed_calls, spur.false_calls, spur.missed, spur.false_call_rate) \
        == (1, 0, 1, 0.0)
    assert by_class["pin_hole"].reviewed_calls == 0
    assert by_class["pin_hole"].false_call_rate is None


def test_day_buckets_and_a_since_inside_an_hour(filled: RecordStore) -> None:
    day = filled.stats(at(0), until=at(0, day=2), bucket="day")
    assert [(b.start, b.boards, b.failed) for b in day.buckets] == [(at(0), 9, 4)]
    assert day.reviewed == 4
    late = filled.stats(at(10, 30), until=at(12, 30))
    # 10:30-10:59 holds only D; 12:00-12:29 holds C and the 12:00 pass.
    assert [(b.start, b.boards, b.failed) for b in late.buckets] == [
        (at(10), 1, 0), (at(11), 0, 0), (at(12), 2, 1)]


def test_marking_a_false_call_moves_the_rate(filled: RecordStore) -> None:
    before = {c.class_: c for c in filled.stats(at(10), until=at(13)).classes}
    fresh = make_record(created_at=at(12, 45), defects=[defect(1, "spur")])
    filled.add(fresh)
    filled.add_review(fresh.id, "op", {"defects": [{"defect_id": 1, "outcome": "false_call"}]},
                      class_names=CLASS_NAMES)
    after = {c.class_: c for c in filled.stats(at(10), until=at(13)).classes}
    assert before["spur"].false_call_rate == 0.0 and after["spur"].false_call_rate == 0.5


def test_stats_refuses_naive_times_and_unknown_buckets(store: RecordStore) -> None:
    import datetime as dt

    with pytest.raises(ValueError, match="naive"):
        store.stats(dt.datetime(2025, 3, 1))
    with pytest.raises(ValueError, match="'week'"):
        store.stats(at(0), bucket="week")  # type: ignore[arg-type]
