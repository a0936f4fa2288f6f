"""Free loopback ports for the servers the tests start, and the one policy for when one is lost.

A port picked free here is bound by the server only later (once a model is loaded, a cluster
initialised, a node booted). Meanwhile anything may take it: any outgoing connection on this
machine gets an ephemeral local port from the same range. That is no failure of the server
under test, so every harness (``server``, ``postgresql``, ``rabbitmq``) starts a server whose
port was taken again, at most :data:`PORT_TAKEN_RETRIES` times, on another port; a server
restarted on the port it had waits until that port is free again (:func:`wait_bindable`). Any
other failure fails at once, with the server's log.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import TypeVar

__all__ = ["PORT_TAKEN_RETRIES", "bindable", "free_port", "start_retrying", "wait_bindable"]

T = TypeVar("T")

#: How many times a server whose port was taken before it bound it is started again.
PORT_TAKEN_RETRIES = 2
HOST = "127.0.0.1"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing is bound to right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def bindable(port: int) -> bool:
    """Whether a server could listen on 127.0.0.1:``port`` now.

    With ``SO_REUSEADDR``, as the servers set it (PostgreSQL, Erlang's listeners, uvicorn): a
    connection of a stopped server left in TIME_WAIT does not count, a socket bound to the
    port (listening or connected) does.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
            sock.listen()
        except OSError:
            return False
        return True


def wait_bindable(port: int, timeout_s: float = 30.0) -> bool:
    """Waits until :func:`bindable`; whether it became so within ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not bindable(port):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def start_retrying(start: Callable[[], T], port_taken: Callable[[Exception], bool]) -> T:
    """``start()``; again, at most :data:`PORT_TAKEN_RETRIES` times, while it fails with an
    exception for which ``port_taken`` is true. ``start`` picks (or waits for) its ports itself
    on each call; the last exception, and any other, propagates.
    """
    for retries_left in range(PORT_TAKEN_RETRIES, -1, -1):
        try:
            return start()
        except Exception as exc:
            if not retries_left or not port_taken(exc):
                raise
    raise AssertionError("unreachable")
