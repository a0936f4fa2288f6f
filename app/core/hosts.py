"""``PCB_ALLOWED_HOSTS``: requests whose ``Host`` header names another host get a JSON 400.

Starlette's ``TrustedHostMiddleware`` answers in plain text (and would redirect to ``www.``);
this one matches the same patterns (an exact name, ``*.example.com`` for its subdomains, ``*``
for any) and answers like every other error of the API.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from app.core.errors import error_body
from app.core.metrics import REJECTED
from app.core.network import check_host_pattern

__all__ = ["AllowedHostsMiddleware", "host_of"]


def host_of(header: str) -> str:
    """The host name of a ``Host`` header, without its port (``[::1]:8000`` -> ``::1``)."""
    value = header.strip().lower()
    if value.startswith("["):
        return value[1:value.find("]")] if "]" in value else ""
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


class AllowedHostsMiddleware:
    """Answers 400 ``invalid_host`` to a request for a host not in ``allowed_hosts``."""

    def __init__(self, app: ASGIApp, allowed_hosts: Sequence[str]) -> None:
        self.app = app
        self.patterns = [check_host_pattern(p) for p in allowed_hosts]
        self.any = "*" in self.patterns

    def allows(self, host: str) -> bool:
        """Whether ``host`` (a name, no port) matches a pattern."""
        return bool(host) and (self.any or any(
            host == p or (p.startswith("*.") and host.endswith(p[1:])) for p in self.patterns))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        header = Headers(scope=scope).get("host", "")
        if self.allows(host_of(header)):
            await self.app(scope, receive, send)
            return
        REJECTED.labels(reason="invalid_host").inc()
        body = json.dumps(error_body(
            "invalid_host",
            f"This service does not answer for host {header[:100]!r}; expected one of "
            f"{', '.join(self.patterns)} (PCB_ALLOWED_HOSTS).",
        )).encode()
        await send({"type": "http.response.start", "status": 400, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
        ]})
        await send({"type": "http.response.body", "body": body})
