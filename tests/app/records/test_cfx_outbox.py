"""CFX messages and their transactional outbox, on SQLite and PostgreSQL.

Every message is checked against the committed JSON Schema (docs/cfx).
"""

from __future__ import annotations

import threading
import uuid
from pathlib import Path

import jsonschema
import pytest
from sqlalchemy import text

from app.records import Recorder, RecordStore, Review, ReviewBody
from app.records.cfx import (
    UNITS_INSPECTED,
    inspection_id_of,
    inspection_message,
    review_message,
    transaction_id,
)
from app.records.outbox import Outbox
from app.records.schemas import utcnow
from tests.app.records.factory import defect, make_record
from tests.helpers.cfx import validate_cfx

SOURCE = "acme.aoi.line1"
CLASSES = ["open", "short", "mousebite", "spur", "spurious_copper", "pin_hole"]


@pytest.fixture
def cfx_store(db_url: str) -> RecordStore:
    s = RecordStore(db_url, cfx_source=SOURCE)
    yield s
    s.close()


def _bodies(outbox: Outbox) -> list[dict]:
    return [validate_cfx(body) for _, _, body, _ in outbox.messages()]


def test_inspection_message_follows_the_sdk() -> None:
    rec = make_record(defects=[defect(1, "spur", box=(96, 48, 144, 96), confidence=0.5),
                               defect(2, "open", box=(0, 0, 48, 24), confidence=0.999)])
    msg = inspection_message(rec, SOURCE)
    env = validate_cfx(msg.body)
    assert env["MessageName"] == UNITS_INSPECTED and env["Source"] == SOURCE
    assert env["UniqueID"] == msg.unique_id
    body = env["MessageBody"]
    assert body["$type"] == "CFX.Production.TestAndInspection.UnitsInspected, CFX"
    assert body["InspectionMethod"] == "AOI" and body["Inspector"]["ActorType"] == "Robot"
    assert inspection_id_of(body["TransactionId"]) == rec.id
    assert body["RecipeName"] == "A17-top"
    (unit,) = body["InspectedUnits"]
    assert unit["UnitIdentifier"] == "SN-1" and unit["UnitPositionNumber"] == 1
    assert unit["OverallResult"] == "Failed"
    defects = unit["Inspections"][0]["DefectsFound"]
    # An open breaks the circuit: first in priority, whatever the order of detection.
    assert [(d["DefectCode"], d["Priority"]) for d in defects] == [("open", 1), ("spur", 2)]
    spur = defects[1]
    # 48 px/mm: the box (96, 48)-(144, 96) is (2, 1)-(3, 2) mm, a closed polygon.
    assert (spur["RegionOfInterest"]["StartPointX"], spur["RegionOfInterest"]["StartPointY"]) \
        == (2.0, 1.0)
    assert [(p["X"], p["Y"]) for p in spur["RegionOfInterest"]["RegionSegments"]] == [
        (3.0, 1.0), (3.0, 2.0), (2.0, 2.0), (2.0, 1.0)]
    assert spur["ConfidenceLevel"] == 50.0 and defects[0]["ConfidenceLevel"] == 99.9
    assert spur["Verification"] == "NotVerifiedYet"
    # Built again (a replay): the very same message.
    assert inspection_message(rec, SOURCE) == msg


def test_panel_units_and_recipe_are_used_when_the_record_has_them() -> None:
    """A record with ``units`` and ``recipe`` (panels): one InspectedUnit per board, each with
    its own defects; a defect of no unit (in an ignore zone) is not reported."""
    rec = make_record(defects=[defect(1, "short"), defect(2, "open"), defect(3, "spur")])
    units = [{"position": 1, "identifier": "PANEL7.1", "verdict": "pass", "defect_ids": []},
             {"position": 2, "identifier": "PANEL7.2", "verdict": "fail", "defect_ids": [2, 1]}]
    recipe = {"product": "A17-panel", "revision": 3, "sha256": "0" * 64}
    # The records of panels carry these fields; a plain object stands in for such a record.
    panel = type("PanelRecord", (), {})()
    for name in type(rec).model_fields:
        setattr(panel, name, getattr(rec, name))
    panel.units, panel.recipe = units, recipe
    body = validate_cfx(inspection_message(panel, SOURCE).body)["MessageBody"]
    assert (body["RecipeName"], body["RecipeRevision"]) == ("A17-panel", "3")
    got = [(u["UnitIdentifier"], u["UnitPositionNumber"], u["OverallResult"],
            [d["DefectCode"] for d in u["Inspections"][0]["DefectsFound"]])
           for u in body["InspectedUnits"]]
    assert got == [("PANEL7.1", 1, "Passed", []), ("PANEL7.2", 2, "Failed", ["open", "short"])]


def test_board_without_serial_is_identified_by_its_inspection_id() -> None:
    rec = make_record(serial=None, defects=[])
    body = validate_cfx(inspection_message(rec, SOURCE).body)["MessageBody"]
    assert body["InspectedUnits"][0]["UnitIdentifier"] == rec.id
    assert body["InspectedUnits"][0]["OverallResult"] == "Passed"


