"""Fixtures of the client tests: a real server on the tiny model (``helpers.live_server``)."""

from __future__ import annotations

from helpers.live_server import live_server, live_server_factory  # noqa: F401
