"""The line client: ``pcb_inspect.client`` and the ``predict`` / ``batch`` / ``golden`` commands.

Retry, backoff and the requests the client builds are tested against a scripted local HTTP
server (fast, no model); the rest against a real server subprocess on the tiny model (marked
``slow``), golden boards against a tiny pair model.
"""

from __future__ import annotations

import asyncio
import base64
import csv
import http.server
import json
import random
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from helpers.live_server import metric
from helpers.server import ServerProcess, free_port

from pcb_inspect.cli import main as cli_main
from pcb_inspect.client import (
    AsyncInspectClient,
    InspectClient,
    InspectError,
    parse_retry_after,
)
from training.synth import encode, make_board

BOARD_SIZE = 320  # 36 tiles of the 64 px tiny model: well under a second per board


# --- a scripted HTTP server ------------------------------------------------------------------


@dataclass
class Reply:
    status: int
    body: Any = None  # dict/list: JSON; bytes: as is
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Seen:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes

    @property
    def n_files(self) -> int:
        return self.body.count(b'filename="')

    def fields(self) -> list[str]:
        """The multipart field names, in order."""
        return [m.decode() for m in re.findall(rb'(?<!file)name="([^"]+)"', self.body)]


class ScriptedServer:
    """Answers each path with its scripted replies in order (the last one repeats)."""

    def __init__(self, script: dict[str, list[Reply]]) -> None:
        self.script = {path: list(replies) for path, replies in script.items()}
        self.seen: list[Seen] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                path, _, query = self.path.partition("?")
                outer.seen.append(Seen(self.command, path, query, dict(self.headers), body))
                replies = outer.script.get(path) or [Reply(404, {"error": {
                    "code": "not_found", "message": f"no script for {path}"}})]
                reply = replies.pop(0) if len(replies) > 1 else replies[0]
                payload = (
                    reply.body if isinstance(reply.body, bytes)
                    else json.dumps(reply.body).encode()
                )
                self.send_response(reply.status)
                if not isinstance(reply.body, bytes):
                    self.send_header("Content-Type", "application/json")
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                if reply.status != 204:
                    self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if reply.status != 204:
                    self.wfile.write(payload)

            do_GET = do_POST = do_PUT = do_DELETE = _answer

            def log_message(self, format: str, *args: Any) -> None:
                pass  # keep the test output clean

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    def __enter__(self) -> ScriptedServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


def _error(status: int, code: str, message: str, **headers: str) -> Reply:
    return Reply(status, {"error": {"code": code, "message": message}}, dict(headers))


def _fake_result(verdict: str = "pass", defects: int = 0) -> dict[str, Any]:
    return {
        "image": {"width": 64, "height": 64},
        "model": {"name": "fake", "version": "1"},
        "defects": [
            {"id": i + 1, "class": "short", "confidence": 0.9, "bbox": [1, 1, 5, 5],
             "area_px": 16, "area_mm2": 0.007, "centroid": [2.5, 2.5]}
            for i in range(defects)
        ],
        "summary": {"defect_count": defects, "defect_area_px": 16 * defects,
                    "defect_area_mm2": 0.007 * defects, "defect_area_ratio": 0.0,
                    "by_class": {"open": 0, "short": defects}, "verdict": verdict},
        "mask": None, "params": {}, "timings_ms": {},
    }


