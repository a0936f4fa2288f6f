"""Helpers of the hostile suite (tests/security): a recorded inspection, unique names."""

from __future__ import annotations

import time
from typing import Any

from fastapi.testclient import TestClient

from tests.helpers.app import INSPECT
from tests.helpers.boards import board_png

#: The board the tiny model finds defects on at the ``cut`` fixture's threshold.
BOARD = board_png(64, 64, seed=1)


def inspect(client: TestClient, data: bytes = BOARD, **params: Any) -> dict[str, Any]:
    """A recorded inspection of ``data`` (200 expected); its JSON."""
    response = client.post("/predict", params=params,
                           files={"file": ("b.png", data, "image/png")}, headers=INSPECT)
    assert response.status_code == 200, response.text[:500]
    body: dict[str, Any] = response.json()
    return body


def unique(prefix: str) -> str:
    return f"{prefix}-{time.monotonic_ns()}"
