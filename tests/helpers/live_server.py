"""Fixtures for end-to-end tests: a real pcb-inspect server on the session's tiny model.

Built on :mod:`helpers.server` (which starts and stops the process). Two module-scoped
fixtures, so one model load (5-20 s) serves a whole test module:

* ``live_server``: a ready server with default settings;
* ``live_server_factory``: ``live_server_factory(env={"PCB_API_KEYS": '["k"]'})`` or
  ``live_server_factory(api_keys='["k"]')`` starts another with extra environment variables
  or ``PCB_*`` settings; every server it started stops at the end of the module.

A folder uses them by importing them in its ``conftest.py``::

    from helpers.live_server import live_server, live_server_factory  # noqa: F401

(``tests/`` is on ``sys.path`` because ``tests/conftest.py`` sits in no package.) A test module
that needs a differently configured server can also use :func:`live_server_running` directly.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import httpx
import pytest

from helpers.server import ServerProcess, start_server

__all__ = ["LiveServer", "live_server", "live_server_factory", "live_server_running", "metric"]

#: Model load takes 5-20 s here, longer while a training job shares the two cores.
READY_TIMEOUT_S = 180.0

LiveServer = ServerProcess


def metric(server: ServerProcess, name: str, labels: str = "") -> float:
    """One sample of the server's ``GET /metrics``; 0.0 when the sample is absent.

    Args:
        server: The running server.
        name: The sample as exposed, e.g. ``"pcb_images_total"``.
        labels: The exact label set as exposed, e.g. ``'verdict="fail"'``; "" for none.
    """
    text = httpx.get(server.url + "/metrics", timeout=10).text
    selector = re.escape(name) + (r"\{" + re.escape(labels) + r"\}" if labels else "")
    match = re.search(rf"^{selector} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


@contextlib.contextmanager
def live_server_running(
    weights: Path,
    log_dir: Path,
    env: Mapping[str, str] | None = None,
    **settings: object,
) -> Iterator[ServerProcess]:
    """A ready server for the block, with extra environment variables and ``PCB_*`` settings.

    Args:
        weights: The ``.keras`` file (``model_card.json`` beside it).
        log_dir: Where the server's log goes (its path is in failure messages).
        env: Extra environment variables, applied last (they win).
        **settings: ``PCB_*`` settings by field name, e.g. ``api_keys='["k"]'``.
    """
    server = start_server(weights, log_dir, env=env, **settings)
    try:
        server.wait_ready(READY_TIMEOUT_S)
        yield server
    finally:
        server.stop()


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
            **settings: object,
        ) -> ServerProcess:
            return stack.enter_context(
                live_server_running(weights or tiny_weights, log_dir, env, **settings)
            )

        yield start


@pytest.fixture(scope="module")
def live_server(live_server_factory: Callable[..., ServerProcess]) -> ServerProcess:
    """A ready server on the tiny model with default settings, shared by a module's tests."""
    return live_server_factory()
