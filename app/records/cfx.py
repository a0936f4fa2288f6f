"""IPC-CFX (IPC-2591) messages of inspections and reviews, in the CFX SDK's JSON form.

Each finished inspection becomes one ``CFX.Production.TestAndInspection.UnitsInspected``
(``InspectionMethod`` ``AOI``), and each new review a second one by a human inspector
(``InspectionMethod`` ``Human``) that carries every defect's ``Verification``. The field names,
enum values and the envelope follow the SDK's classes (``CFXEnvelope``, ``UnitsInspected``,
``InspectedUnit``, ``Inspection``, ``Defect``, ``Region``, ``Operator``, ``VerificationResult``);
``docs/cfx/UnitsInspected.schema.json`` is their JSON Schema.

Identifiers are derived, not drawn, so that building a message twice (a spooled record
replayed, a retry) gives the same message:

- ``TransactionId`` (a Guid in CFX) is the inspection id's 128-bit ULID as a UUID, so
  :func:`inspection_id_of` turns it back into ``insp_...``;
- the envelope's ``UniqueID`` and the units', inspections' and defects' ``UniqueIdentifier``
  are UUIDv5 of the inspection (or review) id, so a review's message names the same defects
  as the inspection's.

A board is one unit (position 1, its serial or else its inspection id) unless its record
lists ``units`` (a panel); then each unit carries the defects its ``defect_ids`` name, and
defects of no unit (ignored by a zone) are not reported. ``RegionOfInterest`` is the defect's
box as a closed polygon in millimetres from the image's top-left corner, at the record's
``pixels_per_mm``.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from app.inference.defects import Defect
from app.records.ids import INSPECTION_PREFIX
from app.records.schemas import InspectionRecord, Review
from app.records.units import reviewed_units

__all__ = [
    "CFX_VERSION",
    "UNITS_INSPECTED",
    "CfxMessage",
    "inspection_id_of",
    "inspection_message",
    "review_message",
    "transaction_id",
]

#: The CFX (IPC-2591) version the messages follow.
CFX_VERSION = "2.0"
UNITS_INSPECTED = "CFX.Production.TestAndInspection.UnitsInspected"
#: Newtonsoft's type name of the body, as the SDK writes it (``TypeNameHandling.Auto``).
_BODY_TYPE = f"{UNITS_INSPECTED}, CFX"
#: The name of the one inspection step made on each unit.
INSPECTION_NAME = "PCB_DEFECTS"
#: Namespace of the derived UUIDs (fixed: changing it would change every id).
_NS = uuid.UUID("5f0c1f4e-6a63-4e0e-9a51-8f1c2a6b7d10")
_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
#: Classes that break a circuit (or make one): repaired first, so they come first in priority.
_FUNCTIONAL = frozenset({"open", "short"})
#: DefectCategory: CFX's suggested value where one fits, else its catch-all.
_CATEGORY = {"short": "Short"}
_DESCRIPTION = {
    "open": "open circuit: a trace is broken",
    "short": "short circuit: copper joins two conductors",
    "mousebite": "mouse bite: copper bitten out of a trace edge",
    "spur": "spur: copper sticking out of a trace",
    "spurious_copper": "spurious copper: copper where there should be none",
    "pin_hole": "pin hole: a hole in the copper",
}


@dataclass(frozen=True)
class CfxMessage:
    """One message to publish: its envelope's ``UniqueID``, name, time and JSON text."""

    unique_id: str
    message_name: str
    inspection_id: str
    time_stamp: dt.datetime
    body: str


def transaction_id(inspection_id: str) -> str:
    """The inspection's ``TransactionId``: its ULID (the 26 characters after ``insp_``) as a
    UUID."""
    ulid = inspection_id.removeprefix(INSPECTION_PREFIX)
    if len(ulid) != 26 or any(c not in _ALPHABET for c in ulid):
        # Not one of our ids (cannot happen for stored records): still a stable Guid.
        return str(uuid.uuid5(_NS, inspection_id))
    value = 0
    for c in ulid:
        value = value * 32 + _ALPHABET.index(c)
    return str(uuid.UUID(int=value & ((1 << 128) - 1)))


def inspection_id_of(transaction: str) -> str:
    """The inspection id of a ``TransactionId`` made by :func:`transaction_id`."""
    value = uuid.UUID(transaction).int
    chars = []
    for _ in range(26):
        value, digit = divmod(value, 32)
        chars.append(_ALPHABET[digit])
    return INSPECTION_PREFIX + "".join(reversed(chars))


def _uid(*parts: object) -> str:
    return str(uuid.uuid5(_NS, "/".join(str(p) for p in parts)))


def _timestamp(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).isoformat()


@dataclass(frozen=True)
class _Unit:
    position: int
    identifier: str
    verdict: str
    defect_ids: tuple[int, ...]


def _get(obj: Any, name: str) -> Any:
    return obj.get(name) if isinstance(obj, Mapping) else getattr(obj, name, None)


