"""The CSV export: flat columns, one row per defect with its review outcome, and no cell a
spreadsheet would run as a formula (OWASP CSV injection)."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator

import pytest

from app.records import CSV_COLUMNS, RecordStore, csv_lines, jsonl_lines
from app.records.export import neutralise_cell
from tests.app.records.factory import OLD_PRODUCT, defect, make_record, plant_product

CLASSES = ["short", "open", "spur"]


@pytest.fixture
def sqlite_store(sqlite_url: str) -> Iterator[RecordStore]:
    s = RecordStore(sqlite_url)
    try:
        yield s
    finally:
        s.close()


def _rows(store: RecordStore) -> list[dict[str, str]]:
    text = "".join(csv_lines(store.iter_export(), store.reviews_by_id))
    return list(csv.DictReader(io.StringIO(text)))


@pytest.mark.parametrize(("value", "shown"), [
    ("=HYPERLINK(\"http://x\",\"y\")", "'=HYPERLINK(\"http://x\",\"y\")"),
    ("@SUM(A1:A9)", "'@SUM(A1:A9)"),
    ("+cmd|' /C calc'!A0", "'+cmd|' /C calc'!A0"),
    ("-2+3+cmd|' /C calc'!A0", "'-2+3+cmd|' /C calc'!A0"),
    ("\t=1+1", "'\t=1+1"),
    ("\r=1+1", "'\r=1+1"),
    ("SN-=1", "SN-=1"),  # only the first character counts
    ("-0.5", "-0.5"),  # a number stays a number
    ("1e-3", "1e-3"),
    ("", ""),
])
def test_formula_cells_are_neutralised(value: str, shown: str) -> None:
    assert neutralise_cell(value) == shown


def test_planted_formulas_reach_the_csv_as_text(store: RecordStore) -> None:
    # Every free-text field a station or a reviewer sets, each with a formula (the product
    # is an id, which starts with a letter or digit: see the old record below).
    rec = make_record(serial="=HYPERLINK(\"http://evil\",\"x\")", line="@SUM(1+1)",
                      station="+cmd|' /C calc'!A0", tags=["-1+1", "ok"],
                      defects=[defect(1, "short")])
    store.add(rec)
    store.add_review(rec.id, "=evil()", {"defects": [{"defect_id": 1, "outcome": "confirmed"}]},
                     class_names=CLASSES)
    text = "".join(csv_lines(store.iter_export(), store.reviews_by_id))
    raw = list(csv.reader(io.StringIO(text)))
    for cell in (c for row in raw for c in row):
        assert not cell.startswith(("=", "+", "-", "@", "\t", "\r")), cell
    # Every cell quoted, so no cell's content can end the cell early.
    assert all(line.startswith('"') for line in text.splitlines() if line)
    row = csv.DictReader(io.StringIO(text)).__next__()
    assert row["serial"] == "'=HYPERLINK(\"http://evil\",\"x\")"
    assert (row["line"], row["station"]) == ("'@SUM(1+1)", "'+cmd|' /C calc'!A0")
    assert row["tags"] == "'-1+1;ok" and row["reviewer"] == "'=evil()"
    # JSON lines keep the record as it is.
    assert json.loads(next(jsonl_lines(store.iter_export())))["serial"].startswith("=HYPER")


def test_an_old_records_product_is_exported_as_stored_and_neutralised(
        store: RecordStore) -> None:
    # Before the one product-id rule a record's product took up to 128 characters of any
    # text: such a record is exported as stored, its formula neutralised like any cell's.
    rec = make_record(defects=[defect(1, "short")])
    store.add(rec)
    plant_product(store, rec.id)
    (row,) = _rows(store)
    assert row["product"] == "'" + OLD_PRODUCT
    assert json.loads(next(jsonl_lines(store.iter_export())))["product"] == OLD_PRODUCT


def test_one_row_per_defect_with_its_review_outcome(sqlite_store: RecordStore) -> None:
    store = sqlite_store
    reviewed = make_record(defects=[defect(1, "short"), defect(2, "open", box=(1, 2, 30, 40)),
                                    defect(3, "spur"), defect(4, "short")])
    unreviewed = make_record(defects=[defect(1, "open")])
    clean = make_record(defects=[])
    for r in (reviewed, unreviewed, clean):
        store.add(r)
    store.add_review(reviewed.id, "alice", {
        "defects": [{"defect_id": 1, "outcome": "confirmed"},
                    {"defect_id": 2, "outcome": "false_call"},
                    {"defect_id": 3, "outcome": "reclassified", "class": "open"}],
        "missed": [{"bbox": [100, 100, 120, 130], "class": "spur"}],
    }, class_names=CLASSES)
    rows = _rows(store)
    assert tuple(rows[0]) == CSV_COLUMNS
    for row in rows:
        for cell in row.values():
            assert not cell.startswith(("{", "[")), row  # flat: no JSON in a cell
    by_board: dict[str, list[dict[str, str]]] = {}
    for row in rows:
        by_board.setdefault(row["id"], []).append(row)

    mine = by_board[reviewed.id]
    assert [(r["defect_source"], r["defect_id"], r["class"], r["review_outcome"],
             r["reviewed_class"]) for r in mine] == [
        ("model", "1", "short", "confirmed", ""),
        ("model", "2", "open", "false_call", ""),
        ("model", "3", "spur", "reclassified", "open"),
        ("model", "4", "short", "unreviewed", ""),
        ("missed", "", "spur", "missed", "spur"),
    ]
    assert (mine[1]["x_min"], mine[1]["y_min"], mine[1]["x_max"], mine[1]["y_max"]) == (
        "1", "2", "30", "40")
    assert (mine[4]["x_min"], mine[4]["y_max"]) == ("100", "130")
    assert {r["reviewer"] for r in mine} == {"alice"} and all(r["reviewed_at"] for r in mine)
    assert {(r["reviewed"], r["verdict"], r["defect_count"], r["threshold"]) for r in mine} == {
        ("true", "fail", "4", "0.5")}

    (one,) = by_board[unreviewed.id]
    assert (one["defect_id"], one["review_outcome"], one["reviewed"], one["reviewer"]) == (
        "1", "", "false", "")
    (empty,) = by_board[clean.id]
    assert (empty["defect_source"], empty["defect_id"], empty["verdict"]) == ("", "", "pass")
    assert empty["tags"] == "night"


def test_reviews_by_id_leaves_out_unknown_ids(sqlite_store: RecordStore) -> None:
    rec = make_record()
    sqlite_store.add(rec)
    review, _ = sqlite_store.add_review(
        rec.id, "bob", {"defects": [{"defect_id": 1, "outcome": "confirmed"}]},
        class_names=CLASSES)
    found = sqlite_store.reviews_by_id([review.id, "rev_" + "0" * 26])
    assert list(found) == [review.id] and found[review.id].reviewer == "bob"
