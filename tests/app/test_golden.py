"""Golden-board inspection: ``template`` uploads, ``?product=`` with stored golden boards, the
``/v1/golden-boards`` endpoints, and the service without a pair model.

Two tiny real models (single and pair, built with ``model_defs`` and saved to tmp) run in
the app's lifespan. The boards come from ``training.synth`` (256 px, so registration has
structure to lock on to): ``image`` with defects and ``template`` without.
"""

from __future__ import annotations

import hashlib
import io
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from app.core.config import Settings
from app.inference.loading import ModelLoadError
from app.main import create_app
from tests.helpers.app import app_client, assert_error, png_array, tiny_settings
from tests.helpers.boards import encode
from training.synth import make_board, moved

SIDE = 256
BOARD = make_board(seed=1, size=SIDE)
IMAGE = encode(BOARD.image)
TEMPLATE = encode(BOARD.template)
OTHER_TEMPLATE = encode(make_board(seed=11, size=SIDE).template)  # another design


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="module")
def client(tiny_weights: Path, tiny_pair_weights: Path, data_dir: Path) -> Iterator[TestClient]:
    with app_client(tiny_weights, pair_weights_path=tiny_pair_weights, data_dir=data_dir) as c:
        yield c


@pytest.fixture(scope="module")
def single_client(tiny_weights: Path, tmp_path_factory: pytest.TempPathFactory
                  ) -> Iterator[TestClient]:
    """No pair model: PCB_PAIR_WEIGHTS_PATH is empty."""
    with app_client(tiny_weights, data_dir=tmp_path_factory.mktemp("single_data")) as c:
        yield c


def predict(client: TestClient, image: bytes = IMAGE, template: bytes | None = None,
            **kw: Any) -> Any:
    files = [("file", ("board.png", image, "image/png"))]
    if template is not None:
        files.append(("template", ("golden.png", template, "image/png")))
    return client.post("/predict", files=files, **kw)


def put_board(client: TestClient, product: str, data: bytes = TEMPLATE, **kw: Any) -> Any:
    return client.put(f"/v1/golden-boards/{product}",
                      files={"file": ("golden.png", data, "image/png")}, **kw)


def ok(response: Any) -> dict[str, Any]:
    assert response.status_code == 200, response.text[:500]
    body: dict[str, Any] = response.json()
    return body


# --- template upload -----------------------------------------------------------------------------


def test_template_uses_the_pair_model_and_reports_the_alignment(client: TestClient) -> None:
    body = ok(predict(client, template=TEMPLATE))
    assert body["model"] == {"name": "tiny-test-pair-unet", "version": "0.0.1-test",
                             "mode": "pair"}
    golden = body["reference"]
    assert golden["source"] == "upload" and golden["product"] is None
    assert golden["sha256"] == hashlib.sha256(TEMPLATE).hexdigest()
    alignment = golden["alignment"]
    assert set(alignment) == {"dx", "dy", "rotation_deg", "score"}
    assert abs(alignment["dx"]) < 0.5 and abs(alignment["dy"]) < 0.5
    assert abs(alignment["rotation_deg"]) < 0.5 and alignment["score"] > 0.9
    assert body["image"] == {"width": SIDE, "height": SIDE}
    assert "register" in body["timings_ms"]


def test_without_a_reference_the_single_model_answers(client: TestClient) -> None:
    body = ok(predict(client))
    assert body["model"]["mode"] == "single" and body["reference"] is None
    assert body["model"]["name"] == "tiny-test-unet"


def test_a_shifted_template_reports_the_shift(client: TestClient) -> None:
    template = encode(moved(BOARD.template, 5, -3, 0.0))
    alignment = ok(predict(client, template=template))["reference"]["alignment"]
    # The golden board sits 5 px right and 3 px up of the board.
    assert alignment["dx"] == pytest.approx(5, abs=0.6)
    assert alignment["dy"] == pytest.approx(-3, abs=0.6)
    assert alignment["score"] > 0.9