def test_transaction_id_round_trips() -> None:
    rec = make_record()
    tid = transaction_id(rec.id)
    assert uuid.UUID(tid) and inspection_id_of(tid) == rec.id


def test_schema_refuses_what_the_sdk_would_not_write() -> None:
    env = validate_cfx(inspection_message(make_record(), SOURCE).body)
    env["MessageBody"]["InspectionMethod"] = "XRay"
    with pytest.raises(jsonschema.ValidationError):
        validate_cfx(env)
    env["MessageBody"]["InspectionMethod"] = "AOI"
    env["MessageBody"]["InspectedUnits"][0]["Inspections"][0]["DefectsFound"][0][
        "ConfidenceLevel"] = 100.5
    with pytest.raises(jsonschema.ValidationError):
        validate_cfx(env)


def test_record_and_message_are_written_together(cfx_store: RecordStore) -> None:
    recs = [make_record(serial=f"SN-{i}") for i in range(3)]
    assert cfx_store.add_many(recs[:1]) == 1
    assert cfx_store.add_many(recs) == 2
    # A replay of the same records adds neither records nor messages.
    assert cfx_store.add_many(recs) == 0
    outbox = Outbox(cfx_store.engine)
    bodies = _bodies(outbox)
    assert [inspection_id_of(b["MessageBody"]["TransactionId"]) for b in bodies] == \
        [r.id for r in recs]
    assert outbox.pending() == 3


def test_a_failed_transaction_leaves_neither_record_nor_message(cfx_store: RecordStore) -> None:
    """The message is in the record's transaction: when the outbox insert fails, the record
    is rolled back too (and the other way round)."""
    with cfx_store.engine.begin() as conn:
        conn.execute(text("DROP INDEX ix_cfx_outbox_sent_at_seq"))
        conn.execute(text("ALTER TABLE cfx_outbox RENAME TO cfx_outbox_gone"))
    rec = make_record()
    with pytest.raises(Exception, match="cfx_outbox"):
        cfx_store.add_many([rec])
    assert cfx_store.count() == 0


def test_review_writes_a_verification_message(cfx_store: RecordStore) -> None:
    rec = make_record(defects=[defect(1, "short"), defect(2, "open"), defect(3, "spur")])
    cfx_store.add(rec)
    body = {"defects": [{"defect_id": 1, "outcome": "confirmed"},
                        {"defect_id": 2, "outcome": "false_call"},
                        {"defect_id": 3, "outcome": "reclassified", "class": "mousebite"}],
            "missed": [{"bbox": [100, 100, 148, 124], "class": "pin_hole"}]}
    review, created = cfx_store.add_review(rec.id, "alice", body, class_names=CLASSES)
    assert created
    # The same review again is no new review: no new message.
    cfx_store.add_review(rec.id, "alice", body, class_names=CLASSES)
    first, second = _bodies(Outbox(cfx_store.engine))
    b = second["MessageBody"]
    assert second["TimeStamp"].startswith(review.created_at.isoformat()[:19])
    assert b["InspectionMethod"] == "Human"
    assert b["Inspector"] == {"OperatorIdentifier": "alice", "ActorType": "Human",
                              "LastName": None, "FirstName": None, "LoginName": "alice"}
    assert b["TransactionId"] == first["MessageBody"]["TransactionId"]
    (unit,) = b["InspectedUnits"]
    assert unit["OverallResult"] == "Failed" and unit["Verification"] == "DefectConfirmed"
    found = {d["UniqueIdentifier"]: d for d in unit["Inspections"][0]["DefectsFound"]}
    aoi = {d["DefectCode"]: d["UniqueIdentifier"]
           for d in first["MessageBody"]["InspectedUnits"][0]["Inspections"][0]["DefectsFound"]}
    # The review names the AOI's defects by their UniqueIdentifier.
    assert found[aoi["short"]]["Verification"] == "DefectConfirmed"
    assert found[aoi["open"]]["Verification"] == "DefectRejected"
    spur = found[aoi["spur"]]
    assert (spur["DefectCode"], spur["Verification"]) == ("mousebite", "DefectConfirmed")
    assert "spur" in spur["VerificationDetail"]
    (missed,) = [d for u, d in found.items() if u not in aoi.values()]
    assert (missed["DefectCode"], missed["Verification"]) == ("pin_hole", "DefectConfirmed")


def test_all_false_calls_pass_the_board(cfx_store: RecordStore) -> None:
    rec = make_record(defects=[defect(1, "short")])
    cfx_store.add(rec)
    cfx_store.add_review(rec.id, "bob", {"defects": [{"defect_id": 1, "outcome": "false_call"}]},
                         class_names=CLASSES)
    unit = _bodies(Outbox(cfx_store.engine))[1]["MessageBody"]["InspectedUnits"][0]
    assert (unit["OverallResult"], unit["Verification"]) == ("Passed", "DefectRejected")


