"""The CFX messages' JSON Schema (docs/cfx), to check every message a test sees against it."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import jsonschema

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "docs" / "cfx" / "UnitsInspected.schema.json"


@functools.cache
def _validator() -> jsonschema.Draft202012Validator:
    schema = json.loads(SCHEMA_PATH.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def validate_cfx(message: str | bytes | dict[str, Any]) -> dict[str, Any]:
    """The envelope, parsed; fails the test (``jsonschema.ValidationError``) if it is not one
    the schema accepts."""
    envelope = json.loads(message) if isinstance(message, str | bytes) else message
    _validator().validate(envelope)
    return envelope
