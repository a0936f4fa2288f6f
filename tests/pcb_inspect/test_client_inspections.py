"""The records through the line client: ``list_inspections``, ``get_inspection``, the export,
``review_inspection`` and ``stats`` (sync and async), and ``pcb-inspect inspections``,
``review`` and ``stats``.

The fast tests need no server (a wrong value fails before any request); the others run
against a real server process on the tiny model (``slow``).
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from helpers.server import ServerProcess

from pcb_inspect.cli import main as cli_main
from pcb_inspect.client import (
    MAX_REVIEW_MISSED,
    MAX_REVIEW_OUTCOMES,
    AsyncInspectClient,
    InspectClient,
    InspectError,
)
from training.synth import encode, make_board

#: Well-formed, and never minted: ids start with the time they were made.
NO_SUCH_ID = "insp_" + "0" * 26
#: Nothing listens there: a request that got out would fail with a connection error instead.
NOWHERE = "http://127.0.0.1:9"


# --- a wrong value fails before any request (fast) -------------------------------------------


@pytest.mark.parametrize(("call", "error", "said"), [
    (lambda c: c.list_inspections(limit=0), ValueError,
     "limit must be an integer from 1 to 500; got 0"),
    (lambda c: c.list_inspections(limit=501), ValueError, "got 501"),
    (lambda c: c.list_inspections(limit=True), ValueError, "got True"),
    (lambda c: c.list_inspections(cursor=""), ValueError, "cursor must be the next_cursor"),
    (lambda c: c.list_inspections(since=datetime(2026, 1, 1)), ValueError,
     "since must carry a time zone"),
    (lambda c: c.list_inspections(until=3), TypeError, "until must be a datetime"),
    (lambda c: c.list_inspections(verdict="failed"), ValueError, "got 'failed'"),
    (lambda c: c.list_inspections(reviewed="yes"), TypeError, "reviewed must be a bool"),
    (lambda c: c.list_inspections(tags=["t"] * 33), ValueError, "at most 32 tags; got 33"),
    (lambda c: c.list_inspections(tags=["x" * 129]), ValueError, "tag must have 1 to 128"),
    (lambda c: c.list_inspections(serial=""), ValueError, "serial must have 1 to 128"),
    (lambda c: c.get_inspection("a/b"), ValueError, "inspection_id must be a record's id"),
    (lambda c: c.get_inspection("export"), ValueError, "got 'export'"),
    (lambda c: c.get_inspection(7), TypeError, "inspection_id must be a str"),
    (lambda c: c.export_inspections(format="xlsx"), ValueError, "format must be 'csv' or 'jsonl'"),
    (lambda c: c.review_inspection(NO_SUCH_ID, [{"defect_id": 1, "outcome": "confirmed"}]
                                   * (MAX_REVIEW_OUTCOMES + 1)),
     ValueError, f"defects: at most {MAX_REVIEW_OUTCOMES} entries per review; got 2001"),
    (lambda c: c.review_inspection(NO_SUCH_ID, missed=[{}] * (MAX_REVIEW_MISSED + 1)),
     ValueError, "missed: at most 500"),
    (lambda c: c.review_inspection(NO_SUCH_ID, "confirmed"), TypeError,
     "defects must be a list of objects; got str"),
    (lambda c: c.review_inspection(NO_SUCH_ID, [1]), TypeError, "each entry must be a mapping"),
    (lambda c: c.stats(bucket="week"), ValueError, "bucket must be 'hour' or 'day'; got 'week'"),
])
def test_bad_arguments_fail_before_any_request(
    call: Callable[[InspectClient], Any], error: type[Exception], said: str
) -> None:
    with InspectClient(NOWHERE, retries=0) as client, pytest.raises(error) as info:
        call(client)
    assert said in str(info.value)


def test_an_export_that_cannot_start_is_retried_then_raised() -> None:
    waits: list[float] = []
    with InspectClient(NOWHERE, retries=2, sleep=waits.append) as client:
        out = io.BytesIO()
        with pytest.raises(InspectError) as info:
            client.export_inspections_to(out, format="jsonl", verdict="fail")
    assert (info.value.status, info.value.code) == (None, "connection_error")
    assert len(waits) == 2 and out.getvalue() == b""


@pytest.mark.parametrize(("argv", "said"), [
    (["inspections", "list", "--since", "yesterday"], "expected an ISO 8601 time with a zone"),
    (["inspections", "list", "--since", "2026-12-01T06:00:00"], "expected a time with a zone"),
    (["inspections", "list", "--limit", "501"], "expected an integer from 1 to 500"),
    (["inspections", "list", "--reviewed", "--unreviewed"], "not allowed with argument"),
    (["inspections", "export"], "the following arguments are required: --out"),
    (["review", NO_SUCH_ID, "--reclassify", "3"], "expected N=CLASS"),
    (["review", NO_SUCH_ID, "--missed", "1,2,3=spur"], "expected X0,Y0,X1,Y1=CLASS"),
    (["review", NO_SUCH_ID, "--confirm", "one"], "expected a defect id"),
    (["stats", "--bucket", "week"], "invalid choice: 'week'"),
])
def test_bad_flags_are_refused_by_the_parser(
    argv: list[str], said: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        cli_main([*argv, "--url", NOWHERE])
    assert info.value.code == 2
    assert said in capsys.readouterr().err


@pytest.mark.parametrize(("argv", "said"), [
    (["review", NO_SUCH_ID, "--file", "{missing}"], "No such file"),
    (["review", NO_SUCH_ID, "--file", "{list}"], "expected a JSON object {defects, missed}"),
    (["review", NO_SUCH_ID, "--file", "{numbers}"], "defects must be a list of objects"),
    (["inspections", "list", "--serial", "x" * 129], "serial must have 1 to 128 characters"),
    (["inspections", "get", "a/b"], "inspection_id must be a record's id"),
    (["inspections", "list"], "connection_error"),
])
def test_a_failure_is_one_line_naming_it(
    argv: list[str], said: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COLUMNS", "500")  # rich wraps at the terminal's width
    files = {"missing": tmp_path / "none.json", "list": tmp_path / "list.json",
             "numbers": tmp_path / "numbers.json"}
    files["list"].write_text("[]")
    files["numbers"].write_text('{"defects": [1, 2]}')
    argv = [a.format(**files) for a in argv]
    assert cli_main([*argv, "--url", NOWHERE, "--retries", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and said in err and "Traceback" not in err, err


# --- against a real server (slow) ------------------------------------------------------------


@pytest.fixture(scope="module")
def server(live_server_factory: Callable[..., ServerProcess]) -> ServerProcess:
    return live_server_factory()


@pytest.fixture(scope="module")
def boards(server: ServerProcess) -> list[dict[str, Any]]:
    """Three boards inspected with their metadata, every call reported (oldest first)."""
    results = []
    with InspectClient(server.url) as client:
        for i in range(3):
            png = encode(make_board(seed=30 + i, size=128, n_defects=2).image)
            results.append(client.predict(
                (f"b{i}.png", png), threshold=0.0, min_confidence=0.0, serial=f"SN-{i}",
                line="L1" if i < 2 else "L2", tags=["lot-7"]))
    return results


@pytest.mark.slow
def test_records_page_filter_and_read(server: ServerProcess, boards: list[dict[str, Any]]) -> None:
    ids = [b["inspection_id"] for b in boards]
    with InspectClient(server.url) as client:
        first = client.list_inspections(limit=2, tags=["lot-7"])
        assert [r["id"] for r in first["items"]] == ids[:0:-1]  # newest first
        rest = client.list_inspections(limit=2, tags=["lot-7"], cursor=first["next_cursor"])
        assert [r["id"] for r in rest["items"]] == ids[:1] and rest["next_cursor"] is None
        on_l1 = client.list_inspections(line="L1", since=datetime.now(UTC) - timedelta(hours=1))
        assert {r["id"] for r in on_l1["items"]} == set(ids[:2])
        assert client.list_inspections(until=datetime(2000, 1, 1, tzinfo=UTC))["items"] == []
        record = client.get_inspection(ids[1])
        assert (record["serial"], record["line"], record["reviews"]) == ("SN-1", "L1", [])
        assert len(record["defects"]) == len(boards[1]["defects"])
        with pytest.raises(InspectError) as info:
            client.get_inspection(NO_SUCH_ID)
        assert (info.value.status, info.value.code) == (404, "unknown_inspection")


@pytest.mark.slow
def test_a_review_is_stored_once_and_counted(
    server: ServerProcess, boards: list[dict[str, Any]]
) -> None:
    board = next(b for b in boards if b["defects"])
    call = board["defects"][0]
    missed = [{"bbox": [2, 3, 20, 30], "class": "spur"}]
    with InspectClient(server.url) as client:
        review = client.review_inspection(board["inspection_id"],
                                          [{"defect_id": call["id"], "outcome": "false_call"}],
                                          missed)
        assert review["new_review"] is True and review["inspection_id"] == board["inspection_id"]
        again = client.review_inspection(board["inspection_id"],
                                         [{"defect_id": call["id"], "outcome": "false_call"}],
                                         missed)
        assert again["new_review"] is False and again["id"] == review["id"]
        with pytest.raises(InspectError) as info:
            client.review_inspection(board["inspection_id"],
                                     [{"defect_id": 999, "outcome": "confirmed"}])
        assert (info.value.status, info.value.code) == (422, "unknown_defect")
        assert [r["id"] for r in client.get_inspection(board["inspection_id"])["reviews"]] == [
            review["id"]]
        assert [r["id"] for r in client.list_inspections(reviewed=True)["items"]] == [
            board["inspection_id"]]
        stats = client.stats(since=datetime.now(UTC) - timedelta(hours=1), bucket="hour")
    assert (stats["boards"], stats["reviewed"]) == (3, 1)
    by_class = {c["class"]: c for c in stats["classes"]}
    assert by_class[call["class"]]["false_calls"] == 1 and by_class["spur"]["missed"] >= 1


@pytest.mark.slow
def test_the_export_streams_to_a_file(
    server: ServerProcess, boards: list[dict[str, Any]], tmp_path: Path
) -> None:
    ids = {b["inspection_id"] for b in boards}
    with InspectClient(server.url) as client:
        lines = client.export_inspections(format="jsonl", tags=["lot-7"]).decode().splitlines()
        assert {json.loads(line)["id"] for line in lines} == ids
        out = io.BytesIO()
        written = client.export_inspections_to(out, format="csv", line="L2")
    assert written == len(out.getvalue()) > 0
    rows = list(csv.DictReader(io.StringIO(out.getvalue().decode())))
    assert {r["id"] for r in rows} == {boards[2]["inspection_id"]}


@pytest.mark.slow
def test_the_async_client_reads_the_same(server: ServerProcess,
                                         boards: list[dict[str, Any]]) -> None:
    async def read() -> tuple[Any, Any]:
        async with AsyncInspectClient(server.url) as client:
            return (await client.list_inspections(serial="SN-0"),
                    await client.stats(bucket="day"))

    page, stats = asyncio.run(read())
    assert [r["id"] for r in page["items"]] == [boards[0]["inspection_id"]]
    assert stats["bucket"] == "day" and stats["boards"] == 3


@pytest.mark.slow
def test_the_commands(server: ServerProcess, boards: list[dict[str, Any]], tmp_path: Path,
                      capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    url = ["--url", server.url]
    capsys.readouterr()
    assert cli_main(["inspections", "list", "--tag", "lot-7", "--limit", "2", "--json", *url]) == 0
    page = json.loads(capsys.readouterr().out)
    assert len(page["items"]) == 2 and page["next_cursor"]
    assert cli_main(["inspections", "list", "--line", "L2", *url]) == 0
    assert boards[2]["inspection_id"] in capsys.readouterr().out

    target = boards[2]
    assert cli_main(["inspections", "get", target["inspection_id"], *url]) == 0
    assert "not reviewed" in capsys.readouterr().out
    review = tmp_path / "review.json"
    review.write_text(json.dumps({"missed": [{"bbox": [1, 1, 9, 9], "class": "short"}]}))
    argv = ["review", target["inspection_id"], "--file", str(review), "--missed",
            "10,10,30,30=open", *url]
    assert cli_main(argv) == 0
    assert "Recorded review" in capsys.readouterr().out
    assert cli_main(argv) == 0
    assert "Unchanged" in capsys.readouterr().out
    assert cli_main(["inspections", "get", target["inspection_id"], "--json", *url]) == 0
    (stored,) = json.loads(capsys.readouterr().out)["reviews"]
    assert sorted(m["class"] for m in stored["body"]["missed"]) == ["open", "short"]

    out = tmp_path / "export" / "records.jsonl"
    assert cli_main(["inspections", "export", "--format", "jsonl", "--out", str(out),
                     "--serial", "SN-2", *url]) == 0
    assert [json.loads(x)["id"] for x in out.read_text().splitlines()] == [target["inspection_id"]]
    assert f"bytes of jsonl to {out}" in capsys.readouterr().out

    assert cli_main(["stats", "--json", *url]) == 0
    assert json.loads(capsys.readouterr().out)["boards"] == 3
    assert cli_main(["stats", *url]) == 0
    assert "false-call rate" in capsys.readouterr().out
    assert cli_main(["inspections", "get", NO_SUCH_ID, *url]) == 2
    assert "[404] unknown_inspection" in capsys.readouterr().err
