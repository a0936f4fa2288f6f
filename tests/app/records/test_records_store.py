"""RecordStore on real SQLite and PostgreSQL: add, get, filters, keyset pagination, export."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json

import pytest
from pydantic import ValidationError

from app.records import (
    CSV_COLUMNS,
    InspectionFilter,
    InvalidCursorError,
    RecordStore,
    UnknownInspectionError,
    csv_lines,
    jsonl_lines,
)
from app.records.ids import new_id
from tests.app.records.factory import OLD_PRODUCT, at, defect, make_record, plant_product


def test_add_then_get_round_trips_every_field(store: RecordStore) -> None:
    rec = make_record(
        reference={"source": "product", "product": "A17-top", "sha256": "a" * 64,
                   "alignment": {"dx": 4.05, "dy": -3.07, "angle_deg": 0.41, "score": 0.93}},
        image_path="ab/" + "c" * 62 + ".png",
    )
    assert store.add(rec) is True
    got = store.get(rec.id)
    assert got.model_dump(exclude={"defect_count", "reviewed", "review_id"}) == rec.model_dump()
    assert got.created_at.tzinfo is not None and got.created_at == rec.created_at
    assert got.defect_count == 2 and got.reviewed is False and got.review_id is None
    assert got.defects[0].class_ == "short"


def test_adding_the_same_id_again_stores_it_once(store: RecordStore) -> None:
    rec = make_record()
    assert store.add(rec) is True
    assert store.add(rec) is False
    assert store.add_many([rec, make_record()]) == 1
    assert store.count() == 2


def test_get_unknown_id_names_it(store: RecordStore) -> None:
    missing = new_id()
    with pytest.raises(UnknownInspectionError, match=missing):
        store.get(missing)


def test_records_refuse_naive_times_and_bad_ids() -> None:
    with pytest.raises(ValidationError, match="naive"):
        make_record(created_at=dt.datetime(2025, 1, 1))
    with pytest.raises(ValidationError, match="'board-1'"):
        make_record(id="board-1")


def test_records_refuse_a_repeated_defect_id() -> None:
    with pytest.raises(ValidationError, match="defect id 2 appears twice; expected unique ids"):
        make_record(defects=[defect(1), defect(2), defect(2, "open")])


def test_created_at_is_stored_in_utc(store: RecordStore) -> None:
    paris = dt.timezone(dt.timedelta(hours=1))
    rec = make_record(created_at=dt.datetime(2025, 3, 1, 13, 0, tzinfo=paris))
    store.add(rec)
    got = store.get(rec.id).created_at
    assert got == at(12) and got.utcoffset() == dt.timedelta(0)


def _fill(store: RecordStore) -> list[str]:
    """24 boards over 2025-03-01 12:00-13:10, with varied metadata; ids newest first."""
    recs = []
    for i in range(24):
        recs.append(make_record(
            created_at=at(12, minute=(i * 3) % 60, second=0) + dt.timedelta(hours=i * 3 // 60),
            serial=f"SN-{i}", line="L1" if i % 2 else "L2", station=f"S{i % 3}",
            product="A" if i % 4 else "B",
            defects=[defect(1)] if i % 3 == 0 else [],
        ))
    # Several boards in the same instant: the id breaks the tie.
    same = at(12, 30, 30)
    for j in range(5):
        recs.append(make_record(created_at=same, serial=f"SAME-{j}", defects=[]))
    store.add_many(recs)
    ordered = sorted(recs, key=lambda r: (r.created_at, r.id), reverse=True)
    return [r.id for r in ordered]


def test_query_filters(store: RecordStore) -> None:
    _fill(store)

    def ids(**f: object) -> set[str]:
        page = store.query(InspectionFilter.model_validate(f), limit=1000)
        assert page.next_cursor is None
        return {i.serial or "" for i in page.items}

    assert ids(verdict="fail") == {f"SN-{i}" for i in range(0, 24, 3)}
    assert ids(product="B") == {f"SN-{i}" for i in range(0, 24, 4)}
    assert ids(serial="SN-7") == {"SN-7"}
    assert ids(line="L2", station="S0") == {f"SN-{i}" for i in range(24) if i % 6 == 0}
    assert ids(since=at(12, 30), until=at(12, 33)) == {"SN-10"} | {f"SAME-{j}" for j in range(5)}
    assert ids(since=at(13, 0)) == {f"SN-{i}" for i in range(20, 24)}
    assert ids(verdict="fail", product="B", since=at(12, 30)) == {"SN-12"}
    assert ids(reviewed=True) == set()
    assert len(ids(reviewed=False)) == 29
    assert store.count(InspectionFilter(verdict="pass")) == 29 - 8


@pytest.mark.parametrize("product", ["-1+1", "p" * 65, "A 17", ".hidden", ""])
def test_a_record_and_a_filter_take_only_a_product_id(product: str) -> None:
    # The one product-id rule (app.core.ids) for what is written and what is filtered by.
    with pytest.raises(ValidationError, match="expected 1 to 64 characters") as err:
        make_record(product=product)
    assert repr(product) in str(err.value)
    with pytest.raises(ValidationError, match="expected 1 to 64 characters"):
        InspectionFilter(product=product)


def test_an_old_records_product_is_read_as_stored(store: RecordStore) -> None:
    # Records stored before the rule keep their product: listed and read, never refused.
    old, new = make_record(serial="OLD"), make_record(serial="NEW", product="A17-top")
    store.add_many([old, new])
    plant_product(store, old.id)
    assert store.get(old.id).product == OLD_PRODUCT
    assert {i.serial: i.product for i in store.query(limit=10).items} == {
        "OLD": OLD_PRODUCT, "NEW": "A17-top"}
    assert [i.serial for i in store.query(InspectionFilter(product="A17-top")).items] == ["NEW"]


def test_query_filters_by_tags(store: RecordStore) -> None:
    odd = 'quote"back\\slash,ünï'
    store.add_many([
        make_record(serial="T-1", tags=["night", "lot-7"]),
        make_record(serial="T-2", tags=["lot-7"]),
        make_record(serial="T-3", tags=[odd]),
        make_record(serial="T-4", tags=[]),
        make_record(serial="T-5", tags=["lot-70"]),
    ])

    def serials(*tags: str) -> set[str]:
        filters = InspectionFilter(tags=tags)
        assert store.count(filters) == len(found := store.query(filters, limit=100).items)
        return {i.serial or "" for i in found}

    assert serials("lot-7") == {"T-1", "T-2"}
    assert serials("lot-7", "night") == {"T-1"}
    assert serials(odd) == {"T-3"}
    assert serials("lot") == set()
    assert serials() == {"T-1", "T-2", "T-3", "T-4", "T-5"}


@pytest.mark.parametrize("limit", [1, 4, 7, 29, 30])
def test_cursor_pages_have_no_duplicates_or_gaps(store: RecordStore, limit: int) -> None:
    expected = _fill(store)
    seen: list[str] = []
    cursor = None
    while True:
        page = store.query(limit=limit, cursor=cursor)
        assert len(page.items) <= limit
        seen.extend(i.id for i in page.items)
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
        # A board recorded meanwhile (newer than everything) must not shift the pages.
        store.add(make_record(serial="LATE"))
    assert seen == expected


def test_cursor_pages_with_a_filter(store: RecordStore) -> None:
    _fill(store)
    f = InspectionFilter(verdict="pass")
    every = store.query(f, limit=1000).items
    first = store.query(f, limit=10)
    second = store.query(f, limit=10, cursor=first.next_cursor)
    third = store.query(f, limit=10, cursor=second.next_cursor)
    assert third.next_cursor is None
    assert [i.id for i in first.items + second.items + third.items] == [i.id for i in every]


def test_bad_cursor_and_limit_are_named(store: RecordStore) -> None:
    with pytest.raises(InvalidCursorError, match="'nonsense'"):
        store.query(cursor="nonsense")
    with pytest.raises(ValueError, match="received 0"):
        store.query(limit=0)


def test_export_streams_everything_as_jsonl_and_csv(store: RecordStore) -> None:
    expected = _fill(store)
    items = list(store.iter_export(batch_size=4))
    assert [i.id for i in items] == expected
    lines = list(jsonl_lines(store.iter_export(InspectionFilter(verdict="fail"), batch_size=3)))
    assert len(lines) == 8 and all(line.endswith("\n") for line in lines)
    first = json.loads(lines[0])
    assert first["defects"][0]["class"] == "short" and first["verdict"] == "fail"
    text = "".join(csv_lines(store.iter_export()))
    rows = list(csv.DictReader(io.StringIO(text)))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert [r["id"] for r in rows] == expected
    assert {r["defect_count"] for r in rows} == {"0", "1"}
    assert rows[0]["tags"] == "night"


def test_delete_removes_record_and_reviews(store: RecordStore) -> None:
    rec = make_record(image_path="ab/" + "d" * 62 + ".png")
    store.add(rec)
    store.add_review(rec.id, "op", {"defects": [{"defect_id": 1, "outcome": "confirmed"}]},
                     class_names=["short", "open"])
    twin = make_record(image_path=rec.image_path)  # a board with the same bytes
    store.add(twin)
    assert store.delete(rec.id) == rec.image_path
    assert store.image_path_in_use(rec.image_path)  # still the twin's
    store.delete(twin.id)
    assert not store.image_path_in_use(rec.image_path)
    with pytest.raises(UnknownInspectionError):
        store.get(rec.id)
    with pytest.raises(UnknownInspectionError):
        store.delete(rec.id)