def _units(record: InspectionRecord) -> list[_Unit]:
    """The record's units, or the whole board as unit 1."""
    listed = getattr(record, "units", None)
    if listed:
        board = record.serial or record.id
        return [
            _Unit(int(_get(u, "position")),
                  str(_get(u, "identifier") or f"{board}.{_get(u, 'position')}"),
                  str(_get(u, "verdict")), tuple(int(i) for i in _get(u, "defect_ids") or ()))
            for u in listed
        ]
    return [_Unit(1, record.serial or record.id, record.verdict,
                  tuple(d.id for d in record.defects))]


def _recipe(record: InspectionRecord) -> tuple[str | None, str | None]:
    """``(RecipeName, RecipeRevision)``: the product recipe the board was inspected with, or
    its product alone."""
    recipe = getattr(record, "recipe", None)
    if recipe is not None:
        revision = _get(recipe, "revision")
        return _get(recipe, "product"), None if revision is None else str(revision)
    return record.product, None


def _region(box: Sequence[int], pixels_per_mm: float) -> dict[str, Any]:
    x0, y0, x1, y1 = (round(v / pixels_per_mm, 4) for v in box)
    return {
        "StartPointX": x0, "StartPointY": y0,
        "RegionSegments": [{"X": x1, "Y": y0}, {"X": x1, "Y": y1}, {"X": x0, "Y": y1},
                           {"X": x0, "Y": y0}],
    }


def _severity(class_name: str, area: float) -> tuple[int, float]:
    return (0 if class_name in _FUNCTIONAL else 1, -area)


def _defect(uid: str, class_name: str, box: Sequence[int], pixels_per_mm: float,
            confidence: float, *, verification: str = "NotVerifiedYet",
            detail: str | None = None) -> dict[str, Any]:
    return {
        "UniqueIdentifier": uid,
        "DefectCode": class_name,
        "DefectCategory": _CATEGORY.get(class_name, "Miscellaneous"),
        "Description": _DESCRIPTION.get(class_name, class_name),
        "Comments": None,
        "ComponentOfInterest": None,
        "RegionOfInterest": _region(box, pixels_per_mm),
        "DefectImages": [],
        "Priority": None,
        "ConfidenceLevel": round(min(1.0, max(0.0, confidence)) * 100.0, 2),
        "RelatedMeasurements": [],
        "RelatedSymptoms": [],
        "Verification": verification,
        "VerificationDetail": detail,
    }


def _prioritise(defects: list[tuple[tuple[int, float], dict[str, Any]]]) -> list[dict[str, Any]]:
    """Sets ``Priority`` 1..n (1 first: circuit-breaking classes, then larger areas)."""
    ordered = sorted(defects, key=lambda pair: pair[0])
    for rank, (_, d) in enumerate(ordered, start=1):
        d["Priority"] = rank
    return [d for _, d in ordered]


def _result(failed: bool) -> str:
    return "Failed" if failed else "Passed"


def _inspection(uid: str, result: str, defects: list[dict[str, Any]], *, procedure: str,
                verification: str, end: dt.datetime | None = None) -> dict[str, Any]:
    # The record knows when the inspection ended (its creation), not when it started.
    return {
        "UniqueIdentifier": uid,
        "InspectionName": INSPECTION_NAME,
        "InspectionStartTime": None,
        "InspectionEndTime": None if end is None else _timestamp(end),
        "TestProcedure": procedure,
        "Comments": None,
        "Result": result,
        "Verification": verification,
        "VerificationDetail": None,
        "Error": None,
        "DefectsFound": defects,
        "Symptoms": [],
        "Measurements": [],
        "RefNo": None,
    }


def _envelope(unique_id: str, time_stamp: dt.datetime, source: str,
              body: dict[str, Any]) -> dict[str, Any]:
    return {
        "MessageName": UNITS_INSPECTED,
        "Version": CFX_VERSION,
        "TimeStamp": _timestamp(time_stamp),
        "UniqueID": unique_id,
        "Source": source,
        "Target": None,
        "RequestID": None,
        "MessageBody": {"$type": _BODY_TYPE, **body},
    }


def _message(unique_id: str, inspection_id: str, time_stamp: dt.datetime, source: str,
             body: dict[str, Any]) -> CfxMessage:
    envelope = _envelope(unique_id, time_stamp, source, body)
    return CfxMessage(unique_id, UNITS_INSPECTED, inspection_id, time_stamp,
                      json.dumps(envelope, separators=(",", ":"), ensure_ascii=False))


def _procedure(record: InspectionRecord) -> str:
    return f"{record.model_name} {record.model_version} ({record.model_mode})"


def _body(record: InspectionRecord, method: str, inspector: dict[str, Any],
          units: list[dict[str, Any]]) -> dict[str, Any]:
    name, revision = _recipe(record)
    return {
        "TransactionId": transaction_id(record.id),
        "InspectionMethod": method,
        "SamplingInformation": {"SamplingMethod": "NoSampling", "LotSize": None,
                                "SampleSize": None},
        "Inspector": inspector,
        "RecipeName": name,
        "RecipeRevision": revision,
        "InspectedUnits": units,
    }


