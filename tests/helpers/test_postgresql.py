"""The PostgreSQL harness (``tests.helpers.postgresql``): a port taken before the server binds
it is replaced; any other failure fails at once, with the server's log."""

from __future__ import annotations

import socket
from pathlib import Path

import psycopg
import pytest

from tests.helpers.ports import free_port
from tests.helpers.postgresql import pg_ctl_or_skip, start_postgresql

pytestmark = pytest.mark.slow


def test_a_port_taken_before_postgresql_binds_it_is_replaced(tmp_path: Path) -> None:
    # Taken twice: by a bound socket, as a client's ephemeral port is (PostgreSQL's bind
    # fails), then by a listening one (mirakuru sees it accept connections and refuses).
    base, executable = pg_ctl_or_skip(tmp_path)
    with socket.socket() as bound, socket.socket() as listening:
        bound.bind(("127.0.0.1", 0))
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        taken = [bound.getsockname()[1], listening.getsockname()[1]]
        ports = iter(taken)
        executor = start_postgresql(executable, base, pick_port=lambda: next(ports, free_port()))
        try:
            assert executor.port not in taken
            with psycopg.connect(host="127.0.0.1", port=executor.port, user="postgres",
                                 dbname="postgres") as conn:
                assert conn.execute("SELECT 1").fetchone() == (1,)
        finally:
            executor.stop()
    assert "Address already in use" in (base / f"pg-{taken[0]}.log").read_text()


def test_any_other_failure_fails_at_once_with_the_log(tmp_path: Path) -> None:
    base, executable = pg_ctl_or_skip(tmp_path)
    with pytest.raises(RuntimeError, match=r"(?s)did not start.*no_such_setting"):
        start_postgresql(executable, base, postgres_options="-c no_such_setting=1")
    assert len(list(base.glob("pg-*.log"))) == 1  # no second try