class Sleeps(list[float]):
    """A sleep function that records the delays instead of waiting."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


# --- retry and backoff (scripted server) -----------------------------------------------------


def test_503_with_retry_after_is_retried_after_the_given_delay() -> None:
    busy = _error(503, "overloaded", "at capacity", **{"Retry-After": "2"})
    script = {"/predict": [busy, busy, Reply(200, _fake_result())]}
    sleeps = Sleeps()
    with ScriptedServer(script) as server, InspectClient(
        server.url, retries=5, backoff=0.01, sleep=sleeps
    ) as client:
        result = client.predict(b"\x89PNG fake")
    assert result["summary"]["verdict"] == "pass"
    assert [s.path for s in server.seen] == ["/predict"] * 3
    # Retry-After (2 s) is a floor: the jitter (at most 0.01 * 2**attempt) is below it.
    assert sleeps == [2.0, 2.0]
    # The same bytes went out every time: the image is read once, resent on each try.
    assert all(b"\r\n\r\n\x89PNG fake\r\n" in s.body for s in server.seen)


def test_retry_after_is_capped_by_max_backoff() -> None:
    busy = _error(503, "not_ready", "loading", **{"Retry-After": "3600"})
    sleeps = Sleeps()
    with ScriptedServer({"/v1/model": [busy, Reply(200, {"classes": []})]}) as server, \
            InspectClient(server.url, max_backoff=7, sleep=sleeps) as client:
        client.model_info()
    assert sleeps == [7]


def test_429_is_retried_and_the_error_raised_once_retries_are_spent() -> None:
    limited = _error(429, "too_many_requests", "slow down")
    sleeps = Sleeps()
    with ScriptedServer({"/predict": [limited]}) as server, InspectClient(
        server.url, retries=3, backoff=0.1, sleep=sleeps
    ) as client, pytest.raises(InspectError) as info:
        client.predict(b"x")
    assert len(server.seen) == 4  # the first try and 3 retries
    assert len(sleeps) == 3
    assert (info.value.status, info.value.code, info.value.message) == (
        429, "too_many_requests", "slow down")


@pytest.mark.parametrize("status", [400, 401, 413, 415, 422, 500, 504])
def test_other_errors_are_not_retried_and_keep_the_api_code(status: int) -> None:
    sleeps = Sleeps()
    with ScriptedServer({"/predict": [_error(status, "some_code", "what went wrong")]}) as server, \
            InspectClient(server.url, sleep=sleeps) as client, \
            pytest.raises(InspectError) as info:
        client.predict(b"x")
    assert len(server.seen) == 1
    assert sleeps == []
    assert (info.value.status, info.value.code, info.value.message) == (
        status, "some_code", "what went wrong")


def test_connection_errors_are_retried_then_raised_without_status() -> None:
    sleeps = Sleeps()
    # Nothing listens on a port that was just free.
    with InspectClient(f"http://127.0.0.1:{free_port()}", retries=2, sleep=sleeps) as client, \
            pytest.raises(InspectError) as info:
        client.predict(b"x")
    assert len(sleeps) == 2
    assert info.value.status is None
    assert info.value.code == "connection_error"


def test_backoff_grows_exponentially_with_full_jitter_up_to_the_cap() -> None:
    class Top(random.Random):
        def uniform(self, a: float, b: float) -> float:
            return b  # the top of each jitter range

    client = InspectClient("http://x", backoff=0.5, max_backoff=5, rng=Top())
    assert [client.retry_delay(i) for i in range(6)] == [0.5, 1, 2, 4, 5, 5]
    client.close()
    with InspectClient("http://x", backoff=1, max_backoff=8) as client:
        delays = [client.retry_delay(3) for _ in range(200)]
    assert 0 <= min(delays) and max(delays) <= 8
    assert len(set(delays)) > 100, "full jitter: the delays should be spread out"


def test_a_proxy_error_page_becomes_a_readable_error() -> None:
    page = Reply(502, b"<html><body><h1>502 Bad Gateway</h1></body></html>",
                 {"Content-Type": "text/html"})
    with ScriptedServer({"/predict": [page]}) as server, InspectClient(server.url) as client, \
            pytest.raises(InspectError) as info:
        client.predict(b"x")
    assert (info.value.status, info.value.code) == (502, "http_502")
    assert "502 Bad Gateway" in info.value.message


def test_api_key_query_and_file_name_are_sent(tmp_path: Path) -> None:
    board = tmp_path / "board 7.png"
    board.write_bytes(b"\x89PNG fake")
    with ScriptedServer({"/predict": [Reply(200, _fake_result())]}) as server, \
            InspectClient(server.url, api_key="s3cret") as client:
        client.predict(board, mask="rle", threshold=0.25, min_area_px=3)
    seen = server.seen[0]
    assert seen.headers["X-API-Key"] == "s3cret"
    assert sorted(seen.query.split("&")) == ["mask=rle", "min_area_px=3", "threshold=0.25"]
    assert b'filename="board 7.png"' in seen.body


def test_health_is_false_when_unreachable_or_not_ready() -> None:
    with InspectClient(f"http://127.0.0.1:{free_port()}", retries=0) as client:
        assert client.health() is False
    with ScriptedServer({"/readyz": [_error(503, "not_ready", "loading")]}) as server, \
            InspectClient(server.url) as client:
        assert client.health() is False
        assert len(server.seen) == 1  # a probe answers now: no retries


def test_async_client_retries_like_the_sync_one() -> None:
    busy = _error(503, "overloaded", "busy", **{"Retry-After": "1"})
    sleeps: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        sleeps.append(seconds)

    async def go(url: str) -> dict[str, Any]:
        async with AsyncInspectClient(url, backoff=0.01, sleep=fake_sleep) as client:
            return await client.predict_batch([b"a", ("b.png", b"b")])

    body = {"count": 2, "succeeded": 2, "failed": 0, "results": []}
    with ScriptedServer({"/predict/batch": [busy, Reply(200, body)]}) as server:
        assert asyncio.run(go(server.url)) == body
    assert sleeps == [1.0]
    assert server.seen[-1].n_files == 2


def _attempts(client_kind: str, url: str) -> tuple[int, list[float], InspectError]:
    """Calls ``model_info`` once with a sync or async client; the error, sleeps and tries."""
    sleeps: list[float] = []
    kwargs: dict[str, Any] = {"retries": 2, "backoff": 0.01, "rng": random.Random(1)}

    async def go() -> None:
        async def fake_sleep(seconds: float) -> None:
            sleeps.append(seconds)

        async with AsyncInspectClient(url, sleep=fake_sleep, **kwargs) as client:
            await client.model_info()

    with pytest.raises(InspectError) as info:
        if client_kind == "async":
            asyncio.run(go())
        else:
            with InspectClient(url, sleep=sleeps.append, **kwargs) as client:
                client.model_info()
    return len(sleeps) + 1, sleeps, info.value


@pytest.mark.parametrize("client_kind", ["sync", "async"])
@pytest.mark.parametrize(("reply", "tries"), [
    (_error(503, "overloaded", "busy", **{"Retry-After": "0.5"}), 3),
    (_error(429, "too_many_requests", "slow down"), 3),
    (_error(503, "pair_model_unavailable", "none loaded"), 1),
    (_error(500, "model_error", "boom"), 1),
    (_error(404, "not_found", "no"), 1),
])
def test_one_retry_policy_decides_for_both_clients(
    client_kind: str, reply: Reply, tries: int
) -> None:
    with ScriptedServer({"/v1/model": [reply]}) as server:
        attempts, sleeps, error = _attempts(client_kind, server.url)
    assert attempts == len(server.seen) == tries
    assert error.status == reply.status
    if "Retry-After" in reply.headers:
        assert sleeps == [0.5, 0.5]


def test_parse_retry_after() -> None:
    now = datetime(2025, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after("5") == 5.0
    assert parse_retry_after(" 1.5 ") == 1.5
    assert parse_retry_after("-3") == 0.0
    assert parse_retry_after(format_datetime(now + timedelta(seconds=30), usegmt=True),
                             now=now) == 30.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("nan") is None


def test_client_arguments_are_validated() -> None:
    with pytest.raises(ValueError, match="got 'localhost:8000'"):
        InspectClient("localhost:8000")
    with pytest.raises(ValueError, match="retries must be >= 0; got -1"):
        InspectClient("http://x", retries=-1)
    with InspectClient("http://x") as client, pytest.raises(ValueError, match="empty"):
        client.predict_batch([])


# --- golden boards: the requests the client builds (scripted server) --------------------------


def _golden_meta(product: str = "A17-top") -> dict[str, Any]:
    return {"product": product, "width": 64, "height": 48, "sha256": "ab" * 32,
            "created": "2026-11-27T10:00:00Z"}


def test_predict_sends_the_golden_board_as_a_second_file_or_the_product_as_a_query() -> None:
    with ScriptedServer({"/predict": [Reply(200, _fake_result())]}) as server, \
            InspectClient(server.url) as client:
        client.predict(("board.png", b"BOARD"), golden=b"GOLDEN")
        client.predict(("board.png", b"BOARD"), product="A17-top", threshold=0.3)
        # template= is the older name of golden=, still accepted.
        client.overlay(("board.png", b"BOARD"), template=("g.png", b"GOLDEN"))
        client.mask_png(("board.png", b"BOARD"), product="A17-top")
    upload, stored, overlay, mask = server.seen
    assert upload.fields() == ["file", "template"]
    # "template" is the field every server version reads.
    assert b'name="template"; filename="golden"' in upload.body
    assert b"\r\n\r\nGOLDEN\r\n" in upload.body
    assert "product" not in upload.query
    assert stored.fields() == ["file"]
    assert sorted(stored.query.split("&")) == ["mask=none", "product=A17-top", "threshold=0.3"]
    assert overlay.fields() == ["file", "template"] and "render=overlay" in overlay.query
    assert "product=A17-top" in mask.query and mask.headers["Accept"] == "image/png"


def test_golden_and_product_together_are_refused_before_any_upload() -> None:
    with ScriptedServer({}) as server, InspectClient(server.url) as client:
        with pytest.raises(ValueError, match="not both; got golden and product='A17'"):
            client.predict(b"board", golden=b"golden", product="A17")
        with pytest.raises(ValueError, match="not both; got golden and product='A17'"):
            client.predict(b"board", template=b"golden", product="A17")
        with pytest.raises(ValueError, match=r"golden= \(template= is its older name\)"):
            client.overlay(b"board", golden=b"golden", template=b"golden")
        with pytest.raises(ValueError, match=r"product must be a non-empty id without '/'.*"
                                             r"got 'a/b'"):
            client.predict(b"board", product="a/b")
        with pytest.raises(ValueError, match="got ''"):
            client.get_golden_board("")
        with pytest.raises(TypeError, match="golden must be a path, bytes.*got int"):
            client.predict(b"board", golden=7)  # type: ignore[arg-type]
    assert server.seen == []


def test_golden_board_methods_use_the_documented_routes() -> None:
    script = {
        "/v1/golden-boards/A17-top": [Reply(201, _golden_meta()), Reply(200, _golden_meta())],
        "/v1/golden-boards": [Reply(200, {"count": 2, "boards": [_golden_meta(),
                                                                  _golden_meta("B2")]})],
    }
    with ScriptedServer(script) as server, InspectClient(server.url, api_key="k") as client:
        first = client.put_golden_board("A17-top", ("golden.png", b"GOLDEN"))
        assert first["replaced"] is False and first["product"] == "A17-top"
        assert client.put_golden_board("A17-top", b"GOLDEN")["replaced"] is True
        assert [b["product"] for b in client.list_golden_boards()] == ["A17-top", "B2"]
        assert client.get_golden_board("A17-top")["width"] == 64
    put, _, listed, got = server.seen
    assert (put.method, put.path, put.fields()) == ("PUT", "/v1/golden-boards/A17-top", ["file"])
    assert put.headers["X-API-Key"] == "k"
    assert (listed.method, listed.path) == ("GET", "/v1/golden-boards")
    assert (got.method, got.headers["Accept"]) == ("GET", "application/json")


def test_golden_board_png_and_delete() -> None:
    png = b"\x89PNG\r\n\x1a\n fake"
    script = {"/v1/golden-boards/A17": [
        Reply(200, png, {"Content-Type": "image/png"}), Reply(204, b""),
        _error(404, "unknown_product", "no golden board is stored for product 'A17'"),
    ]}
    with ScriptedServer(script) as server, InspectClient(server.url) as client:
        assert client.golden_board_png("A17") == png
        assert client.delete_golden_board("A17") is None
        with pytest.raises(InspectError) as info:
            client.delete_golden_board("A17")
    assert (info.value.status, info.value.code) == (404, "unknown_product")
    assert [(s.method, s.headers.get("Accept")) for s in server.seen[:2]] == [
        ("GET", "image/png"), ("DELETE", "*/*")]


@pytest.mark.parametrize("body", [
    [{"product": "A"}],
    {"count": 1, "boards": [{"product": "A"}]},
])
def test_golden_board_list_is_read_bare_or_wrapped(body: Any) -> None:
    with ScriptedServer({"/v1/golden-boards": [Reply(200, body)]}) as server, \
            InspectClient(server.url) as client:
        assert client.list_golden_boards() == [{"product": "A"}]


def test_an_unexpected_golden_board_list_names_what_came() -> None:
    with ScriptedServer({"/v1/golden-boards": [Reply(200, {"items": []})]}) as server, \
            InspectClient(server.url) as client, pytest.raises(InspectError) as info:
        client.list_golden_boards()
    assert info.value.code == "unexpected_response"
    assert "expected an object with a 'boards' list" in info.value.message
    assert "got ['items']" in info.value.message


def test_pair_model_unavailable_is_not_retried() -> None:
    # A 503 that waiting does not cure: the service has no golden-board model loaded.
    missing = _error(503, "pair_model_unavailable", "no pair model", **{"Retry-After": "1"})
    sleeps = Sleeps()
    with ScriptedServer({"/predict": [missing]}) as server, \
            InspectClient(server.url, sleep=sleeps) as client, \
            pytest.raises(InspectError) as info:
        client.predict(b"board", golden=b"golden")
    assert len(server.seen) == 1 and sleeps == []
    assert info.value.code == "pair_model_unavailable"


def test_async_client_golden_boards_and_reference() -> None:
    async def go(url: str) -> tuple[Any, ...]:
        async with AsyncInspectClient(url) as client:
            return (
                await client.put_golden_board("A17", b"GOLDEN"),
                await client.list_golden_boards(),
                await client.get_golden_board("A17"),
                await client.golden_board_png("A17"),
                await client.predict(b"board", product="A17"),
                await client.predict_batch([b"a", b"b"], product="A17"),
                await client.delete_golden_board("A17"),
            )

    script = {
        "/v1/golden-boards/A17": [
            Reply(201, _golden_meta("A17")), Reply(200, _golden_meta("A17")),
            Reply(200, b"PNG"), Reply(204, b""),
        ],
        "/v1/golden-boards": [Reply(200, {"count": 1, "boards": [_golden_meta("A17")]})],
        "/predict": [Reply(200, _fake_result())],
        "/predict/batch": [Reply(200, {"count": 2, "results": []})],
    }
    with ScriptedServer(script) as server:
        put, listed, meta, png, result, batch, deleted = asyncio.run(go(server.url))
    assert put["replaced"] is False and listed[0]["product"] == meta["product"] == "A17"
    assert png == b"PNG" and deleted is None
    assert result["summary"]["verdict"] == "pass" and batch["count"] == 2
    predict = next(s for s in server.seen if s.path == "/predict")
    batch_seen = next(s for s in server.seen if s.path == "/predict/batch")
    assert "product=A17" in predict.query and "product=A17" in batch_seen.query


def test_golden_commands_against_the_scripted_server(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    golden = tmp_path / "golden.png"
    golden.write_bytes(b"\x89PNG fake golden")
    script = {
        "/v1/golden-boards/A17": [
            Reply(201, _golden_meta("A17")), Reply(200, b"\x89PNG out",
                                                    {"Content-Type": "image/png"}),
            Reply(204, b""),
        ],
        "/v1/golden-boards": [Reply(200, {"count": 1, "boards": [_golden_meta("A17")]})],
    }
    with ScriptedServer(script) as server:
        url = ["--url", server.url]
        assert cli_main(["golden", "put", "A17", str(golden), *url]) == 0
        assert "Stored the golden board of A17: 64×48 px" in capsys.readouterr().out
        assert cli_main(["golden", "list", *url]) == 0
        listed = capsys.readouterr().out
        assert "A17" in listed and "64×48" in listed and "abababababab" in listed
        out = tmp_path / "sub" / "a17.png"
        assert cli_main(["golden", "get", "A17", "-o", str(out), *url]) == 0
        assert out.read_bytes() == b"\x89PNG out"
        assert cli_main(["golden", "delete", "A17", *url]) == 0
        assert "Deleted the golden board of A17" in capsys.readouterr().out
        # A file that is not there fails before any request, naming the file.
        seen = len(server.seen)
        assert cli_main(["golden", "put", "A17", str(tmp_path / "nope.png"), *url]) == 2
        assert "nope.png" in capsys.readouterr().err
        assert len(server.seen) == seen
    # The two ways to give a golden board exclude each other on the command line too (and
    # --template is still the older name of --golden).
    with pytest.raises(SystemExit) as info:
        cli_main(["predict", str(golden), "--template", str(golden), "--product", "A17"])
    assert info.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_golden_commands_show_the_warnings_kept_with_the_boards(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COLUMNS", "200")  # one line per row, whatever the terminal
    checked_by = {"name": "pcb-unet", "version": "1.0.0", "mode": "single"}
    warned = {**_golden_meta("A17"), "checked_by": checked_by, "warnings": [
        {"id": 1, "class": "pin_hole", "confidence": 0.91, "bbox": [10, 12, 15, 17]},
        {"id": 2, "class": "short", "confidence": 0.62, "bbox": [30, 8, 34, 20]},
        {"id": 3, "class": "pin_hole", "confidence": 0.55, "bbox": [40, 40, 44, 45]},
    ]}
    unchecked = {**_golden_meta("B2"), "warnings": None, "checked_by": None}
    clean = {**_golden_meta("C3"), "warnings": [], "checked_by": checked_by}
    script = {
        "/v1/golden-boards/A17": [Reply(200, warned)],
        "/v1/golden-boards": [Reply(200, {"count": 4, "boards": [
            warned, unchecked, clean, _golden_meta("D4")]})],  # D4: a server before warnings
    }
    with ScriptedServer(script) as server:
        url = ["--url", server.url]
        assert cli_main(["golden", "list", *url]) == 0
        rows = {line.split()[1]: line for line in capsys.readouterr().out.splitlines()
                if line.split()[1:2] in (["A17"], ["B2"], ["C3"], ["D4"])}
        assert "3 (2 pin_hole, 1 short)" in rows["A17"]
        assert "not checked" in rows["B2"]
        assert rows["C3"].rstrip(" │").endswith("none")
        assert "unknown" in rows["D4"]
        assert cli_main(["golden", "get", "A17", *url]) == 0
        shown = capsys.readouterr().out
        assert "pcb-unet 1.0.0 (single)" in shown
        assert "3 (2 pin_hole, 1 short)" in shown and "short at [30, 8, 34, 20] (0.62)" in shown


# --- batch command against the scripted server -----------------------------------------------


def _model_reply() -> Reply:
    return Reply(200, {"name": "fake", "version": "1", "classes": ["open", "short"]})


def _batch_reply(*items: tuple[int, dict[str, Any] | None]) -> Reply:
    results = []
    for i, (status, result) in enumerate(items):
        item: dict[str, Any] = {"index": i, "filename": f"f{i}", "status": status}
        if status == 200:
            item["result"] = result
        else:
            item["error"] = {"code": "overloaded" if status == 503 else "bad_image",
                             "message": f"status {status}"}
        results.append(item)
    ok = sum(s == 200 for s, _ in items)
    return Reply(200, {"count": len(items), "succeeded": ok, "failed": len(items) - ok,
                       "results": results})


def _folder(tmp_path: Path, n: int) -> Path:
    folder = tmp_path / "boards"
    folder.mkdir()
    for i in range(n):
        (folder / f"b{i}.png").write_bytes(b"\x89PNG fake %d" % i)
    return folder


def test_batch_retries_only_the_files_shed_with_503(tmp_path: Path) -> None:
    folder = _folder(tmp_path, 2)
    out = tmp_path / "r.jsonl"
    script = {
        "/v1/model": [_model_reply()],
        "/predict/batch": [
            _batch_reply((200, _fake_result("fail", 2)), (503, None)),
            _batch_reply((200, _fake_result())),
        ],
    }
    with ScriptedServer(script) as server:
        code = cli_main(["batch", str(folder), "--url", server.url, "--out", str(out)])
    batches = [s for s in server.seen if s.path == "/predict/batch"]
    assert [b.n_files for b in batches] == [2, 1]
    records = {r["path"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert records["b0.png"]["verdict"] == "fail"
    assert records["b0.png"]["defect_count"] == 2
    assert records["b1.png"]["verdict"] == "pass"
    assert code == 1  # a board failed, no errors


def test_batch_splits_a_request_refused_as_too_large(tmp_path: Path) -> None:
    folder = _folder(tmp_path, 2)
    out = tmp_path / "r.jsonl"
    script = {
        "/v1/model": [_model_reply()],
        "/predict/batch": [
            _error(413, "payload_too_large", "body over the limit"),
            _batch_reply((200, _fake_result())),
        ],
    }
    with ScriptedServer(script) as server:
        code = cli_main(["batch", str(folder), "--url", server.url, "--out", str(out)])
    assert [s.n_files for s in server.seen if s.path == "/predict/batch"] == [2, 1, 1]
    assert len(out.read_text().splitlines()) == 2
    assert code == 0


def test_batch_stops_on_a_wrong_api_key_without_recording_anything(tmp_path: Path) -> None:
    folder = _folder(tmp_path, 3)
    out = tmp_path / "r.jsonl"
    script = {"/v1/model": [_error(401, "unauthorized", "A valid API key is required")]}
    with ScriptedServer(script) as server:
        code = cli_main(["batch", str(folder), "--url", server.url, "--out", str(out),
                         "--api-key", "wrong"])
    assert code == 2
    assert [s.path for s in server.seen] == ["/v1/model"]
    assert not out.exists() or out.read_text() == ""


def test_batch_drops_a_torn_last_line_and_redoes_that_file(tmp_path: Path) -> None:
    folder = _folder(tmp_path, 2)
    out = tmp_path / "r.jsonl"
    done = {"path": "b0.png", "status": 200, "verdict": "pass", "defect_count": 0,
            "by_class": {}, "defects": [], "error": None}
    out.write_text(json.dumps(done) + "\n" + '{"path": "b1.png", "stat')  # crashed mid-line
    script = {
        "/v1/model": [_model_reply()],
        "/predict/batch": [_batch_reply((200, _fake_result()))],
    }
    with ScriptedServer(script) as server:
        code = cli_main(["batch", str(folder), "--url", server.url, "--out", str(out)])
    assert code == 0
    assert [s.n_files for s in server.seen if s.path == "/predict/batch"] == [1]
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["path"] for r in lines] == ["b0.png", "b1.png"]


def test_batch_rejects_an_unknown_output_format(tmp_path: Path) -> None:
    folder = _folder(tmp_path, 1)
    code = cli_main(["batch", str(folder), "--url", "http://127.0.0.1:9",
                     "--out", str(tmp_path / "r.txt")])
    assert code == 2


# --- against a real server (slow) ------------------------------------------------------------


def _board_png(seed: int) -> bytes:
    return encode(make_board(seed=seed, size=BOARD_SIZE, n_defects=3).image)


@pytest.fixture(scope="module")
def boards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """5 synthetic boards (one in a subfolder) and one broken file that claims to be a PNG."""
    folder = tmp_path_factory.mktemp("line")
    (folder / "lot2").mkdir()
    for i in range(5):
        target = folder / ("lot2" if i == 4 else "") / f"board_{i}.png"
        target.write_bytes(_board_png(i))
    (folder / "broken.png").write_bytes(b"this is not a PNG, whatever the name says")
    (folder / "notes.txt").write_text("not matched by the pattern")
    return folder


def _png_shape(data: bytes) -> tuple[int, ...]:
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert image is not None, "not a decodable PNG"
    return tuple(image.shape)


@pytest.mark.slow
def test_predict_on_a_synthetic_board(live_server: ServerProcess, boards: Path) -> None:
    board = boards / "board_0.png"
    with InspectClient(live_server.url) as client:
        assert client.health() is True
        info = client.model_info()
        result = client.predict(board, mask="png", min_area_px=4)
        mask = client.mask_png(board, min_area_px=4)
        overlay = client.overlay(board.read_bytes(), min_area_px=4)
    assert info["classes"] == list(result["summary"]["by_class"])
    assert result["image"] == {"width": BOARD_SIZE, "height": BOARD_SIZE}
    assert result["params"]["min_area_px"] == 4
    assert result["summary"]["verdict"] in ("pass", "fail")
    assert result["summary"]["defect_count"] == len(result["defects"])
    assert _png_shape(base64.b64decode(result["mask"]["data"])) == (BOARD_SIZE, BOARD_SIZE)
    assert _png_shape(mask) == (BOARD_SIZE, BOARD_SIZE)
    height, width, _ = _png_shape(overlay)
    assert width == BOARD_SIZE and height > BOARD_SIZE  # the legend below the board


@pytest.mark.slow
def test_predict_errors_carry_the_api_code(live_server: ServerProcess) -> None:
    with InspectClient(live_server.url) as client, pytest.raises(InspectError) as info:
        client.predict(("notes.txt", b"hello"))
    assert info.value.status == 415
    assert info.value.code == "not_an_image"
    assert "not a recognisable image" in info.value.message


@pytest.mark.slow
def test_predict_command_exit_codes_and_outputs(
    live_server: ServerProcess, boards: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    board = str(boards / "board_1.png")
    url = ["--url", live_server.url]
    # A cut no pixel reaches: nothing found, the board passes.
    assert cli_main(["predict", board, *url, "--threshold", "1"]) == 0
    assert "PASS" in capsys.readouterr().out
    # Every pixel over the cut: the random tiny model calls everything a defect.
    code = cli_main(["predict", board, *url, "--threshold", "0", "--json",
                     "--mask-out", str(tmp_path / "masks"),
                     "--overlay-out", str(tmp_path / "overlays")])
    assert code == 1
    line = json.loads(capsys.readouterr().out)
    assert line["file"] == board
    assert line["result"]["summary"]["verdict"] == "fail"
    assert _png_shape((tmp_path / "masks" / "board_1.mask.png").read_bytes()) == (
        BOARD_SIZE, BOARD_SIZE)
    assert (tmp_path / "overlays" / "board_1.overlay.png").stat().st_size > 0
    # One unreadable image among good ones: errors win, exit 2, the error is printed.
    code = cli_main(["predict", board, str(boards / "broken.png"), *url, "--threshold", "1"])
    assert code == 2
    captured = capsys.readouterr()
    assert "broken.png" in captured.err
    assert "415" in captured.err or "400" in captured.err


def _jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_batch_writes_one_line_per_file_and_a_rerun_resumes(
    live_server: ServerProcess, boards: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "results.jsonl"
    args = ["batch", str(boards), "--url", live_server.url, "--out", str(out),
            "--concurrency", "2", "--batch-size", "2"]
    images_before = metric(live_server, "pcb_images_total")
    assert cli_main(args) == 2  # the broken file is an error
    records = _jsonl(out)
    assert len(records) == 6
    by_path = {r["path"]: r for r in records}
    assert set(by_path) == {f"board_{i}.png" for i in range(4)} | {
        "lot2/board_4.png", "broken.png"}
    broken = by_path.pop("broken.png")
    assert broken["status"] in (400, 415)
    assert broken["error"]["code"] and broken["error"]["message"]
    assert broken["verdict"] is None
    for record in by_path.values():
        assert record["status"] == 200 and record["error"] is None
        assert record["verdict"] in ("pass", "fail")
        assert record["defect_count"] == len(record["defects"]) == sum(
            record["by_class"].values())
    assert metric(live_server, "pcb_images_total") == images_before + 5
    summary = capsys.readouterr().out
    assert "errors" in summary and "boards" in summary

    # The rerun finds every file in the results and uploads nothing.
    batches_before = metric(live_server, "pcb_requests_total",
                            'route="/predict/batch",status="200"')
    assert cli_main(args) == 2
    assert len(_jsonl(out)) == 6
    assert metric(live_server, "pcb_images_total") == images_before + 5
    assert metric(live_server, "pcb_requests_total",
                  'route="/predict/batch",status="200"') == batches_before
    assert "6 images" in capsys.readouterr().out


@pytest.mark.slow
def test_batch_writes_csv(live_server: ServerProcess, boards: Path, tmp_path: Path) -> None:
    out = tmp_path / "results.csv"
    args = ["batch", str(boards), "--url", live_server.url, "--out", str(out),
            "--batch-size", "4", "--threshold", "1", "--pattern", "board_*.PNG"]
    assert cli_main(args) == 0  # nothing reaches a cut of 1: every board passes
    with out.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 5
    assert {"path", "status", "verdict", "defect_count", "n_open", "n_short", "error_code"} <= set(
        rows[0])
    assert {r["verdict"] for r in rows} == {"pass"}
    assert {r["n_short"] for r in rows} == {"0"}
    # Resume works from a CSV too: nothing new is written.
    assert cli_main(args) == 0
    assert len(out.read_text().splitlines()) == 1 + 5


@pytest.mark.slow
def test_a_wrong_api_key_is_not_retried(
    live_server_factory: Callable[..., ServerProcess], boards: Path
) -> None:
    server = live_server_factory(api_keys="line-7:inspect:line-7-key")
    sleeps = Sleeps()
    with InspectClient(server.url, api_key="wrong", sleep=sleeps) as client, \
            pytest.raises(InspectError) as info:
        client.predict(boards / "board_0.png")
    assert (info.value.status, info.value.code) == (401, "unauthorized")
    assert sleeps == []
    with InspectClient(server.url, api_key="line-7-key") as client:
        assert client.predict(boards / "board_0.png")["image"]["width"] == BOARD_SIZE



# --- golden boards against a real server with a tiny pair model (slow) ------------------------


@pytest.fixture(scope="module")
def pair_server(
    live_server_factory: Callable[..., ServerProcess], tiny_pair_weights: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> ServerProcess:
    """A server with the tiny single model, a tiny pair model and an empty golden store."""
    return live_server_factory(
        pair_weights_path=str(tiny_pair_weights),
        data_dir=str(tmp_path_factory.mktemp("golden_data")),
    )


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """A board, its golden board (the same design without defects), and another design."""
    folder = tmp_path_factory.mktemp("pair")
    board = make_board(seed=7, size=BOARD_SIZE, n_defects=3)
    paths = folder / "board_7.png", folder / "golden_7.png", folder / "other.png"
    paths[0].write_bytes(encode(board.image))
    paths[1].write_bytes(encode(board.template))
    paths[2].write_bytes(encode(make_board(seed=99, size=BOARD_SIZE, n_defects=0).template))
    return paths


def _check_reference(result: dict[str, Any], source: str, product: str | None) -> None:
    assert result["model"]["mode"] == "pair"
    reference = result["reference"]
    assert (reference["source"], reference["product"]) == (source, product)
    assert re.fullmatch(r"[0-9a-f]{64}", reference["sha256"])
    alignment = reference["alignment"]
    assert set(alignment) >= {"dx", "dy", "rotation_deg", "score"}
    # The golden board is the same drawing without the defects: it sits where the board does.
    assert abs(alignment["dx"]) < 1 and abs(alignment["dy"]) < 1
    assert alignment["score"] > 0.5


@pytest.mark.slow
def test_golden_boards_round_trip_through_the_client(
    pair_server: ServerProcess, pair: tuple[Path, Path, Path]
) -> None:
    board, golden, other = pair
    with InspectClient(pair_server.url) as client:
        assert client.list_golden_boards() == []
        stored = client.put_golden_board("A17-top", golden)
        assert stored["replaced"] is False
        assert (stored["product"], stored["width"], stored["height"]) == (
            "A17-top", BOARD_SIZE, BOARD_SIZE)
        assert client.put_golden_board("A17-top", golden.read_bytes())["replaced"] is True
        listed = client.list_golden_boards()
        assert [b["product"] for b in listed] == ["A17-top"]
        assert set(listed[0]) >= {"product", "width", "height", "sha256", "created"}
        meta = client.get_golden_board("A17-top")
        assert meta["sha256"] == listed[0]["sha256"]
        assert _png_shape(client.golden_board_png("A17-top")) == (BOARD_SIZE, BOARD_SIZE)

        by_product = client.predict(board, product="A17-top", mask="png")
        _check_reference(by_product, "product", "A17-top")
        assert by_product["reference"]["sha256"] == meta["sha256"]
        uploaded = client.predict(board, golden=golden)
        _check_reference(uploaded, "upload", None)
        batch = client.predict_batch([board, board.read_bytes()], product="A17-top")
        assert [item["status"] for item in batch["results"]] == [200, 200]
        _check_reference(batch["results"][1]["result"], "product", "A17-top")
        # Alone, the board still goes to the single model.
        alone = client.predict(board)
        assert alone["model"]["mode"] == "single" and alone["reference"] is None

        client.delete_golden_board("A17-top")
        assert client.list_golden_boards() == []
        for call in (lambda: client.get_golden_board("A17-top"),
                     lambda: client.predict(board, product="A17-top"),
                     lambda: client.delete_golden_board("A17-top")):
            with pytest.raises(InspectError) as info:
                call()
            assert (info.value.status, info.value.code) == (404, "unknown_product")
            assert "A17-top" in info.value.message


@pytest.mark.slow
def test_golden_board_errors_carry_the_api_code(
    pair_server: ServerProcess, live_server: ServerProcess, pair: tuple[Path, Path, Path]
) -> None:
    board, golden, other = pair
    with InspectClient(pair_server.url) as client:
        # Another design: the service refuses to compare rather than report it all as defects.
        with pytest.raises(InspectError) as info:
            client.predict(board, template=other)
        assert (info.value.status, info.value.code) == (422, "alignment_failed")
        assert re.search(r"score", info.value.message)
        with pytest.raises(InspectError) as info:
            client.predict(board, template=("notes.txt", b"not an image"))
        assert info.value.message.startswith("template: ")
        with pytest.raises(InspectError) as info:
            client.put_golden_board("line 7!", golden)
        assert (info.value.status, info.value.code) == (422, "invalid_product")
    sleeps = Sleeps()
    # The default server has no pair model: a clear 503 at once, not five retries.
    with InspectClient(live_server.url, sleep=sleeps) as client, \
            pytest.raises(InspectError) as info:
        client.predict(board, golden=golden)
    assert (info.value.status, info.value.code) == (503, "pair_model_unavailable")
    assert sleeps == []


@pytest.mark.slow
def test_golden_and_reference_commands(
    pair_server: ServerProcess, pair: tuple[Path, Path, Path], tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    board, golden, _ = pair
    url = ["--url", pair_server.url]
    assert cli_main(["golden", "put", "B-2", str(golden), *url]) == 0
    assert f"Stored the golden board of B-2: {BOARD_SIZE}×{BOARD_SIZE} px" in (
        capsys.readouterr().out)
    assert cli_main(["golden", "put", "B-2", str(golden), *url]) == 0
    assert "Replaced the golden board of B-2" in capsys.readouterr().out
    assert cli_main(["golden", "list", *url, "--json"]) == 0
    assert [b["product"] for b in json.loads(capsys.readouterr().out)] == ["B-2"]
    assert cli_main(["golden", "list", *url]) == 0
    assert "B-2" in capsys.readouterr().out
    assert cli_main(["golden", "get", "B-2", *url]) == 0
    assert "sha256" in capsys.readouterr().out
    out = tmp_path / "b2.png"
    assert cli_main(["golden", "get", "B-2", "-o", str(out), *url]) == 0
    assert _png_shape(out.read_bytes()) == (BOARD_SIZE, BOARD_SIZE)
    capsys.readouterr()

    # Inspection against the stored board, and against an uploaded one (tables and JSON).
    assert cli_main(["predict", str(board), *url, "--product", "B-2", "--threshold", "1"]) == 0
    table = capsys.readouterr().out
    assert "golden board: product B-2" in table and "model mode: pair" in table
    assert "score" in table
    code = cli_main(["predict", str(board), *url, "--golden", str(golden), "--json",
                     "--threshold", "1", "--overlay-out", str(tmp_path / "overlays")])
    assert code == 0
    line = json.loads(capsys.readouterr().out)
    _check_reference(line["result"], "upload", None)
    assert (tmp_path / "overlays" / "board_7.overlay.png").stat().st_size > 0
    # A batch against the stored board keeps the alignment in its results.
    folder = tmp_path / "lot"
    folder.mkdir()
    (folder / "b.png").write_bytes(board.read_bytes())
    results = tmp_path / "r.jsonl"
    assert cli_main(["batch", str(folder), *url, "--product", "B-2", "--out", str(results),
                     "--threshold", "1"]) == 0
    (record,) = _jsonl(results)
    assert record["status"] == 200 and record["reference"]["product"] == "B-2"
    capsys.readouterr()

    # Errors: an unknown product stops a batch before any upload; exit 2 with the API code.
    assert cli_main(["batch", str(folder), *url, "--product", "nope", "--out",
                     str(tmp_path / "r2.jsonl")]) == 2
    assert "unknown_product" in capsys.readouterr().err
    assert cli_main(["predict", str(board), *url, "--golden", str(tmp_path / "none.png")]) == 2
    assert "--golden: cannot read" in capsys.readouterr().err

    assert cli_main(["golden", "delete", "B-2", *url]) == 0
    assert "Deleted the golden board of B-2" in capsys.readouterr().out
    assert cli_main(["golden", "delete", "B-2", *url]) == 2
    assert "[404] unknown_product" in capsys.readouterr().err
    assert cli_main(["golden", "list", *url]) == 0
    assert "No golden boards stored" in capsys.readouterr().out
