"""Times at the ends of the calendar: a zone that pushes a time past year 1 or 9999, in a query
or inside a cursor, is a 422 naming the value, never an ``OverflowError`` (500)."""

from __future__ import annotations

import base64
import json

import pytest
from fastapi.testclient import TestClient

from tests.helpers.app import ADMIN, REVIEW, assert_error

EXTREMES = ["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00",
            "0001-01-01T00:00:00Z", "9999-12-31T23:59:59.999999Z"]


@pytest.mark.parametrize("when", EXTREMES)
@pytest.mark.parametrize("name", ["since", "until"])
@pytest.mark.parametrize(("path", "headers"), [
    ("/v1/inspections", REVIEW), ("/v1/inspections/export", ADMIN), ("/v1/stats", REVIEW),
])
def test_an_extreme_time_is_a_422(
    client: TestClient, path: str, headers: dict[str, str], name: str, when: str
) -> None:
    error = assert_error(client.get(path, params={name: when}, headers=headers), 422,
                         "invalid_time")
    assert when[:10] in error["message"], error


def cursor_of(when: str) -> str:
    raw = json.dumps([when, "insp_00000000000000000000000000"], separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


@pytest.mark.parametrize("when", EXTREMES[:2])
def test_a_cursor_holding_an_extreme_time_is_a_422(client: TestClient, when: str) -> None:
    response = client.get("/v1/inspections", params={"cursor": cursor_of(when)}, headers=REVIEW)
    error = assert_error(response, 422, "invalid_cursor")
    assert when[:10] in error["message"], error


def test_an_ordinary_cursor_still_pages(client: TestClient) -> None:
    response = client.get("/v1/inspections", params={"cursor": cursor_of(
        "2030-01-01T00:00:00+02:00")}, headers=REVIEW)
    assert response.status_code == 200, response.text
