"""CFX through the service: an inspection posted to the API arrives from a real RabbitMQ as a
``UnitsInspected`` (checked against the JSON Schema), a review follows as the verification,
``/readyz`` does not depend on the broker, and the admin route shows the outbox.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.records import RecordStore, default_url, upgrade
from app.records.cfx import inspection_id_of
from app.records.outbox import Outbox
from tests.app.records.factory import make_record
from tests.helpers.app import (
    ADMIN,
    INSPECT,
    REVIEW,
    ROLE_KEYS,
    app_client,
    defect_cut,
    with_thresholds,
)
from tests.helpers.boards import board_png
from tests.helpers.cfx import validate_cfx
from tests.helpers.rabbitmq import RabbitBroker, has_messages, receive, server_or_skip
from tests.helpers.server import running_server, start_server

pytestmark = pytest.mark.slow

BOARD = board_png(64, 64, seed=1)
ADDRESS = "/amq/queue/mes"


@pytest.fixture(scope="module")
def broker() -> Iterator[RabbitBroker]:
    server_or_skip()
    b = RabbitBroker(queues=("mes", "killed"))
    try:
        b.start()
        yield b
    finally:
        b.close()


@pytest.fixture(scope="module")
def client(tiny_weights: Path, broker: RabbitBroker,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    [weights] = with_thresholds(tmp_path_factory.mktemp("model"), tiny_weights,
                                confidence=defect_cut(tiny_weights))
    with app_client(weights, api_keys=ROLE_KEYS,
                    data_dir=tmp_path_factory.mktemp("cfx_data"), cfx_broker_url=broker.url,
                    cfx_address=ADDRESS, cfx_handle="acme.aoi.line1") as c:
        yield c


def _status(client: TestClient) -> dict:
    response = client.get("/v1/admin/cfx", headers=ADMIN)
    assert response.status_code == 200, response.text
    return response.json()


def _wait_status(client: TestClient, ok: object, timeout_s: float = 60) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        status = _status(client)
        if ok(status):  # type: ignore[operator]
            return status
        assert time.monotonic() < deadline, status
        time.sleep(0.2)


def test_inspection_then_review_arrive_from_the_broker(client: TestClient,
                                                       broker: RabbitBroker) -> None:
    result = client.post("/predict", params={"serial": "PANEL-1"}, headers=INSPECT,
                         files={"file": ("b.png", BOARD, "image/png")}).json()
    defects = result["defects"]
    assert defects, "the tiny model finds defects on BOARD at this cut"
    review = {"defects": [{"defect_id": defects[0]["id"], "outcome": "false_call"}]}
    response = client.post(f"/v1/inspections/{result['inspection_id']}/review", json=review,
                           headers=REVIEW)
    assert response.status_code == 201, response.text
    (_, first), (_, second) = receive(broker.url, ADDRESS, 2)
    aoi, human = validate_cfx(first), validate_cfx(second)
    assert aoi["Source"] == "acme.aoi.line1"
    body = aoi["MessageBody"]
    assert inspection_id_of(body["TransactionId"]) == result["inspection_id"]
    (unit,) = body["InspectedUnits"]
    assert unit["UnitIdentifier"] == "PANEL-1"
    assert unit["OverallResult"] == {"pass": "Passed", "fail": "Failed"}[
        result["summary"]["verdict"]]
    found = unit["Inspections"][0]["DefectsFound"]
    assert sorted(d["DefectCode"] for d in found) == sorted(d["class"] for d in defects)
    assert human["MessageBody"]["InspectionMethod"] == "Human"
    assert human["MessageBody"]["Inspector"]["OperatorIdentifier"] == "alice"
    verified = {d["UniqueIdentifier"]: d["Verification"]
                for d in human["MessageBody"]["InspectedUnits"][0]["Inspections"][0]
                ["DefectsFound"]}
    assert sorted(verified.values()).count("DefectRejected") == 1
    assert set(verified) == {d["UniqueIdentifier"] for d in found}
    status = _wait_status(client, lambda s: s["pending"] == 0)
    assert status["enabled"] and status["connected"] and status["published"] >= 2
    assert status["broker"] == f"amqp://127.0.0.1:{broker.port}"  # no credentials shown


def test_broker_down_neither_blocks_inspections_nor_readiness(client: TestClient,
                                                               broker: RabbitBroker) -> None:
    broker.stop()
    try:
        ids = []
        for i in range(3):
            response = client.post("/predict", params={"serial": f"DOWN-{i}"}, headers=INSPECT,
                                   files={"file": ("b.png", BOARD, "image/png")})
            assert response.status_code == 200
            ids.append(response.json()["inspection_id"])
        assert client.get("/readyz").status_code == 200
        status = _wait_status(client, lambda s: s["pending"] == 3 and s["last_error"])
        assert not status["connected"] and status["oldest_pending_age_s"] >= 0
        deadline = time.monotonic() + 30
        while "pcb_cfx_outbox_pending 3.0" not in client.get("/metrics", headers=ADMIN).text:
            assert time.monotonic() < deadline, "the pending gauge never showed 3"
            time.sleep(0.2)
    finally:
        broker.start()
    got = receive(broker.url, ADDRESS, 3, timeout_s=60)
    assert [inspection_id_of(validate_cfx(b)["MessageBody"]["TransactionId"]) for _, b in got] \
        == ids
    _wait_status(client, lambda s: s["pending"] == 0 and s["connected"])


def test_outbox_status_needs_the_admin_role(client: TestClient) -> None:
    assert client.get("/v1/admin/cfx", headers=REVIEW).status_code == 403
    assert client.get("/v1/admin/cfx").status_code == 401


def test_cfx_off_by_default(tiny_weights: Path, tmp_path: Path) -> None:
    with app_client(tiny_weights, data_dir=tmp_path) as c:
        assert c.get("/v1/admin/cfx").json()["enabled"] is False


@pytest.mark.timeout(600)
def test_server_killed_mid_publish_delivers_everything_after_restart(
        tiny_weights: Path, broker: RabbitBroker, tmp_path: Path) -> None:
    """kill -9 of the server while it publishes a backlog: once it runs again every message
    arrives; a message sent twice carries the same UniqueID, and the first copies are in
    order."""
    n, address = 4000, "/amq/queue/killed"
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    url = default_url(data_dir)
    upgrade(url)
    # A backlog, as after a broker outage: written by the server's own store code.
    store = RecordStore(url, cfx_source="acme.aoi.line1")
    try:
        for i in range(0, n, 1000):
            store.add_many([make_record(serial=f"SN-{j}", defects=[])
                            for j in range(i, i + 1000)])
        outbox = Outbox(store.engine)
        settings = {"data_dir": data_dir, "cfx_broker_url": broker.url, "cfx_address": address}
        # Not waiting for readiness: the records, and their publisher, start before the model
        # loads, so the backlog is going out already.
        server = start_server(tiny_weights, tmp_path / "logs", **settings)
        try:
            deadline = time.monotonic() + 120
            while not has_messages(broker, address):
                assert time.monotonic() < deadline and server.proc.poll() is None, server.log()
        finally:
            os.kill(server.pid, signal.SIGKILL)
            server.proc.wait(timeout=30)
        left = outbox.pending()
        # Some reached the broker (maybe before the publisher could mark them: then all are
        # still pending here, and those come twice), not all were marked sent.
        assert left > 0, "the kill came too late: everything was published already"
        with running_server(tiny_weights, tmp_path / "logs2", **settings):
            got = receive(broker.url, address, n, timeout_s=180, idle_s=2.0)
            deadline = time.monotonic() + 60
            while outbox.pending():
                assert time.monotonic() < deadline
                time.sleep(0.1)
        expected = [(uid, body) for _, uid, body, _ in outbox.messages()]
    finally:
        store.close()
    first: dict[str, bytes] = {}
    for mid, body in got:
        assert first.setdefault(mid, body) == body  # a repeat is the same message
    assert list(first) == [uid for uid, _ in expected]
    for body in list(first.values())[::80]:
        validate_cfx(body)
