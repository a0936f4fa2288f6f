"""The JSON contract of ``POST /predict`` and ``POST /predict/batch``, field by field.

The app runs in-process with the tiny real model (64x64 tiles). Its weights are random, so the
tests never rely on *which* defects it finds, only on the contract around them: shapes, types,
units, consistency between the defects, the summary and the mask, and how the query parameters
change the result. So that there are defects to check, the model card's confidence cut
(``thresholds.confidence``) is set at the 90th percentile of what the untrained model outputs:
about a tenth of the pixels become defect pixels, in many defects of all sizes (a cut through
the middle would make half the board one or two big defects, once fragments a few pixels apart
are merged).
"""

from __future__ import annotations

import base64
import collections
import io
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from app.core.rules import Rules
from app.inference.encoding import decode_rle
from pcb_inspect.classes import CLASS_NAMES
from tests.helpers.app import app_client, assert_error, defect_cut, read_png, with_thresholds
from tests.helpers.boards import board_png, encode, make_board

MAX_BATCH_FILES = 4
BOARD = board_png(64, 64, seed=1)  # one tile
DEFECT_KEYS = {"id", "class", "confidence", "bbox", "area_px", "area_mm2", "centroid"}
SUMMARY_KEYS = {
    "defect_count", "defect_area_px", "defect_area_mm2", "defect_area_ratio", "by_class",
    "verdict",
}


@pytest.fixture(scope="module")
def cut(tiny_weights: Path) -> float:
    """The 90th percentile of the tiny model's foreground confidence on BOARD."""
    return defect_cut(tiny_weights)