@pytest.mark.parametrize(
    "template",
    [OTHER_TEMPLATE, encode(np.rot90(BOARD.template).copy())],
    ids=["another_design", "turned_90_degrees"],
)
def test_a_template_that_does_not_align_is_422_with_the_score(
    client: TestClient, template: bytes
) -> None:
    error = assert_error(predict(client, template=template), 422, "alignment_failed")
    assert "score" in error["message"] and "template" in error["message"]


@pytest.mark.parametrize(
    ("data", "status", "code"),
    [
        (b"a text file, not a golden board\n", 415, "not_an_image"),
        (TEMPLATE[: len(TEMPLATE) // 2], 400, "truncated_image"),
        (b"", 400, "empty_image"),
        (encode(np.zeros((4, 4), np.uint8)), 422, "image_too_small"),
    ],
    ids=["not_an_image", "truncated", "empty", "too_small"],
)
def test_template_errors_name_the_field(
    client: TestClient, data: bytes, status: int, code: str
) -> None:
    error = assert_error(predict(client, template=data), status, code)
    assert error["message"].startswith("template: "), error


def test_two_templates_are_refused(client: TestClient) -> None:
    files = [("file", ("b.png", IMAGE, "image/png")),
             ("template", ("t1.png", TEMPLATE, "image/png")),
             ("template", ("t2.png", TEMPLATE, "image/png"))]
    error = assert_error(client.post("/predict", files=files), 400, "too_many_files")
    assert error["message"].startswith("template: ")


def test_the_golden_field_works_as_the_template_field_and_its_errors_name_it(
    client: TestClient,
) -> None:
    # "golden" is the field's preferred name, "template" its older one: the same inspection.
    as_golden = ok(client.post("/predict", files=[("file", ("b.png", IMAGE, "image/png")),
                                                  ("golden", ("g.png", TEMPLATE, "image/png"))]))
    as_template = ok(predict(client, template=TEMPLATE))
    assert as_golden["model"]["mode"] == "pair"
    assert as_golden["reference"] == as_template["reference"]
    assert as_golden["defects"] == as_template["defects"]
    misaligned = [("file", ("b.png", IMAGE, "image/png")),
                  ("golden", ("g.png", OTHER_TEMPLATE, "image/png"))]
    error = assert_error(client.post("/predict", files=misaligned), 422, "alignment_failed")
    assert "field 'golden'" in error["message"] and "score" in error["message"]
    broken = [("file", ("b.png", IMAGE, "image/png")),
              ("golden", ("g.png", b"not an image\n", "image/png"))]
    error = assert_error(client.post("/predict", files=broken), 415, "not_an_image")
    assert error["message"].startswith("golden: "), error
    both = [("file", ("b.png", IMAGE, "image/png")),
            ("golden", ("g.png", TEMPLATE, "image/png")),
            ("template", ("t.png", TEMPLATE, "image/png"))]
    error = assert_error(client.post("/predict", files=both), 400, "too_many_files")
    assert "received 2 in fields 'golden' and 'template'" in error["message"], error
    with_product = assert_error(
        client.post("/predict", files=misaligned, params={"product": "both-2"}),
        422, "invalid_request")
    assert "field 'golden'" in with_product["message"]
    batch = [("files", ("b.png", IMAGE, "image/png")),
             ("golden", ("g.png", TEMPLATE, "image/png"))]
    error = assert_error(client.post("/predict/batch", files=batch), 422, "invalid_request")
    assert error["message"].startswith("golden: /predict/batch takes no golden board")


def test_template_with_overlay_and_png_mask(client: TestClient) -> None:
    overlay = predict(client, template=TEMPLATE, params={"render": "overlay"})
    assert overlay.status_code == 200 and overlay.headers["content-type"] == "image/png"
    mask = predict(client, template=TEMPLATE, headers={"accept": "image/png"})
    assert png_array(mask.content).shape == (SIDE, SIDE)


# --- golden boards: CRUD -------------------------------------------------------------------------


def test_golden_board_lifecycle(client: TestClient) -> None:
    created = put_board(client, "crud-1")
    assert created.status_code == 201, created.text
    answer = created.json()
    # The PUT's answer adds the single-image model's check of the golden board.
    assert set(answer) == {"product", "width", "height", "sha256", "created", "warnings",
                           "checked_by"}
    assert isinstance(answer["warnings"], list)
    assert answer["checked_by"]["name"] == "tiny-test-unet"
    meta = {k: v for k, v in answer.items() if k not in ("warnings", "checked_by")}
    assert (meta["product"], meta["width"], meta["height"]) == ("crud-1", SIDE, SIDE)

    # GET and the list give the check the PUT answered with: it is kept with the board.
    listed = ok(client.get("/v1/golden-boards"))
    assert listed["count"] == len(listed["boards"])
    assert answer in listed["boards"]
    assert ok(client.get("/v1/golden-boards/crud-1")) == answer

    png = client.get("/v1/golden-boards/crud-1", headers={"accept": "image/png"})
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert hashlib.sha256(png.content).hexdigest() == meta["sha256"]
    np.testing.assert_array_equal(png_array(png.content), BOARD.template)

    replaced = put_board(client, "crud-1", encode(moved(BOARD.template, 2, 0, 0.0)))
    assert replaced.status_code == 200, replaced.text
    assert replaced.json()["sha256"] != meta["sha256"]
    assert ok(client.get("/v1/golden-boards/crud-1"))["sha256"] == replaced.json()["sha256"]

    assert client.delete("/v1/golden-boards/crud-1").status_code == 204
    assert_error(client.get("/v1/golden-boards/crud-1"), 404, "unknown_product")
    assert_error(client.delete("/v1/golden-boards/crud-1"), 404, "unknown_product")
    assert "crud-1" not in {b["product"] for b in ok(client.get("/v1/golden-boards"))["boards"]}


def test_a_jpeg_golden_board_is_stored_as_gray_png(client: TestClient) -> None:
    rgb = Image.fromarray(BOARD.template).convert("RGB")
    buf = io.BytesIO()
    rgb.save(buf, "JPEG", quality=95)
    meta = put_board(client, "jpeg-1", buf.getvalue()).json()
    png = client.get("/v1/golden-boards/jpeg-1", headers={"accept": "image/png"}).content
    assert Image.open(io.BytesIO(png)).mode == "L"
    assert hashlib.sha256(png).hexdigest() == meta["sha256"]


@pytest.mark.parametrize("product", ["bad%20id", "a" * 65, "semi;colon", "caf%C3%A9"])
@pytest.mark.parametrize("method", ["PUT", "GET", "DELETE"])
def test_invalid_product_ids_are_422(client: TestClient, method: str, product: str) -> None:
    response = client.request(method, f"/v1/golden-boards/{product}",
                              files={"file": ("g.png", TEMPLATE, "image/png")}
                              if method == "PUT" else None)
    error = assert_error(response, 422, "invalid_product")
    assert "1 to 64 characters" in error["message"]


def test_unknown_products_are_404(client: TestClient) -> None:
    error = assert_error(client.get("/v1/golden-boards/no-such-board"), 404, "unknown_product")
    assert "'no-such-board'" in error["message"]
    # The same error, word for word, where an inspection names the product.
    inspection = client.post("/predict", params={"product": "no-such-board"},
                             files={"file": ("b.png", IMAGE, "image/png")})
    assert assert_error(inspection, 404, "unknown_product") == error


@pytest.mark.parametrize(
    ("data", "status", "code"),
    [(b"not an image", 415, "not_an_image"), (TEMPLATE[:100], 400, "truncated_image")],
)
def test_golden_board_image_errors(client: TestClient, data: bytes, status: int,
                                   code: str) -> None:
    assert_error(put_board(client, "bad-image", data), status, code)
    assert_error(client.get("/v1/golden-boards/bad-image"), 404, "unknown_product")


def test_golden_board_as_raw_body(client: TestClient) -> None:
    response = client.put("/v1/golden-boards/raw-1", content=TEMPLATE,
                          headers={"content-type": "image/png"})
    assert response.status_code in (200, 201), response.text
    assert response.json()["width"] == SIDE


# --- inspections against a stored golden board ---------------------------------------------------


def test_predict_with_product(client: TestClient) -> None:
    meta = put_board(client, "line7-ctrl").json()
    body = ok(client.post("/predict", params={"product": "line7-ctrl"},
                          files={"file": ("b.png", IMAGE, "image/png")}))
    assert body["model"]["mode"] == "pair"
    golden = body["reference"]
    assert golden["source"] == "product" and golden["product"] == "line7-ctrl"
    assert golden["sha256"] == meta["sha256"]
    assert golden["alignment"]["score"] > 0.9
    # This golden board is the board's own clean template: nothing of it is a hole the board
    # fills, so every difference stays the board's.
    assert body["reference_defects"] == []
    # A raw body works with ?product= as well.
    raw = ok(client.post("/predict", params={"product": "line7-ctrl"}, content=IMAGE,
                         headers={"content-type": "image/png"}))
    assert raw["reference"]["product"] == "line7-ctrl"


def test_the_golden_board_is_checked_on_put_even_without_a_pair_model(
    single_client: TestClient,
) -> None:
    answer = put_board(single_client, "no-pair")
    assert answer.status_code == 201, answer.text
    body = answer.json()
    assert body["checked_by"]["name"] == "tiny-test-unet" and body["checked_by"]["mode"] == "single"
    for warning in body["warnings"]:
        assert set(warning) >= {"class", "confidence", "bbox"}
    # A board inspected alone has no golden board, so nothing can come from one.
    alone = ok(single_client.post("/predict", files={"file": ("b.png", IMAGE, "image/png")}))
    assert alone["reference_defects"] == [] and alone["reference"] is None


def test_predict_sees_a_replaced_golden_board(client: TestClient) -> None:
    put_board(client, "swap-1")
    first = ok(predict(client, params={"product": "swap-1"}))["reference"]["alignment"]
    put_board(client, "swap-1", encode(moved(BOARD.template, 4, 0, 0.0)))
    second = ok(predict(client, params={"product": "swap-1"}))["reference"]["alignment"]
    assert abs(first["dx"]) < 0.5 and second["dx"] == pytest.approx(4, abs=0.6)


def test_batch_with_product(client: TestClient) -> None:
    put_board(client, "batch-1")
    files = [("files", ("a.png", IMAGE, "image/png")),
             ("files", ("other.png", encode(make_board(seed=11, size=SIDE).image), "image/png")),
             ("files", ("junk.txt", b"junk", "text/plain"))]
    body = ok(client.post("/predict/batch", params={"product": "batch-1"}, files=files))
    statuses = [r["status"] for r in body["results"]]
    assert statuses == [200, 422, 415], body
    first = body["results"][0]["result"]
    assert first["model"]["mode"] == "pair" and first["reference"]["product"] == "batch-1"
    assert body["results"][1]["error"]["code"] == "alignment_failed"
    assert "score" in body["results"][1]["error"]["message"]


def test_batch_with_unknown_or_invalid_product(client: TestClient) -> None:
    files = [("files", ("a.png", IMAGE, "image/png"))]
    assert_error(client.post("/predict/batch", params={"product": "nope"}, files=files),
                 404, "unknown_product")
    assert_error(client.post("/predict/batch", params={"product": "no/pe"}, files=files),
                 422, "invalid_product")


def test_template_and_product_together_are_422(client: TestClient) -> None:
    put_board(client, "both-1")
    error = assert_error(
        predict(client, template=TEMPLATE, params={"product": "both-1"}), 422, "invalid_request"
    )
    assert "template" in error["message"] and "product" in error["message"]


def test_predict_with_unknown_or_invalid_product(client: TestClient) -> None:
    error = assert_error(predict(client, params={"product": "ghost"}), 404, "unknown_product")
    assert "PUT /v1/golden-boards/ghost" in error["message"]
    assert_error(predict(client, params={"product": "a b"}), 422, "invalid_product")


# --- models and metrics --------------------------------------------------------------------------


def test_model_info_lists_both_models(client: TestClient, tiny_pair_weights: Path) -> None:
    info = ok(client.get("/v1/model"))
    assert info["name"] == "tiny-test-unet"  # the top level stays the single model
    modes = {m["mode"]: m for m in info["models"]}
    assert list(modes) == ["single", "pair"]
    pair = modes["pair"]
    assert pair["name"] == "tiny-test-pair-unet" and pair["weights_file"] == "pair.keras"
    assert pair["weights_sha256"] == hashlib.sha256(tiny_pair_weights.read_bytes()).hexdigest()
    assert "golden board" in pair["serves"]


def test_inspections_are_counted_by_mode(client: TestClient) -> None:
    def count(mode: str) -> float:
        for line in client.get("/metrics").text.splitlines():
            if line.startswith(f'pcb_inspections_total{{mode="{mode}"}}'):
                return float(line.split()[-1])
        return 0.0

    pair, single = count("pair"), count("single")
    ok(predict(client, template=TEMPLATE))
    ok(predict(client))
    assert (count("pair"), count("single")) == (pair + 1, single + 1)
    assert 'pcb_pair_model_info{' in client.get("/metrics").text


# --- without a pair model ------------------------------------------------------------------------


def test_reference_without_pair_model_is_503(single_client: TestClient) -> None:
    error = assert_error(predict(single_client, template=TEMPLATE), 503,
                         "pair_model_unavailable")
    assert "PCB_PAIR_WEIGHTS_PATH" in error["message"]
    assert put_board(single_client, "p1").status_code == 201  # storing still works
    assert_error(predict(single_client, params={"product": "p1"}), 503,
                 "pair_model_unavailable")
    files = [("files", ("a.png", IMAGE, "image/png"))]
    assert_error(single_client.post("/predict/batch", params={"product": "p1"}, files=files),
                 503, "pair_model_unavailable")
    # Boards alone are inspected as before.
    assert ok(predict(single_client))["reference"] is None
    assert [m["mode"] for m in ok(single_client.get("/v1/model"))["models"]] == ["single"]


# --- settings and startup ------------------------------------------------------------------------


def test_absent_default_pair_model_is_a_warning(
    tiny_weights: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Unset PCB_PAIR_WEIGHTS_PATH: pcb_pair_unet.keras beside the weights, absent here.
    settings = Settings(weights_path=tiny_weights, device="cpu", data_dir=tmp_path)
    assert settings.pair_weights_is_default
    assert settings.pair_weights == tiny_weights.with_name("pcb_pair_unet.keras")
    with caplog.at_level(logging.WARNING, logger="pcb_inspect"), \
            TestClient(create_app(settings)) as c:
        error = assert_error(predict(c, template=TEMPLATE), 503, "pair_model_unavailable")
    assert "does not exist" in error["message"]
    assert any("no golden-board model" in r.getMessage() for r in caplog.records)


def test_missing_configured_pair_model_fails_startup(tiny_weights: Path, tmp_path: Path) -> None:
    missing = tmp_path / "nope.keras"
    app = create_app(tiny_settings(tiny_weights, pair_weights_path=missing))
    with pytest.raises(ModelLoadError, match=r"PCB_PAIR_WEIGHTS_PATH.*nope\.keras"):
        with TestClient(app):
            pass
    from app.serve import _check_pair_model

    # The cheap check of `pcb-inspect serve` says the same before TensorFlow starts.
    with pytest.raises(ModelLoadError, match=r"PCB_PAIR_WEIGHTS_PATH.*does not exist"):
        _check_pair_model(tiny_settings(tiny_weights, pair_weights_path=missing))
    _check_pair_model(Settings(weights_path=tiny_weights))  # absent default: fine


def test_a_single_model_as_pair_model_fails_startup(tiny_weights: Path) -> None:
    app = create_app(tiny_settings(tiny_weights, pair_weights_path=tiny_weights))
    with pytest.raises(ModelLoadError, match="expected a pair model"):
        with TestClient(app):
            pass


def test_empty_pair_path_switches_the_pair_model_off(tiny_weights: Path) -> None:
    settings = Settings(weights_path=tiny_weights, pair_weights_path="")
    assert settings.pair_weights is None and not settings.pair_weights_is_default
    assert settings.golden_dir == Path("data") / "golden"
    assert settings.golden_cache_mb == 256
