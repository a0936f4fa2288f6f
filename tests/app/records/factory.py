"""Records for the tests: a valid inspection with overridable fields, and a few defects."""

from __future__ import annotations

import datetime as dt
import hashlib
from typing import Any

from sqlalchemy import update

from app.records import InspectionRecord, RecordStore
from app.records.models import InspectionRow

WEIGHTS = hashlib.sha256(b"weights").hexdigest()


def defect(i: int, cls: str = "short", *, box: tuple[int, int, int, int] = (10, 10, 20, 20),
           confidence: float = 0.9) -> dict[str, Any]:
    """A defect as the service reports it."""
    return {"id": i, "class": cls, "confidence": confidence, "bbox": list(box), "area_px": 50,
            "area_mm2": 0.02, "centroid": [15.0, 15.0]}


def make_record(**overrides: Any) -> InspectionRecord:
    """A valid record of a 640x480 board; ``overrides`` replace any field."""
    defects = overrides.pop("defects", [defect(1, "short"), defect(2, "open")])
    fields: dict[str, Any] = {
        "serial": "SN-1", "line": "L1", "station": "S1", "product": "A17-top",
        "tags": ["night"], "image_sha256": hashlib.sha256(b"board").hexdigest(),
        "image_bytes": 12345, "width": 640, "height": 480, "model_name": "pcb-unet",
        "model_version": "1.2.0", "model_mode": "single", "weights_sha256": WEIGHTS,
        "rules": {"threshold": 0.5, "min_area_px": 10, "min_confidence": 0.98,
                  "pixels_per_mm": 48.0, "fail_rule": "count", "fail_min_count": 1},
        "verdict": "fail" if defects else "pass", "defects": defects,
    }
    fields.update(overrides)
    return InspectionRecord.model_validate(fields)


def at(hour: int, minute: int = 0, second: int = 0, day: int = 1) -> dt.datetime:
    """A UTC time on 2025-03-<day>."""
    return dt.datetime(2025, 3, day, hour, minute, second, tzinfo=dt.UTC)


#: A product as records took it before the one product-id rule (up to 128 characters of any
#: text), which no record can be written with now.
OLD_PRODUCT = "-1+1 " + "x" * 123


def plant_product(store: RecordStore, inspection_id: str, product: str = OLD_PRODUCT) -> None:
    """Sets a stored record's product in SQL, as an older version could have written it."""
    with store.engine.begin() as conn:
        conn.execute(update(InspectionRow).where(InspectionRow.id == inspection_id)
                     .values(product=product))
