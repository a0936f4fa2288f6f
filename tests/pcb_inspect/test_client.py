"""The line client: ``pcb_inspect.client`` and the ``predict`` / ``batch`` commands.

Retry and backoff are tested against a scripted local HTTP server (fast, no model); the rest
against a real server subprocess on the tiny model (marked ``slow``).
"""

from __future__ import annotations

import asyncio
import base64
import csv
import http.server
import json
import random
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
from pcb_inspect.synth import encode, make_board

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
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = _answer

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
    server = live_server_factory(api_keys='["line-7-key"]')
    sleeps = Sleeps()
    with InspectClient(server.url, api_key="wrong", sleep=sleeps) as client, \
            pytest.raises(InspectError) as info:
        client.predict(boards / "board_0.png")
    assert (info.value.status, info.value.code) == (401, "unauthorized")
    assert sleeps == []
    with InspectClient(server.url, api_key="line-7-key") as client:
        assert client.predict(boards / "board_0.png")["image"]["width"] == BOARD_SIZE

