"""Secure by default: no keys means loopback only, the docs need no CDN, a CSP on every page,
trusted hosts and proxies are opt-in, /metrics needs a key or a port of its own, and errors
name no server paths."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from app.api.routes.docs import DOCS_ASSETS
from app.core.metrics import start_metrics_server
from app.main import create_app
from app.serve import STARTUP_FAILURE, open_bind_refusal, uvicorn_config
from tests.helpers.app import ADMIN, INSPECT, ROLE_KEYS, assert_error, tiny_settings
from tests.helpers.boards import board_png
from tests.helpers.server import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]


def _serve(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PCB_")}
    return subprocess.run(
        [sys.executable, "-m", "pcb_inspect.cli", "serve", *args], cwd=REPO_ROOT,
        env={**clean, **env}, capture_output=True, text=True, timeout=120, check=False,
    )


# --- no keys: loopback only ---------------------------------------------------------------


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.10", "pcb.example"])
def test_serve_without_keys_refuses_a_reachable_address(host: str) -> None:
    # Refused before anything is loaded or bound: one line on stderr, exit 3.
    result = _serve("--host", host)
    assert result.returncode == STARTUP_FAILURE, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert f"PCB_HOST={host}" in lines[0] and "PCB_API_KEYS" in lines[0], lines
    assert "PCB_AUTH=off" in lines[0], lines


def test_serve_without_keys_refuses_a_reachable_address_from_the_environment() -> None:
    result = _serve(PCB_HOST="0.0.0.0")
    assert result.returncode == STARTUP_FAILURE and "PCB_HOST=0.0.0.0" in result.stderr


@pytest.mark.parametrize(("host", "fields", "refused"), [
    ("0.0.0.0", {}, True),
    ("0.0.0.0", {"auth": "off"}, False),  # on purpose
    ("0.0.0.0", {"api_keys": "line:inspect:k1"}, False),
    ("127.0.0.1", {}, False),
    ("::1", {}, False),
    ("localhost", {}, False),
    ("127.0.0.1", {"auth": "off"}, False),
])
def test_which_binds_need_keys(
    tiny_weights: Path, host: str, fields: dict[str, Any], refused: bool
) -> None:
    settings = tiny_settings(tiny_weights, host=host, **fields)
    assert bool(open_bind_refusal(settings)) == refused


@pytest.mark.parametrize(("fields", "why"), [
    ({"auth": "on"}, "PCB_API_KEYS is empty"),
    ({"auth": "off", "api_keys": "line:inspect:k1"}, "PCB_API_KEYS is set"),
    ({"auth": "maybe"}, "auth"),
])
def test_auth_setting_must_agree_with_the_keys(
    tiny_weights: Path, fields: dict[str, Any], why: str
) -> None:
    with pytest.raises(ValidationError, match=re.escape(why)):
        tiny_settings(tiny_weights, **fields)


def test_serve_names_a_contradictory_auth_setting_in_one_line() -> None:
    result = _serve(PCB_AUTH="on", PCB_HOST="127.0.0.1")
    assert result.returncode == STARTUP_FAILURE
    assert result.stderr.strip().count("\n") == 0 and "PCB_AUTH" in result.stderr, result.stderr


# --- /docs and /redoc from local assets, under a CSP ---------------------------------------


class _Refs(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.refs: list[str] = []
        self.inline_scripts = 0
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        for name in ("src", "href", "spec-url"):
            if values.get(name):
                self.refs.append(str(values[name]))
        self._in_script = tag == "script" and not values.get("src")

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.inline_scripts += 1

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False


@pytest.fixture(scope="module")
def pages() -> Iterator[TestClient]:
    # No lifespan: the docs need no model.
    yield TestClient(create_app())


@pytest.mark.parametrize("path", ["/docs", "/redoc"])
def test_docs_load_only_local_assets_with_no_inline_script(pages: TestClient, path: str) -> None:
    page = pages.get(path)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    parser = _Refs()
    parser.feed(page.text)
    assert parser.refs and parser.inline_scripts == 0, (parser.refs, page.text)
    for ref in parser.refs:
        assert "//" not in ref and not ref.startswith(("http:", "https:")), ref
        if ref == "openapi.json":
            continue
        asset = pages.get("/" + ref)  # relative to the page at the root
        assert asset.status_code == 200, ref
        assert len(asset.content) > 100 and asset.headers["x-content-type-options"] == "nosniff"
    csp = page.headers["content-security-policy"]
    directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
    assert directives["default-src"] == "'none'" and directives["script-src"] == "'self'"
    assert directives["connect-src"] == "'self'" and directives["frame-ancestors"] == "'none'"
    # No other origin anywhere in the policy.
    assert not re.search(r"https?:|\*", csp), csp


def test_every_docs_asset_is_served(pages: TestClient) -> None:
    for name, (folder, file, media) in DOCS_ASSETS.items():
        response = pages.get(f"/static/docs/{name}")
        assert response.status_code == 200, name
        assert response.headers["content-type"] == media
        assert response.content == (folder / file).read_bytes()
    assert pages.get("/static/docs/../../main.py").status_code == 404
    assert pages.get("/static/docs/swagger-ui.js.map").status_code == 404


def test_pages_keep_their_own_csp(pages: TestClient) -> None:
    for path in ("/", "/review"):
        csp = pages.get(path).headers["content-security-policy"]
        assert "script-src 'self'" in csp and "http" not in csp, (path, csp)


# --- trusted hosts ---------------------------------------------------------------------------


def test_any_host_is_accepted_by_default(tiny_weights: Path) -> None:
    client = TestClient(create_app(tiny_settings(tiny_weights)))
    assert client.get("/livez", headers={"host": "evil.example"}).status_code == 200


def test_allowed_hosts_refuse_any_other_host_with_400(tiny_weights: Path) -> None:
    settings = tiny_settings(tiny_weights, allowed_hosts="pcb.line.example, *.corp.example")
    client = TestClient(create_app(settings), base_url="http://pcb.line.example")
    assert settings.allowed_hosts == ["pcb.line.example", "*.corp.example"]
    assert client.get("/livez").status_code == 200
    assert client.get("/livez", headers={"host": "a.corp.example:8000"}).status_code == 200
    assert client.get("/livez", headers={"host": "PCB.Line.Example:8000"}).status_code == 200
    for host in ("evil.example", "pcb.line.example.evil.example", "corp.example.evil",
                 "corp.example", "", "[::1]:8000"):
        response = client.get("/livez", headers={"host": host})
        error = assert_error(response, 400, "invalid_host")
        assert repr(host) in error["message"] and "PCB_ALLOWED_HOSTS" in error["message"]
        # Refused before any route: still with a request id.
        assert response.headers.get("x-request-id"), host


@pytest.mark.parametrize("pattern", ["pcb*.example", "*", "*.", "a.*.example", " "])
def test_allowed_host_patterns_are_checked(tiny_weights: Path, pattern: str) -> None:
    if pattern == "*":  # any host: valid, and the same as no setting
        client = TestClient(create_app(tiny_settings(tiny_weights, allowed_hosts=pattern)))
        assert client.get("/livez", headers={"host": "x.example"}).status_code == 200
        return
    with pytest.raises(ValidationError, match="allowed host"):
        tiny_settings(tiny_weights, allowed_hosts=[pattern])


# --- trusted proxies -------------------------------------------------------------------------


def _client_seen(settings: Any, peer: str, forwarded_for: str) -> str:
    """The client address the app sees through uvicorn's own middleware stack for ``settings``
    when ``peer`` sends ``X-Forwarded-For: forwarded_for``."""
    seen: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["client"][0])
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    config = uvicorn_config(app, settings)
    config.load()
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
        "scheme": "http", "path": "/", "raw_path": b"/", "query_string": b"",
        "headers": [(b"host", b"x"), (b"x-forwarded-for", forwarded_for.encode())],
        "client": (peer, 40000), "server": ("127.0.0.1", 8000), "root_path": "",
    }

    async def receive() -> Any:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        pass

    asyncio.run(config.loaded_app(scope, receive, send))
    return seen[0]


def test_proxy_headers_are_trusted_from_no_one_by_default(tiny_weights: Path) -> None:
    # uvicorn alone would trust X-Forwarded-For from any loopback client.
    settings = tiny_settings(tiny_weights)
    assert _client_seen(settings, "127.0.0.1", "203.0.113.7") == "127.0.0.1"


def test_proxy_headers_are_trusted_from_the_configured_proxies(tiny_weights: Path) -> None:
    settings = tiny_settings(tiny_weights, forwarded_allow_ips="10.0.0.0/8")
    assert _client_seen(settings, "10.1.2.3", "203.0.113.7") == "203.0.113.7"
    assert _client_seen(settings, "127.0.0.1", "203.0.113.7") == "127.0.0.1"


# --- /metrics ------------------------------------------------------------------------------


def test_metrics_need_a_key_when_auth_is_on(tiny_weights: Path) -> None:
    client = TestClient(create_app(tiny_settings(tiny_weights, api_keys=ROLE_KEYS)))
    assert_error(client.get("/metrics"), 401, "unauthorized")
    for headers in (INSPECT, ADMIN):
        response = client.get("/metrics", headers=headers)
        assert response.status_code == 200 and "pcb_requests_total" in response.text


def test_metrics_are_open_with_auth_off(tiny_weights: Path) -> None:
    client = TestClient(create_app(tiny_settings(tiny_weights)))
    assert client.get("/metrics").status_code == 200


def test_metrics_on_their_own_port(tiny_weights: Path) -> None:
    port = free_port()
    settings = tiny_settings(tiny_weights, api_keys=ROLE_KEYS, metrics_port=port)
    client = TestClient(create_app(settings))
    # Not on the API's port, with or without a key.
    assert_error(client.get("/metrics", headers=ADMIN), 404, "not_found")
    server = start_metrics_server(settings.metrics.host, port)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            assert r.status == 200
            assert b"pcb_requests_total" in r.read()
    finally:
        server.shutdown()
        server.server_close()
    assert settings.metrics.host == "127.0.0.1"


def test_metrics_port_must_differ_from_the_api_port(tiny_weights: Path) -> None:
    with pytest.raises(ValidationError, match="PCB_METRICS_PORT"):
        tiny_settings(tiny_weights, port=9000, metrics_port=9000)


# --- no server paths in errors ---------------------------------------------------------------


def test_a_damaged_golden_board_is_reported_without_the_servers_path(
    tiny_weights: Path, tmp_path: Path
) -> None:
    data_dir = tmp_path / "secret-location"
    client = TestClient(create_app(tiny_settings(tiny_weights, data_dir=data_dir)))
    put = client.put("/v1/golden-boards/p1", content=board_png(64, 64, seed=2),
                     headers={"content-type": "image/png"})
    assert put.status_code in (200, 201), put.text
    stored = next((data_dir / "golden").iterdir())
    stored.write_bytes(stored.read_bytes()[:-10])  # its PNG no longer matches its header
    got = client.get("/v1/golden-boards/p1", headers={"accept": "image/png"})
    error = assert_error(got, 500, "golden_store_error")
    assert str(tmp_path) not in error["message"] and "secret-location" not in error["message"]
    assert "PCB_DATA_DIR/golden" in error["message"] and "damaged" in error["message"], error