def test_no_messages_when_cfx_is_off(db_url: str) -> None:
    store = RecordStore(db_url)
    try:
        store.add(make_record())
        assert Outbox(store.engine).pending() == 0
    finally:
        store.close()


def test_spooled_records_get_their_messages_on_replay(db_url: str, tmp_path: Path) -> None:
    """Records spooled while the database was down are written with their messages when the
    spool is replayed, in the order they were recorded."""
    store = RecordStore(db_url, cfx_source=SOURCE)
    recorder = Recorder(store, tmp_path / "spool")
    try:
        recs = [make_record(serial=f"SN-{i}") for i in range(4)]
        recorder._degraded.set()  # as after a failed commit: records go to the spool
        assert [recorder.record(r).stored for r in recs] == ["spool"] * 4
        assert Outbox(store.engine).pending() == 0
        assert recorder.replay().inserted == 4
        bodies = _bodies(Outbox(store.engine))
        assert [b["MessageBody"]["InspectedUnits"][0]["UnitIdentifier"] for b in bodies] == \
            [f"SN-{i}" for i in range(4)]
    finally:
        recorder.close()
        store.close()


def test_claim_marks_only_what_was_sent(cfx_store: RecordStore) -> None:
    cfx_store.add_many([make_record(serial=f"SN-{i}") for i in range(5)])
    outbox = Outbox(cfx_store.engine)
    with outbox.claim(3) as claim:
        seqs = [m.seq for m in claim.messages]
        assert len(seqs) == 3
        claim.sent = seqs[:2]
        claim.error = "rejected by the broker"
    state = outbox.state()
    assert state.pending == 3 and state.last_error == "rejected by the broker"
    assert state.last_sent_at is not None and state.oldest_pending_at is not None
    with outbox.claim(10) as claim:
        assert [m.seq for m in claim.messages][0] == seqs[2]
        claim.sent = [m.seq for m in claim.messages]
    assert outbox.pending() == 0 and outbox.state().last_error is None


def test_replicas_claim_the_head_one_at_a_time(pg_url: str) -> None:
    """PostgreSQL: while one publisher holds the head of the queue (FOR UPDATE SKIP LOCKED),
    another gets nothing, rather than the messages after it (which would break the order)."""
    store = RecordStore(pg_url, cfx_source=SOURCE)
    try:
        store.add_many([make_record(serial=f"SN-{i}") for i in range(6)])
        a, b = Outbox(store.engine), Outbox(store.engine)
        holding, release = threading.Event(), threading.Event()
        got_a: list[int] = []

        def publisher_a() -> None:
            with a.claim(3) as claim:
                got_a.extend(m.seq for m in claim.messages)
                holding.set()
                release.wait(10)
                claim.sent = list(got_a)

        t = threading.Thread(target=publisher_a)
        t.start()
        assert holding.wait(10)
        with b.claim(3) as claim:
            assert claim.messages == []
        release.set()
        t.join(10)
        with b.claim(10) as claim:
            rest = [m.seq for m in claim.messages]
            claim.sent = rest
        assert len(got_a) == 3 and len(rest) == 3 and min(rest) > max(got_a)
        assert a.pending() == 0
    finally:
        store.close()


def test_panel_review_puts_each_defect_in_its_unit() -> None:
    """A review of a panel: each verdict in its unit, a missed defect in the unit whose frame
    holds it."""
    rec = make_record(defects=[defect(1, "short", box=(10, 10, 20, 20)),
                               defect(2, "open", box=(700, 10, 720, 20))], width=1280)
    panel = type("PanelRecord", (), {})()
    for name in type(rec).model_fields:
        setattr(panel, name, getattr(rec, name))
    panel.units = [
        {"position": 1, "identifier": "P.1", "verdict": "fail", "defect_ids": [1],
         "bbox": [0, 0, 640, 480]},
        {"position": 2, "identifier": "P.2", "verdict": "fail", "defect_ids": [2],
         "bbox": [640, 0, 1280, 480]},
    ]
    panel.recipe = None
    body = ReviewBody.model_validate({
        "defects": [{"defect_id": 1, "outcome": "false_call"},
                    {"defect_id": 2, "outcome": "confirmed"}],
        "missed": [{"bbox": [900, 100, 920, 120], "class": "spur"}]})
    review = Review(id="rev_" + "0" * 26, inspection_id=rec.id, reviewer="alice",
                    created_at=utcnow(), digest=body.digest(), body=body)
    units = validate_cfx(review_message(panel, review, SOURCE).body)["MessageBody"][
        "InspectedUnits"]
    got = [(u["UnitIdentifier"], u["OverallResult"], u["Verification"],
            [(d["DefectCode"], d["Verification"]) for d in u["Inspections"][0]["DefectsFound"]])
           for u in units]
    assert got == [
        ("P.1", "Passed", "DefectRejected", [("short", "DefectRejected")]),
        ("P.2", "Failed", "DefectConfirmed", [("open", "DefectConfirmed"),
                                               ("spur", "DefectConfirmed")]),
    ]