def _unit(unit: _Unit, record: InspectionRecord, result: str, verification: str,
          inspection: dict[str, Any]) -> dict[str, Any]:
    name, revision = _recipe(record)
    return {
        "UnitIdentifier": unit.identifier,
        "UnitPositionNumber": unit.position,
        "OverallResult": result,
        "ActiveRecipeName": name,
        "ActiveRecipeRevision": revision,
        "Inspections": [inspection],
        "Verification": verification,
    }


def _aoi_defect(record: InspectionRecord, d: Defect, **kwargs: Any) -> dict[str, Any]:
    return _defect(_uid(record.id, "defect", d.id), kwargs.pop("code", d.class_), d.bbox,
                   record.rules.pixels_per_mm, d.confidence, **kwargs)


def inspection_message(record: InspectionRecord, source: str) -> CfxMessage:
    """The ``UnitsInspected`` of a finished inspection, by the AOI (this service)."""
    by_id = {d.id: d for d in record.defects}
    units = []
    for unit in _units(record):
        defects = _prioritise([
            (_severity(d.class_, d.area_px), _aoi_defect(record, d))
            for d in (by_id[i] for i in unit.defect_ids if i in by_id)
        ])
        result = _result(unit.verdict == "fail")
        inspection = _inspection(_uid(record.id, "unit", unit.position), result, defects,
                                 procedure=_procedure(record), verification="NotVerifiedYet",
                                 end=record.created_at)
        units.append(_unit(unit, record, result, "NotVerifiedYet", inspection))
    inspector = {"OperatorIdentifier": source, "ActorType": "Robot", "LastName": None,
                 "FirstName": None, "LoginName": None}
    return _message(_uid(record.id, "inspected"), record.id, record.created_at, source,
                    _body(record, "AOI", inspector, units))


def _verification(verdicts: Iterable[str]) -> str:
    seen = list(verdicts)
    if "DefectConfirmed" in seen:
        return "DefectConfirmed"
    if seen and all(v == "DefectRejected" for v in seen):
        return "DefectRejected"
    return "NotVerifiedYet"


def review_message(record: InspectionRecord, review: Review, source: str) -> CfxMessage:
    """The ``UnitsInspected`` of a review: the operator's verification of each defect.

    ``confirmed`` is ``DefectConfirmed``; ``false_call`` is ``DefectRejected`` (CFX's false
    fail); ``reclassified`` is ``DefectConfirmed`` with the new class as ``DefectCode`` and the
    AOI's in ``VerificationDetail``; a defect the AOI missed is a new, confirmed defect;
    defects without an outcome stay ``NotVerifiedYet``. Each unit's result is its
    ``reviewed_verdict`` (:func:`app.records.units.reviewed_units`, as the review API shows
    it), and a missed defect goes in the unit holding its centroid; one on no unit of a panel
    is not reported, as the AOI's defects of no unit are not.
    """
    by_id = {d.id: d for d in record.defects}
    outcomes = {o.defect_id: o for o in review.body.defects}
    reviewed = {u.position: u for u in reviewed_units(record, review.body).units}
    out = []
    for unit in _units(record):
        judged = reviewed[unit.position]
        defects = []
        for d in (by_id[i] for i in unit.defect_ids if i in by_id):
            o = outcomes.get(d.id)
            if o is None:
                entry = _aoi_defect(record, d)
            elif o.outcome == "confirmed":
                entry = _aoi_defect(record, d, verification="DefectConfirmed")
            elif o.outcome == "false_call":
                entry = _aoi_defect(record, d, verification="DefectRejected",
                                    detail="false call")
            else:
                entry = _aoi_defect(record, d, code=o.class_, verification="DefectConfirmed",
                                    detail=f"reclassified: the AOI called it {d.class_}")
            defects.append((_severity(entry["DefectCode"], d.area_px), entry))
        for i in judged.missed:
            m = review.body.missed[i]
            x0, y0, x1, y1 = m.bbox
            entry = _defect(_uid(review.id, "missed", i), m.class_, m.bbox,
                            record.rules.pixels_per_mm, 1.0, verification="DefectConfirmed",
                            detail="missed by the AOI: drawn by the reviewer")
            defects.append((_severity(m.class_, (x1 - x0) * (y1 - y0)), entry))
        found = _prioritise(defects)
        states = [d["Verification"] for d in found]
        failed = judged.reviewed_verdict == "fail"
        verification = _verification(states)
        inspection = _inspection(_uid(review.id, "unit", unit.position), _result(failed), found,
                                 procedure=f"review of {record.id}", verification=verification)
        out.append(_unit(unit, record, _result(failed), verification, inspection))
    inspector = {"OperatorIdentifier": review.reviewer, "ActorType": "Human", "LastName": None,
                 "FirstName": None, "LoginName": review.reviewer}
    return _message(_uid(review.id, "verified"), record.id, review.created_at, source,
                    _body(record, "Human", inspector, out))
