"""A 200 always has its record: with neither the database nor the spool able to take one, an
inspection is a 503 ``records_unavailable`` (with ``Retry-After``) and ``/readyz`` is unready
until a record can be written again. ``PCB_RECORDS=false`` still runs without records."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from fastapi.testclient import TestClient

from tests.helpers.app import INSPECT, app_client, assert_error, service_state
from tests.helpers.boards import board_png
from tests.helpers.server import free_port

BOARD = board_png(64, 64, seed=1)


def predict(client: TestClient) -> object:
    return client.post("/predict", headers=INSPECT,
                       files={"file": ("b.png", BOARD, "image/png")})


def batch(client: TestClient) -> object:
    return client.post("/predict/batch", headers=INSPECT,
                       files=[("files", ("b.png", BOARD, "image/png"))] * 2)


def wait_ready(client: TestClient, status: int, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while (got := client.get("/readyz").status_code) != status:
        assert time.monotonic() < deadline, f"/readyz stayed {got}, expected {status}"
        time.sleep(0.2)


def test_no_record_no_200(tiny_weights: Path, tmp_path: Path) -> None:
    # A PostgreSQL that does not answer (nothing listens on the port): records go to the spool.
    url = f"postgresql+psycopg://pcb@127.0.0.1:{free_port()}/pcb"
    with app_client(tiny_weights, api_keys="st:inspect:" + INSPECT["x-api-key"],
                    database_url=url, data_dir=tmp_path) as c:
        spooled = predict(c)
        assert spooled.status_code == 200 and spooled.json()["inspection_id"], spooled.text
        spool = tmp_path / "spool"
        # Now the spool cannot take a record either: its folder is a file.
        shutil.rmtree(spool)
        spool.write_bytes(b"")
        response = predict(c)
        error = assert_error(response, 503, "records_unavailable")
        assert int(response.headers["retry-after"]) >= 1
        assert "record" in error["message"]
        items = batch(c).json()["results"]
        assert [i["error"]["code"] for i in items] == ["records_unavailable"] * 2, items
        assert_error(c.get("/readyz"), 503, "not_ready")
        assert "record" in c.get("/readyz").json()["error"]["message"]
        # The spool can be written again: ready, and every 200 has its record again.
        spool.unlink()
        spool.mkdir()
        wait_ready(c, 200)
        again = predict(c)
        assert again.status_code == 200 and again.json()["inspection_id"], again.text
        assert list(spool.iterdir()), "the record went to the spool"
        assert service_state(c.app).ready  # type: ignore[arg-type]


def test_records_off_still_inspects_without_records(tiny_weights: Path) -> None:
    with app_client(tiny_weights, records=False) as c:
        response = predict(c)
        assert response.status_code == 200 and response.json()["inspection_id"] is None
        assert c.get("/readyz").status_code == 200
