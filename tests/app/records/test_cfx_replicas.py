"""Several replicas on one PostgreSQL outbox publish to a real RabbitMQ: each message once, in
order (the outbox's row locks), whichever replica sends it."""

from __future__ import annotations

import time

import pytest

from app.core.config import Settings
from app.records import RecordStore
from app.records.outbox import Outbox
from app.services.cfx_publisher import AmqpTarget, CfxPublisher
from tests.app.records.factory import make_record
from tests.helpers.cfx import validate_cfx
from tests.helpers.rabbitmq import RabbitBroker, receive, server_or_skip

pytestmark = pytest.mark.slow


def test_three_replicas_publish_each_message_once_in_order(pg_url: str) -> None:
    server_or_skip()
    broker = RabbitBroker(queues=("replicas",))
    stores = [RecordStore(pg_url, cfx_source=f"replica-{i}") for i in range(3)]
    publishers: list[CfxPublisher] = []
    try:
        broker.start()
        target = AmqpTarget.from_settings(Settings(cfx_broker_url=broker.url,
                                                   cfx_address="/amq/queue/replicas"))
        # Small batches, so that the replicas take turns many times.
        publishers = [CfxPublisher(Outbox(s.engine), target, batch=7, poll_s=0.01)
                      for s in stores]
        for p in publishers:
            p.start()
        # Every replica records boards meanwhile.
        for i in range(60):
            stores[i % 3].add(make_record(serial=f"SN-{i:03d}", defects=[]))
        got = receive(broker.url, "/amq/queue/replicas", 60, timeout_s=120, idle_s=2.0)
        outbox = Outbox(stores[0].engine)
        deadline = time.monotonic() + 30
        while outbox.pending():
            assert time.monotonic() < deadline
            time.sleep(0.1)
        published = [p.status().published for p in publishers]
        expected = [uid for _, uid, _, _ in outbox.messages()]
    finally:
        for p in publishers:
            p.close()
        for s in stores:
            s.close()
        broker.close()
    assert [mid for mid, _ in got] == expected  # once each, in the outbox's order
    serials = [validate_cfx(b)["MessageBody"]["InspectedUnits"][0]["UnitIdentifier"]
               for _, b in got]
    assert serials == [f"SN-{i:03d}" for i in range(60)]
    assert sum(published) == 60
