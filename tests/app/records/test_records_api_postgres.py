"""The records' HTTP path on PostgreSQL: the service started with ``PCB_DATABASE_URL`` set to a
real PostgreSQL database, and everything an operator does through the API (inspect, query,
page, review, stats, export, delete) read back from it.

The other HTTP tests use SQLite; the store's own tests here cover PostgreSQL below the API.
Skips with the reason where no PostgreSQL server is installed (``conftest.py``).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from app.records import CSV_COLUMNS
from tests.helpers.app import (
    ADMIN,
    INSPECT,
    REVIEW,
    ROLE_KEYS,
    app_client,
    assert_error,
    defect_cut,
    with_thresholds,
)
from tests.helpers.boards import board_png


@pytest.fixture(scope="module")
def database(pg_database: Any) -> str:
    url: str = pg_database()
    return url


@pytest.fixture(scope="module")
def client(tiny_weights: Path, database: str,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    [weights] = with_thresholds(tmp_path_factory.mktemp("model"), tiny_weights,
                                confidence=defect_cut(tiny_weights))
    with app_client(weights, api_keys=ROLE_KEYS, images_keep="all", database_url=database,
                    data_dir=tmp_path_factory.mktemp("pg_api_data")) as c:
        yield c


def inspect(client: TestClient, seed: int, **params: Any) -> dict[str, Any]:
    response = client.post("/predict", params=params, headers=INSPECT,
                           files={"file": ("b.png", board_png(64, 64, seed=seed), "image/png")})
    assert response.status_code == 200, response.text[:500]
    body: dict[str, Any] = response.json()
    return body


def rows_in_postgres(url: str, line: str) -> set[str]:
    """The inspection ids of ``line`` as PostgreSQL itself has them (not through the app)."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            found = conn.execute(sa.text("SELECT id FROM inspections WHERE line = :line"),
                                 {"line": line}).scalars()
            return set(found)
    finally:
        engine.dispose()


def test_the_service_records_into_postgresql(client: TestClient, database: str) -> None:
    info = client.get("/readyz")
    assert info.status_code == 200
    ids = [inspect(client, seed, line="pg-L1", serial=f"SN-{seed}")["inspection_id"]
           for seed in range(1, 6)]
    # Every 200 is a row in PostgreSQL, committed before the answer went out.
    assert rows_in_postgres(database, "pg-L1") == set(ids)

    # Newest first, two a page, the cursor to the next page.
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"line": "pg-L1", "limit": 2}
        if cursor:
            params["cursor"] = cursor
        page = client.get("/v1/inspections", params=params, headers=REVIEW).json()
        seen += [item["id"] for item in page["items"]]
        cursor = page.get("next_cursor")
        if not cursor:
            break
    assert seen == list(reversed(ids))
    one = client.get(f"/v1/inspections/{ids[2]}", headers=REVIEW).json()
    assert (one["serial"], one["line"]) == ("SN-3", "pg-L1")


def test_review_stats_export_and_delete_on_postgresql(client: TestClient, database: str) -> None:
    body = next(b for b in (inspect(client, seed, line="pg-L2") for seed in range(1, 40))
                if len(b["defects"]) >= 2)
    first, second = body["defects"][:2]
    path = f"/v1/inspections/{body['inspection_id']}/review"
    review = {"defects": [{"defect_id": first["id"], "outcome": "confirmed"},
                          {"defect_id": second["id"], "outcome": "false_call"}]}
    made = client.post(path, json=review, headers=REVIEW)
    assert made.status_code == 201, made.text
    assert client.post(path, json=review, headers=REVIEW).status_code == 200  # idempotent
    rec = client.get(f"/v1/inspections/{body['inspection_id']}", headers=REVIEW).json()
    assert rec["reviewed"] is True and [r["reviewer"] for r in rec["reviews"]] == ["alice"]

    stats = client.get("/v1/stats", headers=REVIEW).json()
    rate = next(c for c in stats["classes"] if c["class"] == second["class"])["false_call_rate"]
    assert rate is not None and rate > 0

    export = client.get("/v1/inspections/export", params={"line": "pg-L2"}, headers=ADMIN)
    rows = list(csv.reader(io.StringIO(export.text)))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert body["inspection_id"] in {r[0] for r in rows[1:]}

    assert client.delete(f"/v1/inspections/{body['inspection_id']}",
                         headers=ADMIN).status_code == 204
    assert body["inspection_id"] not in rows_in_postgres(database, "pg-L2")
    assert_error(client.get(f"/v1/inspections/{body['inspection_id']}", headers=REVIEW), 404,
                 "unknown_inspection")
