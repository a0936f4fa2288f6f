"""The line client and the records: ``predict`` sends the board's metadata, ``batch`` writes
each board's ``inspection_id``, and ``export-reviews`` reads a service over its API (``--url``)
or a database (``--database-url``), failing on a wrong value in one line, never a traceback.

The fast tests need no server; the others run against a real server subprocess on the tiny
model (``slow``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from helpers.server import ServerProcess, free_port

from pcb_inspect.cli import main as cli_main
from training.synth import encode, make_board

# --- export-reviews: a wrong value is one line (fast) ---------------------------------------


@pytest.mark.parametrize(("args", "said"), [
    # The old meaning of --url: a database. Named, and pointed at the right flag.
    (["--url", "sqlite:///data/records.db"], "for a records database use --database-url"),
    (["--url", "postgresql+psycopg://u:secret@db/x"], "--database-url"),
    (["--url", "http://"], "expected http://HOST:PORT"),
    (["--database-url", "http://127.0.0.1:8000"], "for a running service use --url"),
    (["--database-url", "nonsense"], "invalid --database-url 'nonsense'"),
    (["--database-url", "foo://bar"], "unsupported database URL"),
    (["--database-url", "sqlite:////nonexistent-dir/records.db"], "no records database at"),
    (["--url", "http://127.0.0.1:8000", "--database-url", "sqlite:///x"], "not both"),
])
def test_a_wrong_source_is_one_line_without_a_traceback(
    args: list[str], said: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli_main(["export-reviews", "--out", str(tmp_path / "out"), *args]) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("pcb-inspect export-reviews: ") and said in lines[0], lines
    assert "secret" not in err


def test_an_unreachable_service_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    assert cli_main(["export-reviews", "--out", str(tmp_path / "o"), "--url", url]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot reach the service" in err, err


# --- against a real server (slow) ------------------------------------------------------------


def _board(folder: Path, name: str, seed: int) -> Path:
    path = folder / name
    path.write_bytes(encode(make_board(seed=seed, size=128, n_defects=3).image))
    return path


@pytest.fixture(scope="module")
def server(live_server_factory: Callable[..., ServerProcess]) -> ServerProcess:
    # Every image kept, so reviewed boards can be exported.
    return live_server_factory(images_keep="all")


@pytest.mark.slow
def test_predict_sends_the_boards_metadata(
    server: ServerProcess, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    board = _board(tmp_path, "b.png", 3)
    code = cli_main(["predict", str(board), "--url", server.url, "--json", "--serial", "SN-42",
                     "--line", "L7", "--station", "AOI-2", "--tag", "night", "--tag", "rework"])
    assert code in (0, 1)
    printed = json.loads(capsys.readouterr().out.splitlines()[0])
    inspection_id = printed["result"]["inspection_id"]
    record = httpx.get(f"{server.url}/v1/inspections/{inspection_id}", timeout=10).json()
    assert (record["serial"], record["line"], record["station"], record["tags"]) == (
        "SN-42", "L7", "AOI-2", ["night", "rework"])


@pytest.mark.slow
def test_batch_results_carry_the_inspection_id(server: ServerProcess, tmp_path: Path) -> None:
    folder = tmp_path / "boards"
    folder.mkdir()
    for i in range(3):
        _board(folder, f"b{i}.png", 10 + i)
    out = tmp_path / "r.jsonl"
    code = cli_main(["batch", str(folder), "--url", server.url, "--out", str(out),
                     "--line", "L9", "--tag", "lot-5"])
    assert code in (0, 1)
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(lines) == 3
    for line in lines:
        record = httpx.get(f"{server.url}/v1/inspections/{line['inspection_id']}",
                           timeout=10).json()
        assert record["line"] == "L9" and record["tags"] == ["lot-5"], record
        assert record["verdict"] == line["verdict"]


@pytest.mark.slow
def test_export_reviews_over_the_api(
    server: ServerProcess, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    board = _board(tmp_path, "r.png", 21)
    with httpx.Client(base_url=server.url, timeout=30) as http:
        answer = http.post("/predict", params={"threshold": 0.0, "min_confidence": 0.0},
                           files={"file": ("r.png", board.read_bytes(), "image/png")}).json()
        inspection_id = answer["inspection_id"]
        first = answer["defects"][0]
        review = {"defects": [{"defect_id": first["id"], "outcome": "confirmed"}],
                  "missed": [{"bbox": [2, 3, 20, 30], "class": "spur"}]}
        made = http.post(f"/v1/inspections/{inspection_id}/review", json=review)
        assert made.status_code in (200, 201), made.text
    out = tmp_path / "export"
    assert cli_main(["export-reviews", "--url", server.url, "--out", str(out)]) == 0
    assert "reviewed boards" in capsys.readouterr().out
    base = out / "PCBData"
    listed = (base / "trainval.txt").read_text()
    assert f"{inspection_id}.jpg" in listed
    image = base / "groupreviews" / "reviews" / f"{inspection_id}_test.jpg"
    assert image.read_bytes()[:3] == b"\xff\xd8\xff"
    boxes = (base / "groupreviews" / "reviews_not" / f"{inspection_id}.txt").read_text()
    assert "2 3 20 30 " in boxes and len(boxes.splitlines()) == 2