@pytest.fixture(scope="module")
def client(tiny_weights: Path, cut: float,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    [weights] = with_thresholds(tmp_path_factory.mktemp("model"), tiny_weights, confidence=cut)
    with app_client(weights, limits_max_batch_files=MAX_BATCH_FILES) as c:
        yield c


def predict(
    client: TestClient, data: bytes = BOARD, filename: str = "board.png", **kw: Any
) -> Any:
    return client.post("/predict", files={"file": (filename, data, "image/png")}, **kw)


def ok_json(response: Any) -> dict[str, Any]:
    assert response.status_code == 200, response.text[:500]
    assert response.headers["content-type"] == "application/json"
    body: dict[str, Any] = response.json()
    return body


def mask_of(body: dict[str, Any]) -> np.ndarray:
    """Decodes the base64 PNG mask of a result, checking its encoding on the way."""
    assert body["mask"]["encoding"] == "png"
    img = read_png(base64.b64decode(body["mask"]["data"], validate=True))
    assert img.mode == "L"
    assert img.size == (body["image"]["width"], body["image"]["height"])
    return np.asarray(img)


def check_result(body: dict[str, Any], width: int, height: int) -> None:
    """Every field of one board's result, and their consistency with each other."""
    assert set(body) == {
        "inspection_id", "image", "model", "defects", "summary", "mask", "params",
        "tiles", "timings_ms", "reference", "units", "ignored", "recipe",
        "reference_defects",
    }
    assert body["reference"] is None  # sent alone: the single-image model, no golden board
    # No recipe: nothing set aside, and one unit, the whole board, judged as the board.
    assert body["recipe"] is None and body["ignored"] == []
    assert body["reference_defects"] == []
    assert body["units"] == [{
        "position": 1, "identifier": None, "verdict": body["summary"]["verdict"],
        "defect_ids": [d["id"] for d in body["defects"]], "bbox": [0, 0, width, height],
    }]
    assert body["image"] == {"width": width, "height": height}
    assert body["model"] == {"name": "tiny-test-unet", "version": "0.0.1-test", "mode": "single"}
    params = body["params"]
    ppm = params["pixels_per_mm"]

    defects = body["defects"]
    assert [d["id"] for d in defects] == list(range(1, len(defects) + 1))
    for d in defects:
        assert set(d) == DEFECT_KEYS, d
        assert d["class"] in CLASS_NAMES
        assert isinstance(d["confidence"], float)
        # Mean fg of pixels at or above the cut, times the class purity (the winning class's
        # share of the vote, at least 1/K); reported to 4 decimals.
        assert params["threshold"] / len(CLASS_NAMES) - 5e-5 <= d["confidence"] <= 1.0
        bbox = d["bbox"]
        assert len(bbox) == 4 and all(type(v) is int for v in bbox), bbox
        x0, y0, x1, y1 = bbox
        # max is exclusive: a one-pixel defect has x1 == x0 + 1.
        assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height, bbox
        assert type(d["area_px"]) is int
        assert max(1, params["min_area_px"]) <= d["area_px"] <= (x1 - x0) * (y1 - y0)
        assert d["area_mm2"] == round(d["area_px"] / ppm**2, 6)
        cx, cy = d["centroid"]
        assert isinstance(cx, float) and isinstance(cy, float)
        assert x0 <= cx <= x1 - 1 and y0 <= cy <= y1 - 1
    # Ordered top to bottom, then left to right.
    keys = [(d["bbox"][1], d["bbox"][0]) for d in defects]
    assert keys == sorted(keys)

    summary = body["summary"]
    assert set(summary) == SUMMARY_KEYS
    area = sum(d["area_px"] for d in defects)
    assert summary["defect_count"] == len(defects)
    assert summary["defect_area_px"] == area
    assert summary["defect_area_mm2"] == round(area / ppm**2, 6)
    assert summary["defect_area_ratio"] == round(area / (width * height), 6)
    # Every class is a key, in model order, so clients see a fixed set.
    assert list(summary["by_class"]) == list(CLASS_NAMES)
    assert summary["by_class"] == {
        c: collections.Counter(d["class"] for d in defects)[c] for c in CLASS_NAMES
    }
    assert summary["verdict"] == ("fail" if defects else "pass")  # default rule: count >= 1

    # Every rule the board was judged by, whichever rules there are, and the tiles.
    assert set(params) == {*Rules.model_fields, "tiles"}
    assert params["fail_rule"] == "count" and params["tiles"] >= 1
    assert set(body["timings_ms"]) >= {"pre_process", "forward", "post_process"}
    assert all(isinstance(v, float) for v in body["timings_ms"].values())


# --- /predict: the contract -----------------------------------------------------------------


def test_multipart_upload_contract(client: TestClient, cut: float) -> None:
    response = predict(client)
    body = ok_json(response)
    check_result(body, 64, 64)
    # The model card's cut is the default.
    assert body["params"] == {
        "threshold": cut, "min_area_px": 0, "min_confidence": 0.0, "pixels_per_mm": 48.0,
        "fail_rule": "count", "fail_min_count": 1, "fail_min_area_mm2": 0.0,
        "merge_distance_px": 3, "tiles": 1,
    }
    # The checks above ran on real defects, and on a mask that is not all one value.
    assert len(body["defects"]) > 5
    assert 0.05 < body["summary"]["defect_area_ratio"] < 0.9

    mask = mask_of(body)
    assert mask.dtype == np.uint8 and int(mask.max()) <= len(CLASS_NAMES)
    # The mask is the defects: its set pixels are exactly the defects' pixels...
    assert int(np.count_nonzero(mask)) == body["summary"]["defect_area_px"]
    for d in body["defects"]:
        # ...and each defect's pixels carry its class id inside its box.
        x0, y0, x1, y1 = d["bbox"]
        class_id = CLASS_NAMES.index(d["class"]) + 1
        assert np.count_nonzero(mask[y0:y1, x0:x1] == class_id) >= d["area_px"]


def test_the_published_params_are_every_rule(client: TestClient) -> None:
    # ``params`` is the rules type itself: a rule added to Rules is in every answer and in
    # the schema, required (it is always there).
    schema = client.get("/openapi.json").json()["components"]["schemas"]["ParamsOut"]
    assert set(schema["required"]) == set(schema["properties"]) == {*Rules.model_fields,
                                                                    "tiles"}


def test_raw_png_body_gives_the_same_result(client: TestClient) -> None:
    multipart = ok_json(predict(client))
    raw = ok_json(client.post("/predict", content=BOARD, headers={"content-type": "image/png"}))
    check_result(raw, 64, 64)
    for key in ("image", "defects", "summary", "mask", "params"):
        assert raw[key] == multipart[key], key


def test_raw_jpeg_body(client: TestClient) -> None:
    data = encode(make_board(64, 80, seed=2), "JPEG", quality=95)
    body = ok_json(client.post("/predict", content=data, headers={"content-type": "image/jpeg"}))
    check_result(body, 80, 64)


def test_mask_rle_decodes_to_the_png_mask(client: TestClient) -> None:
    png_mask = mask_of(ok_json(predict(client)))
    body = ok_json(predict(client, params={"mask": "rle"}))
    check_result(body, 64, 64)
    rle = body["mask"]
    assert rle["encoding"] == "rle"
    data = rle["data"]
    assert data["size"] == [64, 64] and data["order"] == "F"
    np.testing.assert_array_equal(decode_rle(data), (png_mask > 0).astype(np.uint8))
    # Per-class masks are keyed by class name, each equal to that class's pixels.
    present = {CLASS_NAMES[k - 1] for k in np.unique(png_mask) if k}
    assert set(data["per_class"]) == present
    for name, entry in data["per_class"].items():
        k = CLASS_NAMES.index(name) + 1
        np.testing.assert_array_equal(decode_rle(entry), (png_mask == k).astype(np.uint8))


def test_mask_none_leaves_the_defects(client: TestClient) -> None:
    full = ok_json(predict(client))
    body = ok_json(predict(client, params={"mask": "none"}))
    assert body["mask"] is None
    assert body["defects"] == full["defects"] and body["summary"] == full["summary"]


def test_accept_png_returns_the_mask_png(client: TestClient) -> None:
    expected = mask_of(ok_json(predict(client)))
    response = predict(client, headers={"accept": "image/png"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/png"
    img = read_png(response.content)
    assert img.mode == "L" and img.size == (64, 64)
    np.testing.assert_array_equal(np.asarray(img), expected)


def test_render_overlay_returns_a_png(client: TestClient) -> None:
    response = predict(client, params={"render": "overlay"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/png"
    img = read_png(response.content)
    assert img.mode == "RGB"
    assert img.size[0] >= 64 and img.size[1] >= 64  # the board, plus its legend


# --- /predict: parameters -------------------------------------------------------------------


def test_threshold_one_finds_nothing(client: TestClient) -> None:
    body = ok_json(predict(client, params={"threshold": 1.0}))
    check_result(body, 64, 64)
    assert body["params"]["threshold"] == 1.0
    assert body["defects"] == []
    assert body["summary"]["defect_count"] == 0 and body["summary"]["verdict"] == "pass"
    assert not mask_of(body).any()


def test_higher_threshold_never_finds_more(client: TestClient, cut: float) -> None:
    areas = []
    for threshold in (0.0, cut, 0.5, 1.0):
        body = ok_json(predict(client, params={"threshold": threshold, "mask": "none"}))
        areas.append(body["summary"]["defect_area_px"])
    assert areas == sorted(areas, reverse=True) and areas[0] > 0 == areas[-1], areas


def test_min_area_px_drops_small_defects(client: TestClient) -> None:
    full = ok_json(predict(client))
    assert min(d["area_px"] for d in full["defects"]) < 5  # there is something to drop
    some = ok_json(predict(client, params={"min_area_px": 5}))
    check_result(some, 64, 64)
    assert all(d["area_px"] >= 5 for d in some["defects"])
    assert 0 < len(some["defects"]) < len(full["defects"])
    none = ok_json(predict(client, params={"min_area_px": 10**9}))
    assert none["defects"] == [] and none["summary"]["verdict"] == "pass"


def test_min_confidence_drops_less_confident_defects(client: TestClient) -> None:
    full = ok_json(predict(client))
    confidences = sorted(d["confidence"] for d in full["defects"])
    cut = confidences[len(confidences) // 2]
    some = ok_json(predict(client, params={"min_confidence": cut}))
    check_result(some, 64, 64)
    assert some["params"]["min_confidence"] == cut
    assert all(d["confidence"] >= cut for d in some["defects"])
    assert len(some["defects"]) == sum(c >= cut for c in confidences)
    bad = client.post("/predict", params={"min_confidence": 2},
                      files={"file": ("b.png", BOARD, "image/png")})
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_request"


def test_pixels_per_mm_scales_areas_by_the_square_ratio(client: TestClient) -> None:
    at48 = ok_json(predict(client))
    at24 = ok_json(predict(client, params={"pixels_per_mm": 24}))
    check_result(at24, 64, 64)
    assert at24["params"]["pixels_per_mm"] == 24.0
    # Half the resolution: each pixel covers 4x the area; pixel counts do not change.
    assert [d["area_px"] for d in at24["defects"]] == [d["area_px"] for d in at48["defects"]]
    for a, b in zip(at24["defects"], at48["defects"], strict=True):
        assert a["area_mm2"] == pytest.approx(4 * b["area_mm2"], abs=4e-6)
    assert at24["summary"]["defect_area_mm2"] == pytest.approx(
        4 * at48["summary"]["defect_area_mm2"], abs=4e-6
    )


@pytest.mark.parametrize(
    "params",
    [{"threshold": 1.5}, {"threshold": -0.1}, {"pixels_per_mm": 0}, {"min_area_px": -1},
     {"mask": "jpeg"}, {"render": "heatmap"}, {"threshold": "nan"}],
)
def test_out_of_range_parameters_are_422(client: TestClient, params: dict[str, Any]) -> None:
    error = assert_error(predict(client, params=params), 422, "invalid_request")
    assert next(iter(params)) in error["message"]


# --- /predict: sizes and concurrency --------------------------------------------------------


def test_large_image_is_tiled_and_the_mask_is_full_size(client: TestClient) -> None:
    body = ok_json(predict(client, board_png(200, 300, seed=3)))
    check_result(body, 300, 200)
    assert body["params"]["tiles"] > 1
    assert mask_of(body).shape == (200, 300)


def test_concurrent_requests_of_different_sizes(client: TestClient) -> None:
    sizes = [(64, 64), (100, 80), (200, 130), (48, 300), (64, 65), (33, 40)]
    boards = [board_png(h, w, seed=10 + i) for i, (h, w) in enumerate(sizes)]
    alone = [ok_json(predict(client, b)) for b in boards]
    with ThreadPoolExecutor(len(boards)) as pool:
        together = [ok_json(r) for r in pool.map(lambda b: predict(client, b), boards)]
    for (h, w), a, t in zip(sizes, alone, together, strict=True):
        check_result(t, w, h)
        # Sharing batches with other boards changes nothing: each gets its own tiles back.
        assert t["defects"] == a["defects"]
        np.testing.assert_array_equal(mask_of(t), mask_of(a))


# --- /predict/batch -------------------------------------------------------------------------


def truncated_jpeg() -> bytes:
    data = encode(make_board(64, 64, seed=4), "JPEG")
    return data[: len(data) // 2]


def test_batch_mixes_good_and_bad_images_in_order(client: TestClient) -> None:
    good_a, good_c = board_png(64, 64, seed=1), board_png(70, 90, seed=5)
    files = [
        ("files", ("a.png", good_a, "image/png")),
        ("files", ("b.png", b"not an image at all\n", "image/png")),
        ("files", ("c.png", good_c, "image/png")),
        ("files", ("d.jpg", truncated_jpeg(), "image/jpeg")),
    ]
    body = ok_json(client.post("/predict/batch", files=files))
    assert set(body) == {"count", "succeeded", "failed", "results"}
    assert (body["count"], body["succeeded"], body["failed"]) == (4, 2, 2)
    results = body["results"]
    assert [r["index"] for r in results] == [0, 1, 2, 3]
    assert [r["filename"] for r in results] == ["a.png", "b.png", "c.png", "d.jpg"]
    assert [r["status"] for r in results] == [200, 415, 200, 400]
    assert results[1]["error"]["code"] == "not_an_image"
    assert results[3]["error"]["code"] == "truncated_image"
    for bad in (results[1], results[3]):
        assert "result" not in bad and bad["error"]["message"]
    check_result(results[0]["result"], 64, 64)
    check_result(results[2]["result"], 90, 70)
    assert results[0]["result"]["mask"] is None  # batch default: no masks
    # Each item is the same as inspecting that board alone.
    single = ok_json(predict(client, good_a))
    assert results[0]["result"]["defects"] == single["defects"]


def test_batch_takes_the_query_parameters(client: TestClient) -> None:
    files = [("files", (f"{i}.png", BOARD, "image/png")) for i in range(2)]
    body = ok_json(client.post("/predict/batch", params={"threshold": 1.0, "mask": "rle"},
                               files=files))
    for item in body["results"]:
        assert item["result"]["defects"] == [] and item["result"]["mask"]["encoding"] == "rle"


def test_batch_over_the_file_limit_is_413(client: TestClient) -> None:
    files = [("files", (f"{i}.png", BOARD, "image/png")) for i in range(MAX_BATCH_FILES + 1)]
    error = assert_error(client.post("/predict/batch", files=files), 413, "too_many_files")
    assert str(MAX_BATCH_FILES) in error["message"]
    assert "PCB_LIMITS_MAX_BATCH_FILES" in error["message"]
    # Exactly at the limit is fine.
    ok = ok_json(client.post("/predict/batch", files=files[:MAX_BATCH_FILES]))
    assert ok["succeeded"] == MAX_BATCH_FILES


def test_batch_without_files_field_is_400(client: TestClient) -> None:
    response = client.post("/predict/batch", files={"file": ("a.png", BOARD, "image/png")})
    error = assert_error(response, 400, "missing_file")
    assert "'files'" in error["message"] and "file" in error["message"]


def test_batch_needs_multipart(client: TestClient) -> None:
    response = client.post("/predict/batch", content=BOARD,
                           headers={"content-type": "image/png"})
    assert_error(response, 415, "unsupported_media_type")


def test_batch_image_of_another_mode(client: TestClient) -> None:
    rgb = Image.fromarray(np.stack([make_board(40, 50, seed=6)] * 3, axis=-1))
    buf = io.BytesIO()
    rgb.save(buf, "BMP")
    body = ok_json(client.post("/predict/batch",
                               files=[("files", ("rgb.bmp", buf.getvalue(), "image/bmp"))]))
    check_result(body["results"][0]["result"], 50, 40)
