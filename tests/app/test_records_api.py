"""Issue 13 through the HTTP API: every inspection recorded (with its metadata, image hash,
model and rules), queried, reviewed, counted, exported, and fed back as training data.

Real SQLite databases (a fresh data folder per app) and the tiny real models; the store's own
tests (tests/app/records) cover PostgreSQL, and ``test_records_api_postgres.py`` there this HTTP
path on it.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from app.records import CSV_COLUMNS
from pcb_inspect.classes import CLASS_NAMES
from pcb_inspect.cli import main as cli_main
from tests.helpers.app import (
    ADMIN,
    INSPECT,
    REVIEW,
    ROLE_KEYS,
    app_client,
    assert_error,
    defect_cut,
    tiny_settings,
    with_thresholds,
)
from tests.helpers.boards import board_png, encode
from tests.helpers.server import REPO_ROOT, ServerProcess, free_port, running_server, server_env
from training.synth import make_board as synth_board

BOARD = board_png(64, 64, seed=1)


@pytest.fixture(scope="module")
def cut(tiny_weights: Path) -> float:
    """A confidence cut at which the tiny model finds several defects on BOARD."""
    return defect_cut(tiny_weights)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("records_data")


@pytest.fixture(scope="module")
def client(tiny_weights: Path, tiny_pair_weights: Path, cut: float, data_dir: Path,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    single, pair = with_thresholds(tmp_path_factory.mktemp("models"), tiny_weights,
                                   tiny_pair_weights, confidence=cut)
    with app_client(single, pair_weights_path=pair, api_keys=ROLE_KEYS,
                    images_keep="all", data_dir=data_dir) as c:
        yield c


def unique(prefix: str) -> str:
    return f"{prefix}-{time.monotonic_ns()}"


def inspect(client: TestClient, data: bytes = BOARD, *, form: dict[str, str] | None = None,
            **params: Any) -> Any:
    response = client.post("/predict", params=params, data=form or {},
                           files={"file": ("b.png", data, "image/png")}, headers=INSPECT)
    assert response.status_code == 200, response.text[:500]
    return response


def record(client: TestClient, inspection_id: str) -> dict[str, Any]:
    response = client.get(f"/v1/inspections/{inspection_id}", headers=REVIEW)
    assert response.status_code == 200, response.text[:500]
    body: dict[str, Any] = response.json()
    return body


def metric(client: TestClient, sample: str) -> float:
    text = client.get("/metrics", headers=ADMIN).text
    match = re.search(rf"^{re.escape(sample)} (\S+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


# --- recording ----------------------------------------------------------------------------


def test_an_inspection_is_recorded_with_everything_that_decided_it(
    client: TestClient, tiny_weights: Path, cut: float
) -> None:
    db_before = metric(client, 'pcb_records_total{sink="db"}')
    response = inspect(client, serial="SN-1", line="L1", station="st-3", tags=["a,b", "c"])
    body = response.json()
    inspection_id = body["inspection_id"]
    assert re.fullmatch(r"insp_[0-9A-Z]{26}", inspection_id)
    assert response.headers["x-inspection-id"] == inspection_id
    rec = record(client, inspection_id)
    assert (rec["serial"], rec["line"], rec["station"], rec["product"]) == (
        "SN-1", "L1", "st-3", None)
    assert rec["tags"] == ["a", "b", "c"]
    assert rec["image_sha256"] == hashlib.sha256(BOARD).hexdigest()
    assert (rec["image_bytes"], rec["width"], rec["height"]) == (len(BOARD), 64, 64)
    assert (rec["model_name"], rec["model_version"], rec["model_mode"]) == (
        "tiny-test-unet", "0.0.1-test", "single")
    assert rec["weights_sha256"] == hashlib.sha256(tiny_weights.read_bytes()).hexdigest()
    assert rec["rules"]["threshold"] == cut and rec["rules"]["fail_rule"] == "count"
    assert rec["verdict"] == body["summary"]["verdict"]
    assert [(d["id"], d["class"], d["bbox"]) for d in rec["defects"]] == [
        (d["id"], d["class"], d["bbox"]) for d in body["defects"]]
    assert rec["reviewed"] is False and rec["reviews"] == []
    assert metric(client, 'pcb_records_total{sink="db"}') == db_before + 1


def test_form_fields_and_batches_are_recorded_too(client: TestClient) -> None:
    line = unique("form")
    body = inspect(client, form={"serial": "SN-F", "line": line, "tags": "x, y"}).json()
    rec = record(client, body["inspection_id"])
    assert (rec["serial"], rec["line"], rec["tags"]) == ("SN-F", line, ["x", "y"])

    files = [("files", (f"b{i}.png", board_png(64, 64, seed=i), "image/png")) for i in range(3)]
    batch = client.post("/predict/batch", params={"line": line}, data={"station": "st-b"},
                        files=files, headers=INSPECT)
    assert batch.status_code == 200, batch.text[:300]
    ids = [r["result"]["inspection_id"] for r in batch.json()["results"]]
    assert len(set(ids)) == 3 and "x-inspection-id" not in batch.headers
    for i, inspection_id in enumerate(ids):
        rec = record(client, inspection_id)
        assert (rec["line"], rec["station"]) == (line, "st-b")
        assert rec["image_sha256"] == hashlib.sha256(board_png(64, 64, seed=i)).hexdigest()


def test_png_answers_carry_the_id_in_the_header(client: TestClient) -> None:
    response = client.post("/predict", params={"render": "overlay"}, headers=INSPECT,
                           files={"file": ("b.png", BOARD, "image/png")})
    assert response.headers["content-type"] == "image/png"
    record(client, response.headers["x-inspection-id"])


@pytest.mark.parametrize(("params", "form"), [
    ({"serial": "s" * 129}, {}),
    ({}, {"serial": "bad\x00serial"}),
    ({"line": "L1"}, {"line": "L2"}),
    ({}, {"tags": ",".join(f"t{i}" for i in range(33))}),
    ({"station": ""}, {}),
], ids=["too_long", "control_char", "query_vs_form", "too_many_tags", "empty"])
def test_bad_metadata_is_refused(client: TestClient, params: dict[str, str],
                                 form: dict[str, str]) -> None:
    response = client.post("/predict", params=params, data=form, headers=INSPECT,
                           files={"file": ("b.png", BOARD, "image/png")})
    error = assert_error(response, 422)
    assert error["code"] in ("invalid_metadata", "invalid_request")


# --- query --------------------------------------------------------------------------------


def test_query_filters_and_pages_with_a_cursor(client: TestClient) -> None:
    line = unique("page")
    made = [inspect(client, board_png(64, 64, seed=10 + i), line=line, serial=f"S{i}").json()
            for i in range(5)]
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"line": line, "limit": 2}
        if cursor:
            params["cursor"] = cursor
        page = client.get("/v1/inspections", params=params, headers=REVIEW).json()
        assert len(page["items"]) <= 2
        seen += [item["id"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [m["inspection_id"] for m in reversed(made)]  # newest first, no repeats

    one = client.get("/v1/inspections", params={"line": line, "serial": "S3"}, headers=REVIEW)
    assert [i["serial"] for i in one.json()["items"]] == ["S3"]
    for verdict in ("pass", "fail"):
        got = client.get("/v1/inspections", params={"line": line, "verdict": verdict},
                         headers=REVIEW).json()["items"]
        assert {i["verdict"] for i in got} <= {verdict}
    queue = client.get("/v1/inspections", params={"line": line, "reviewed": "false"},
                       headers=REVIEW).json()["items"]
    assert len(queue) == 5
    future = client.get("/v1/inspections", headers=REVIEW,
                        params={"line": line, "since": "2999-01-01T00:00:00Z"}).json()
    assert future == {"items": [], "next_cursor": None}


@pytest.mark.parametrize(("params", "code"), [
    ({"cursor": "not-a-cursor"}, "invalid_cursor"),
    ({"since": "2025-01-01T00:00:00"}, "invalid_time"),
    ({"limit": 501}, "invalid_request"),
    ({"limit": 0}, "invalid_request"),
    ({"verdict": "maybe"}, "invalid_request"),
])
def test_bad_queries_are_422(client: TestClient, params: dict[str, Any], code: str) -> None:
    assert_error(client.get("/v1/inspections", params=params, headers=REVIEW), 422, code)


def test_unknown_ids_are_404(client: TestClient) -> None:
    for path in ("/v1/inspections/insp_nope", "/v1/inspections/insp_nope/image"):
        assert_error(client.get(path, headers=REVIEW), 404, "unknown_inspection")
    body = {"defects": [], "missed": []}
    assert_error(client.post("/v1/inspections/insp_nope/review", json=body, headers=REVIEW),
                 404, "unknown_inspection")
    assert_error(client.delete("/v1/inspections/insp_nope", headers=ADMIN), 404,
                 "unknown_inspection")


# --- review -------------------------------------------------------------------------------


def defective(client: TestClient, count: int = 3, **params: Any) -> dict[str, Any]:
    """A recorded board with at least ``count`` defects."""
    for seed in range(1, 40):
        body: dict[str, Any] = inspect(client, board_png(64, 64, seed=seed), **params).json()
        if len(body["defects"]) >= count:
            return body
    raise AssertionError(f"no board with {count} defects at this cut")


def false_call_rate(client: TestClient, cls: str) -> float | None:
    stats = client.get("/v1/stats", headers=REVIEW).json()
    rate: float | None = next(c for c in stats["classes"] if c["class"] == cls)[
        "false_call_rate"]
    return rate


def test_review_flow(client: TestClient) -> None:
    body = defective(client)
    d1, d2, d3 = body["defects"][:3]
    other = next(c for c in CLASS_NAMES if c != d3["class"])
    review = {
        "defects": [
            {"defect_id": d1["id"], "outcome": "confirmed"},
            {"defect_id": d2["id"], "outcome": "false_call"},
            {"defect_id": d3["id"], "outcome": "reclassified", "class": other},
        ],
        "missed": [{"bbox": [1, 2, 10, 12], "class": "open"}],
    }
    path = f"/v1/inspections/{body['inspection_id']}/review"
    rate_before = false_call_rate(client, d2["class"])
    false_calls = f'pcb_reviews_total{{class="{d2["class"]}",outcome="false_call"}}'
    counted = metric(client, false_calls)

    first = client.post(path, json=review, headers=REVIEW)
    assert first.status_code == 201, first.text
    made = first.json()
    assert made["reviewer"] == "alice" and made["inspection_id"] == body["inspection_id"]
    # The same review again (its lists in another order): nothing changes.
    again = client.post(path, headers=REVIEW, json={
        "missed": review["missed"], "defects": list(reversed(review["defects"]))})
    assert again.status_code == 200 and again.json() == made
    assert metric(client, false_calls) == counted + 1
    assert metric(client, f'pcb_false_call_rate{{class="{d2["class"]}"}}') > 0

    rec = record(client, body["inspection_id"])
    assert rec["reviewed"] is True and rec["review_id"] == made["id"]
    assert [r["id"] for r in rec["reviews"]] == [made["id"]]
    rate_after = false_call_rate(client, d2["class"])
    assert rate_after is not None and rate_after > (rate_before or 0.0)

    # A different review is kept beside the first, and becomes the current one.
    second = client.post(path, json={"defects": [{"defect_id": d2["id"],
                                                  "outcome": "confirmed"}]}, headers=ADMIN)
    assert second.status_code == 201
    rec = record(client, body["inspection_id"])
    assert [r["id"] for r in rec["reviews"]] == [made["id"], second.json()["id"]]
    assert [r["reviewer"] for r in rec["reviews"]] == ["alice", "boss"]
    assert rec["review_id"] == second.json()["id"]
    queue = client.get("/v1/inspections", params={"reviewed": "true"}, headers=REVIEW)
    assert body["inspection_id"] in [i["id"] for i in queue.json()["items"]]


@pytest.mark.parametrize(("review", "code", "shown"), [
    ({"defects": [{"defect_id": 999, "outcome": "confirmed"}]}, "unknown_defect", "999"),
    ({"defects": [{"defect_id": 1, "outcome": "reclassified", "class": "dust"}]},
     "unknown_class", "'dust'"),
    ({"missed": [{"bbox": [0, 0, 10, 10], "class": "dust"}]}, "unknown_class", "'dust'"),
    ({"missed": [{"bbox": [50, 50, 65, 60], "class": "open"}]}, "box_outside_image",
     "[50, 50, 65, 60]"),
    ({"missed": [{"bbox": [5, 5, 5, 9], "class": "open"}]}, "box_outside_image", "[5, 5, 5, 9]"),
    ({"defects": [{"defect_id": 1, "outcome": "reclassified"}]}, "invalid_request", "class"),
    ({"defects": [{"defect_id": 1, "outcome": "maybe"}]}, "invalid_request", "outcome"),
])
def test_bad_reviews_are_422_with_their_code(client: TestClient, review: dict[str, Any],
                                             code: str, shown: str) -> None:
    body = defective(client, 1)
    path = f"/v1/inspections/{body['inspection_id']}/review"
    error = assert_error(client.post(path, json=review, headers=REVIEW), 422, code)
    assert shown in error["message"]
    assert record(client, body["inspection_id"])["reviews"] == []


def test_stats(client: TestClient) -> None:
    inspect(client)
    stats = client.get("/v1/stats", params={"bucket": "hour"}, headers=REVIEW).json()
    assert stats["bucket"] == "hour" and len(stats["buckets"]) in (24, 25)
    assert stats["boards"] == sum(b["boards"] for b in stats["buckets"]) >= 1
    assert [c["class"] for c in stats["classes"]][:len(CLASS_NAMES)] == list(CLASS_NAMES)
    # Years of days, counted back from today: a fixed start (2000-01-01) would pass
    # MAX_BUCKETS (10,000 days) on 2027-05-19 and turn this into a 422 from then on.
    years_ago = (dt.datetime.now(dt.UTC) - dt.timedelta(days=5 * 365)).isoformat()
    days = client.get("/v1/stats", headers=REVIEW, params={"bucket": "day", "since": years_ago})
    assert days.status_code == 200, days.text
    assert days.json()["boards"] == stats["boards"]
    assert_error(client.get("/v1/stats", headers=REVIEW,
                            params={"since": "2000-01-01T00:00:00Z"}), 422, "too_many_buckets")
    assert_error(client.get("/v1/stats", headers=REVIEW, params={
        "since": "2025-01-02T00:00:00Z", "until": "2025-01-01T00:00:00Z"}), 422, "invalid_time")


# --- roles --------------------------------------------------------------------------------


def test_roles(client: TestClient) -> None:
    inspection_id = inspect(client).json()["inspection_id"]
    review = {"defects": []}
    detail = f"/v1/inspections/{inspection_id}"
    # inspect: inspections and the model, nothing of the records.
    assert client.get("/v1/model", headers=INSPECT).status_code == 200
    for method, path in (("GET", "/v1/inspections"), ("GET", detail), ("GET", "/v1/stats"),
                         ("GET", detail + "/image"), ("POST", detail + "/review")):
        error = assert_error(client.request(method, path, headers=INSPECT, json=review), 403,
                             "forbidden")
        assert "station-1" in error["message"] and "'review'" in error["message"]
    # review: the records, not exports, deletion or golden boards.
    assert client.get("/v1/inspections", headers=REVIEW).status_code == 200
    assert client.post(detail + "/review", json=review, headers=REVIEW).status_code == 201
    assert inspect(client).status_code == 200  # review includes inspect
    for method, path in (("GET", "/v1/inspections/export"), ("DELETE", detail),
                         ("PUT", "/v1/golden-boards/p-roles"),
                         ("DELETE", "/v1/golden-boards/p-roles")):
        assert_error(client.request(method, path, headers=REVIEW), 403, "forbidden")
    # admin: everything.
    put = client.put("/v1/golden-boards/p-roles", headers=ADMIN,
                     files={"file": ("g.png", BOARD, "image/png")})
    assert put.status_code == 201, put.text
    assert client.get("/v1/golden-boards/p-roles", headers=INSPECT).status_code == 200
    assert client.delete("/v1/golden-boards/p-roles", headers=ADMIN).status_code == 204
    assert client.get("/v1/inspections/export", headers=ADMIN).status_code == 200
    assert client.delete(detail, headers=ADMIN).status_code == 204
    assert_error(client.get(detail, headers=ADMIN), 404, "unknown_inspection")
    # No key at all: 401 everywhere.
    for path in ("/v1/inspections", detail, "/v1/stats", "/v1/inspections/export"):
        assert_error(client.get(path), 401, "unauthorized")


# --- export, images -----------------------------------------------------------------------


def test_export_streams_csv_and_jsonl(client: TestClient) -> None:
    line = unique("export")
    ids = {inspect(client, line=line).json()["inspection_id"] for _ in range(3)}
    response = client.get("/v1/inspections/export", params={"line": line}, headers=ADMIN)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/csv")
    assert re.fullmatch(r'attachment; filename="inspections-\d{8}T\d{6}Z\.csv"',
                        response.headers["content-disposition"])
    rows = list(csv.reader(io.StringIO(response.text)))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert {r[0] for r in rows[1:]} == ids
    lines = client.get("/v1/inspections/export", headers=ADMIN,
                       params={"line": line, "format": "jsonl"})
    assert lines.headers["content-type"].startswith("application/x-ndjson")
    assert {json.loads(x)["id"] for x in lines.text.splitlines()} == ids
    assert_error(client.get("/v1/inspections/export", params={"format": "xml"},
                            headers=ADMIN), 422)


def test_kept_image_is_served_as_sent(client: TestClient) -> None:
    inspection_id = inspect(client).json()["inspection_id"]
    image = client.get(f"/v1/inspections/{inspection_id}/image", headers=REVIEW)
    assert image.status_code == 200
    assert image.headers["content-type"] == "image/png" and image.content == BOARD


def test_images_are_kept_by_policy(tiny_weights: Path, tmp_path: Path) -> None:
    with app_client(tiny_weights, images_keep="failed", data_dir=tmp_path) as c:
        passed = c.post("/predict", params={"threshold": 1.0},
                        files={"file": ("b.png", BOARD, "image/png")}).json()
        failed = c.post("/predict", params={"threshold": 0.0, "min_confidence": 0.0},
                        files={"file": ("b.png", board_png(64, 64, seed=5), "image/png")}).json()
        assert (passed["summary"]["verdict"], failed["summary"]["verdict"]) == ("pass", "fail")
        assert_error(c.get(f"/v1/inspections/{passed['inspection_id']}/image"), 404,
                     "image_not_kept")
        kept = c.get(f"/v1/inspections/{failed['inspection_id']}/image")
        assert kept.status_code == 200 and kept.content == board_png(64, 64, seed=5)
        assert c.get(f"/v1/inspections/{passed['inspection_id']}").json()["image_path"] is None
        # Auth off: everything is allowed, and the reviewer is "anonymous".
        review = c.post(f"/v1/inspections/{failed['inspection_id']}/review",
                        json={"defects": [], "missed": []})
        assert review.status_code == 201 and review.json()["reviewer"] == "anonymous"
    assert len(list((tmp_path / "images").rglob("*.png"))) == 1
    assert (tmp_path / "records.db").is_file()


def test_image_retention_runs_in_the_background(tiny_weights: Path, tmp_path: Path) -> None:
    # An image kept 40 days ago (a path as the image store makes them), past the 30-day default.
    digest = hashlib.sha256(b"old board").hexdigest()
    old = tmp_path / "images" / digest[:2] / f"{digest[2:]}.png"
    old.parent.mkdir(parents=True)
    old.write_bytes(b"old board")
    forty_days_ago = time.time() - 40 * 86400
    os.utime(old, (forty_days_ago, forty_days_ago))
    with app_client(tiny_weights, data_dir=tmp_path, images_retention_days=30):
        deadline = time.monotonic() + 30
        while old.exists():
            assert time.monotonic() < deadline, "retention never removed the old image"
            time.sleep(0.2)


def test_records_off_means_no_id_and_no_records(tiny_weights: Path, tmp_path: Path) -> None:
    with app_client(tiny_weights, records=False, data_dir=tmp_path) as c:
        response = c.post("/predict", files={"file": ("b.png", BOARD, "image/png")})
        assert response.status_code == 200
        assert response.json()["inspection_id"] is None
        assert "x-inspection-id" not in response.headers
        assert_error(c.get("/v1/inspections"), 404, "records_disabled")
        assert_error(c.get("/v1/stats"), 404, "records_disabled")
    assert not (tmp_path / "records.db").exists()


# --- durability ---------------------------------------------------------------------------


def test_a_locked_database_spools_and_the_spool_is_replayed(
    tiny_weights: Path, tmp_path: Path
) -> None:
    with app_client(tiny_weights, data_dir=tmp_path) as c:
        # Another connection holds SQLite's write lock: the recorder's commit waits past its
        # 2 s limit, so the record goes to the spool and the answer still comes.
        holder = sqlite3.connect(tmp_path / "records.db", isolation_level=None,
                                 check_same_thread=False)
        holder.execute("BEGIN EXCLUSIVE")
        try:
            first = c.post("/predict", params={"serial": "spooled"},
                           files={"file": ("b.png", BOARD, "image/png")})
            assert first.status_code == 200
            inspection_id = first.json()["inspection_id"]
            assert inspection_id is not None
            assert metric(c, 'pcb_records_total{sink="spool"}') >= 1
            assert any((tmp_path / "spool").glob("records.*.jsonl"))
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        deadline = time.monotonic() + 30
        while c.get(f"/v1/inspections/{inspection_id}").status_code != 200:
            assert time.monotonic() < deadline, "the spooled record was never replayed"
            time.sleep(0.5)
        assert c.get(f"/v1/inspections/{inspection_id}").json()["serial"] == "spooled"


def test_a_database_behind_the_code_stops_startup_in_one_line(
    tiny_weights: Path, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'other.db'}"
    sqlite3.connect(tmp_path / "other.db").close()  # exists, never migrated
    from app.main import create_app

    app = create_app(tiny_settings(tiny_weights, database_url=url, data_dir=tmp_path))
    with pytest.raises(Exception), TestClient(app):  # noqa: B017 - Starlette re-raises as-is
        pass
    error = app.state.service.startup_error
    assert error is not None and "\n" not in error
    assert url in error and "pcb-inspect db upgrade" in error


# --- back into training -------------------------------------------------------------------


def test_export_reviews_writes_what_training_reads(
    client: TestClient, data_dir: Path, tmp_path: Path
) -> None:
    from training.data import load_sample, parse_annotations, read_split

    # A board compared with its product's golden board: exported with it as the template.
    pair = synth_board(seed=1, size=256)
    assert client.put("/v1/golden-boards/p-export", headers=ADMIN,
                      files={"file": ("g.png", encode(pair.template), "image/png")}
                      ).status_code == 201
    golden_id = inspect(client, encode(pair.image), product="p-export", threshold=0.0,
                        min_confidence=0.0).json()["inspection_id"]
    assert client.post(f"/v1/inspections/{golden_id}/review", headers=REVIEW,
                       json={"missed": [{"bbox": [3, 4, 20, 30], "class": "spur"}]}
                       ).status_code == 201
    # A board alone, with every outcome.
    body = defective(client)
    d1, d2, d3 = body["defects"][:3]
    other = next(c for c in CLASS_NAMES if c != d3["class"])
    review = {"defects": [{"defect_id": d1["id"], "outcome": "confirmed"},
                          {"defect_id": d2["id"], "outcome": "false_call"},
                          {"defect_id": d3["id"], "outcome": "reclassified", "class": other}],
              "missed": [{"bbox": [1, 2, 9, 8], "class": "open"}]}
    path = f"/v1/inspections/{body['inspection_id']}/review"
    assert client.post(path, json=review, headers=REVIEW).status_code == 201

    out = tmp_path / "reviews"
    assert cli_main(["export-reviews", "--out", str(out), "--data-dir", str(data_dir)]) == 0
    samples = {s.key: s for s in read_split(out)}

    alone = samples[body["inspection_id"]]
    assert not alone.template_path.exists()
    boxes = {(b.x1, b.y1, b.x2, b.y2, b.class_name)
             for b in parse_annotations(alone.annotation_path)}
    assert boxes == {(*d1["bbox"], d1["class"]), (*d3["bbox"], other), (1, 2, 9, 8, "open")}
    image, mask, _ = load_sample(alone)
    assert image.shape == mask.shape == (64, 64)
    sent = client.get(f"/v1/inspections/{body['inspection_id']}/image", headers=REVIEW)
    original = np.asarray(Image.open(io.BytesIO(sent.content)).convert("L"), dtype=int)
    assert np.abs(image.astype(int) - original).max() <= 16  # JPEG at quality 100

    compared = samples[golden_id]
    assert compared.template_path.is_file()  # the golden board it was compared with
    image, mask, boxes_read = load_sample(compared)
    assert image.shape == (256, 256) and [b.class_name for b in boxes_read] == ["spur"]
    assert mask[4:30, 3:20].max() == CLASS_NAMES.index("spur") + 1
    # Every listed board loads, the other reviewed boards of this module included.
    for s in samples.values():
        load_sample(s)


def test_export_reviews_over_the_api_writes_what_the_database_export_writes(
    client: TestClient, data_dir: Path, tmp_path: Path
) -> None:
    from app.services.review_export import ApiSource, write_export

    pair = synth_board(seed=2, size=128)
    assert client.put("/v1/golden-boards/p-api-export", headers=ADMIN,
                      files={"file": ("g.png", encode(pair.template), "image/png")}
                      ).status_code == 201
    compared = inspect(client, encode(pair.image), product="p-api-export", threshold=0.0,
                       min_confidence=0.0).json()
    review = {"defects": [{"defect_id": compared["defects"][0]["id"], "outcome": "confirmed"}],
              "missed": [{"bbox": [5, 6, 15, 16], "class": "open"}]}
    assert client.post(f"/v1/inspections/{compared['inspection_id']}/review", headers=REVIEW,
                       json=review).status_code == 201
    local, remote = tmp_path / "db", tmp_path / "api"
    assert cli_main(["export-reviews", "--out", str(local), "--data-dir", str(data_dir)]) == 0
    # The TestClient is an httpx client on the same app: the API's answers, not the files.
    summary = write_export(ApiSource(client, "k-admin", page_size=2), remote)
    assert summary.boards >= 1 and summary.templates >= 1

    def files(root: Path) -> dict[str, bytes]:
        return {p.relative_to(root).as_posix(): p.read_bytes()
                for p in sorted(root.rglob("*")) if p.is_file()}

    # Same boards, boxes and images; the templates the API can serve (stored golden boards;
    # one uploaded with its board is not served) are the same too.
    got, want = files(remote), files(local)
    assert f"PCBData/groupreviews/reviews/{compared['inspection_id']}_temp.jpg" in got
    for name in set(want) - set(got):
        assert name.endswith("_temp.jpg"), name
    assert {k: v for k, v in want.items() if k in got} == got
    assert_error(client.get("/v1/inspections", params={"reviewed": "true"}), 401)


def test_a_train_run_takes_several_data_folders(tmp_path: Path) -> None:
    from training.train import TrainConfig, build_parser

    args = build_parser().parse_args(
        ["--data", "a", "b", "--data", "c", "--out", str(tmp_path)])
    assert TrainConfig.from_args(args).folders == [Path("a"), Path("b"), Path("c")]
    one = TrainConfig.from_args(build_parser().parse_args(["--data", "a", "--out", "o"]))
    assert one.data == Path("a")  # as before: a one-folder run's config.json is unchanged



# --- real server processes (slow) ---------------------------------------------------------


@pytest.mark.slow
def test_serve_with_a_database_behind_the_code_exits_3_with_one_line(
    tiny_weights: Path, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'never-migrated.db'}"
    env = server_env(tiny_weights, free_port(), data_dir=tmp_path, database_url=url)
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "app.serve"], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert time.monotonic() - started < 30, proc.stderr  # said before the models load
    assert proc.returncode == 3, proc.stderr
    assert "Traceback" not in proc.stderr
    plain = [line for line in proc.stderr.splitlines() if line.startswith("pcb-inspect:")]
    assert len(plain) == 1, proc.stderr
    assert url in plain[0] and "run `pcb-inspect db upgrade`" in plain[0]
    # After the upgrade the same settings start.
    assert cli_main(["db", "upgrade", "--url", url]) == 0


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_every_200_has_its_record_after_kill_9(tiny_weights: Path, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    ids: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def send(server: ServerProcess, worker: int) -> None:
        with httpx.Client(base_url=server.url, timeout=60) as http:
            n = 0
            while not stop.is_set():
                n += 1
                files = [("files", (f"b{i}.png", board_png(64, 64, seed=worker * 1000 + n * 4 + i),
                                    "image/png")) for i in range(4)]
                try:
                    response = http.post("/predict/batch", files=files,
                                         params={"line": f"w{worker}"})
                except httpx.HTTPError:
                    return  # the server was killed under this request
                if response.status_code == 200:
                    got = [r["result"]["inspection_id"] for r in response.json()["results"]]
                    with lock:
                        ids.extend(got)

    with running_server(tiny_weights, tmp_path / "logs", data_dir=data_dir) as server:
        workers = [threading.Thread(target=send, args=(server, w)) for w in range(3)]
        for w in workers:
            w.start()
        deadline = time.monotonic() + 120
        while len(ids) < 12:
            assert time.monotonic() < deadline, server.log()
            time.sleep(0.01)
        # Mid-batch: the other workers' batches are being inspected and recorded now.
        os.kill(server.pid, signal.SIGKILL)
        server.proc.wait(timeout=30)
        stop.set()
        for w in workers:
            w.join(timeout=60)
    with lock:
        answered = list(ids)
    assert len(answered) >= 12 and None not in answered

    with running_server(tiny_weights, tmp_path / "logs2", data_dir=data_dir) as server:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            missing = [i for i in answered
                       if http.get(f"/v1/inspections/{i}").status_code != 200]
    assert missing == [], f"{len(missing)} of {len(answered)} answered boards have no record"
