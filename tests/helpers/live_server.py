"""Fixtures for end-to-end tests: a real pcb-inspect server on the session's tiny model.

Built on :mod:`helpers.server`, the one harness. Two module-scoped fixtures, so
one model load (5-20 s) serves a whole test module:

* ``live_server``: a ready server with default settings;
* ``live_server_factory``: ``live_server_factory(env={"PCB_API_KEYS": "line:inspect:k"})`` or
  ``live_server_factory(api_keys="line:inspect:k")`` starts another with extra environment variables
  or ``PCB_*`` settings; every server it started stops at the end of the module.

A folder uses them by importing them in its ``conftest.py``::

    from helpers.live_server import live_server, live_server_factory  # noqa: F401

(``tests/`` is on ``sys.path`` because ``tests/conftest.py`` sits in no package.)
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from helpers.server import READY_TIMEOUT_S, ServerProcess, running_server

__all__ = ["LiveServer", "live_server", "live_server_factory", "live_server_running", "metric"]

LiveServer = ServerProcess


def metric(server: ServerProcess, name: str, labels: str = "") -> float:
    """One sample of the server's ``GET /metrics``; 0.0 when absent (see ``ServerProcess``)."""
    return server.metric(name, labels)


def live_server_running(
    weights: Path, log_dir: Path, env: Mapping[str, str] | None = None, **settings: Any
) -> contextlib.AbstractContextManager[ServerProcess]:
    """A ready server for a ``with`` block: :func:`running_server` with the tests' timeout."""
    return running_server(weights, log_dir, READY_TIMEOUT_S, env=env, **settings)


@pytest.fixture(scope="module")
def live_server_factory(
    tiny_weights: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., ServerProcess]]:
    """Starts ready servers: ``factory(env=None, weights=None, **settings)``."""
    log_dir = tmp_path_factory.mktemp("server_logs")
    with contextlib.ExitStack() as stack:

        def start(
            env: Mapping[str, str] | None = None,
            weights: Path | None = None,
            **settings: Any,
        ) -> ServerProcess:
            return stack.enter_context(
                live_server_running(weights or tiny_weights, log_dir, env, **settings)
            )

        yield start


@pytest.fixture(scope="module")
def live_server(live_server_factory: Callable[..., ServerProcess]) -> ServerProcess:
    """A ready server on the tiny model with default settings, shared by a module's tests."""
    return live_server_factory()
