"""The RabbitMQ harness (``tests.helpers.rabbitmq``) and its ports: a new node whose port was
taken before it bound it starts on new ones; a node started again keeps its ports, waiting
for them, and says so when one stays taken."""

from __future__ import annotations

import socket
import threading

import pytest

from tests.helpers import rabbitmq
from tests.helpers.rabbitmq import RabbitBroker, server_or_skip

pytestmark = pytest.mark.slow


def _bound(port: int = 0) -> socket.socket:
    # Bound and not listening, as a client's ephemeral port is.
    sock = socket.socket()
    sock.bind(("127.0.0.1", port))
    return sock


def test_a_new_node_whose_ports_were_taken_starts_on_new_ones(
        monkeypatch: pytest.MonkeyPatch) -> None:
    server_or_skip()
    with _bound() as amqp, _bound() as dist:
        taken = [amqp.getsockname()[1], dist.getsockname()[1]]
        # The first node gets a taken AMQP port, the second a taken distribution port.
        picks: list[int | None] = [taken[0], None, None, taken[1]]
        real_free_port = rabbitmq.free_port
        monkeypatch.setattr(rabbitmq, "free_port",
                            lambda: (picks.pop(0) if picks else None) or real_free_port())
        broker = RabbitBroker()
        try:
            broker.start()
            assert broker.port not in taken and broker.dist_port not in taken
            assert broker.accepts_amqp10()
            log = broker.log.read_text(errors="replace")
        finally:
            broker.close()
    assert f'could_not_start_listener,"127.0.0.1",{taken[0]},' in log
    assert f"dist_port_already_used,{taken[1]}," in log


def test_a_node_started_again_keeps_its_ports(monkeypatch: pytest.MonkeyPatch) -> None:
    server_or_skip()
    broker = RabbitBroker()
    try:
        broker.start()
        port, dist_port = broker.port, broker.dist_port
        broker.stop()
        with _bound(port) as holder:
            # Held for good: a clear error, not a broker on another address.
            monkeypatch.setattr(rabbitmq, "RESTART_PORT_WAIT_S", 0.5)
            with pytest.raises(RuntimeError, match=rf"port 127.0.0.1:{port} is still in use"):
                broker.start()
            # Held for a moment (a client's ephemeral port): it waits, then starts there.
            monkeypatch.setattr(rabbitmq, "RESTART_PORT_WAIT_S", 30.0)
            threading.Timer(1.0, holder.close).start()
            broker.start()
        assert (broker.port, broker.dist_port) == (port, dist_port)
        assert broker.accepts_amqp10()
        # Its first boot on the port succeeded: it waited instead of failing and retrying.
        assert "eaddrinuse" not in broker.log.read_text(errors="replace")
    finally:
        broker.close()
