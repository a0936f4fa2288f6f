"""Hostile and odd input: every bad upload gets its own 4xx JSON error, never a 5xx, and the
service keeps serving afterwards. Every input is generated here, in memory."""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from app.core.config import MAX_FORM_FIELDS
from app.main import create_app
from tests.helpers.app import app_client, assert_error, tiny_settings
from tests.helpers.boards import board_png, encode, make_board

MAX_PIXELS = 200_000  # small, so a "bomb" is cheap to build and to refuse
MAX_BODY = 256 * 1024
MAX_FIELDS = MAX_FORM_FIELDS
BOARD = board_png(64, 64, seed=1)


@pytest.fixture(scope="module")
def client(tiny_weights: Path) -> Iterator[TestClient]:
    with app_client(
        tiny_weights, limits_max_image_pixels=MAX_PIXELS, limits_max_body_bytes=MAX_BODY,
    ) as c:
        yield c


def assert_still_serving(client: TestClient) -> None:
    """A good board right after a bad request is inspected normally."""
    response = client.post("/predict", files={"file": ("ok.png", BOARD, "image/png")})
    assert response.status_code == 200, response.text[:300]
    assert response.json()["image"] == {"width": 64, "height": 64}
    assert client.get("/readyz").status_code == 200


# --- building bad files ---------------------------------------------------------------------


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_header(width: int, height: int, bit_depth: int = 8) -> bytes:
    """A PNG signature and a valid IHDR claiming ``width x height``, and nothing else."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr)


def bomb_png(side: int) -> bytes:
    """A complete, valid 1-bit all-black PNG of ``side x side``: a few KB that decode big."""
    row = b"\x00" * (1 + (side + 7) // 8)
    idat = zlib.compress(row * side, 9)
    return png_header(side, side, bit_depth=1) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def animated_gif() -> bytes:
    frames = [Image.fromarray(make_board(32, 32, seed=s)).convert("P") for s in range(3)]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    return buf.getvalue()


def half(data: bytes) -> bytes:
    return data[: len(data) // 2]


def multipart(filename: bytes, data: bytes, boundary: bytes = b"pcbBoundary7MA4YWxk") -> tuple[
    bytes, dict[str, str]
]:
    """A multipart body built by hand, so the filename can be any bytes at all."""
    body = (
        b"--" + boundary + b"\r\n"
        b'Content-Disposition: form-data; name="file"; filename="' + filename + b'"\r\n'
        b"Content-Type: image/png\r\n\r\n" + data + b"\r\n--" + boundary + b"--\r\n"
    )
    return body, {"content-type": f"multipart/form-data; boundary={boundary.decode()}"}


def send_file(name: str, data: bytes, ctype: str = "image/png") -> Callable[[TestClient], Any]:
    return lambda c: c.post("/predict", files={"file": (name, data, ctype)})


def send_raw(data: bytes, ctype: str | None) -> Callable[[TestClient], Any]:
    headers = {"content-type": ctype} if ctype else {}
    return lambda c: c.post("/predict", content=data, headers=headers)


def send_multipart(filename: bytes, data: bytes) -> Callable[[TestClient], Any]:
    body, headers = multipart(filename, data)
    return lambda c: c.post("/predict", content=body, headers=headers)


# --- the corpus -----------------------------------------------------------------------------

BAD_INPUTS: list[tuple[str, Callable[[TestClient], Any], int, str]] = [
    ("zero_bytes", send_file("empty.png", b""), 400, "empty_image"),
    ("zero_bytes_raw", send_raw(b"", "image/png"), 400, "empty_image"),
    ("truncated_png", send_file("cut.png", half(BOARD)), 400, "truncated_image"),
    ("truncated_jpeg", send_file("cut.jpg", half(encode(make_board(64, 64), "JPEG")),
                                 "image/jpeg"), 400, "truncated_image"),
    ("text_named_png", send_file("notes.png", b"lot 42 board 7: all good\n" * 8),
     415, "not_an_image"),
    ("unsupported_format", send_file("board.ico", encode(make_board(32, 32), "ICO")),
     415, "unsupported_image_format"),
    ("decompression_bomb", send_file("bomb.png", bomb_png(1000)), 413, "image_too_large"),
    ("header_claims_100000x100000",
     send_file("huge.png", png_header(100_000, 100_000) + png_chunk(b"IEND", b"")),
     413, "image_too_large"),
    ("one_pixel", send_file("dot.png", encode(np.zeros((1, 1), np.uint8))), 422,
     "image_too_small"),
    ("animated_gif", send_file("anim.gif", animated_gif(), "image/gif"), 422,
     "multi_frame_image"),
    ("no_file_part", lambda c: c.post("/predict", data={"note": "where is the board?"},
                                      files={"other": ("x.png", BOARD, "image/png")}),
     400, "missing_file"),
    ("form_without_any_file", send_raw(
        b'--b\r\nContent-Disposition: form-data; name="a"\r\n\r\n1\r\n--b--\r\n',
        "multipart/form-data; boundary=b"), 400, "missing_file"),
    ("duplicated_file_fields", lambda c: c.post(
        "/predict", files=[("file", ("a.png", BOARD, "image/png")),
                           ("file", ("b.png", BOARD, "image/png"))]), 400, "too_many_files"),
    ("text_plain_body", send_raw(BOARD, "text/plain"), 415, "unsupported_media_type"),
    ("json_body", lambda c: c.post("/predict", json={"image": "base64..."}), 415,
     "unsupported_media_type"),
    ("no_content_type", send_raw(BOARD, None), 415, "unsupported_media_type"),
    ("multipart_without_boundary", send_raw(BOARD, "multipart/form-data"), 400,
     "malformed_multipart"),
    ("multipart_garbage", send_raw(b"\x00\x01garbage" * 50, "multipart/form-data; boundary=zz"),
     400, "malformed_multipart"),
    ("long_filename", send_file("b" * 300 + ".png", BOARD), 400, "filename_too_long"),
    # Past the multipart parser's own header limit (about 4 KB): refused while parsing.
    ("huge_filename", send_file("b" * 50_000 + ".png", BOARD), 400, "malformed_multipart"),
]


@pytest.mark.parametrize(
    ("send", "status", "code"), [case[1:] for case in BAD_INPUTS], ids=[c[0] for c in BAD_INPUTS]
)
def test_bad_input_gets_its_4xx_and_the_service_keeps_serving(
    client: TestClient, send: Callable[[TestClient], Any], status: int, code: str
) -> None:
    error = assert_error(send(client), status, code)
    assert "\n" not in error["message"]  # one line, for an operator on the line
    assert_still_serving(client)


def test_error_messages_name_the_limit(client: TestClient) -> None:
    bomb = assert_error(send_file("bomb.png", bomb_png(1000))(client), 413)
    assert "1,000,000" in bomb["message"] and f"{MAX_PIXELS:,}" in bomb["message"]
    tiny = assert_error(send_file("dot.png", encode(np.zeros((1, 1), np.uint8)))(client), 422)
    assert "1x1" in tiny["message"] and "8" in tiny["message"]
    many = assert_error(
        client.post("/predict", files=[("file", ("a.png", BOARD, "image/png"))] * 2), 400)
    assert "/predict/batch" in many["message"]


# --- odd but valid images -------------------------------------------------------------------


def sixteen_bit_png() -> bytes:
    wide = make_board(64, 72).astype(np.uint16) * 257
    img = Image.fromarray(wide)
    assert img.mode == "I;16"
    return encode(img)


def cmyk_jpeg() -> bytes:
    return encode(Image.fromarray(make_board(64, 72)).convert("CMYK"), "JPEG")


def palette_with_transparency() -> bytes:
    img = Image.fromarray(make_board(64, 72)).convert("P")
    return encode(img, "PNG", transparency=0)


def rgba_png() -> bytes:
    rgba = np.dstack([make_board(64, 72)] * 3 + [np.full((64, 72), 128, np.uint8)])
    return encode(Image.fromarray(rgba, mode="RGBA"))


def exif_rotated_jpeg() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees on display
    return encode(Image.fromarray(make_board(72, 64)), "JPEG", exif=exif.tobytes())


ODD_BUT_VALID: list[tuple[str, Callable[[], bytes]]] = [
    ("16-bit PNG", sixteen_bit_png),
    ("CMYK JPEG", cmyk_jpeg),
    ("palette with transparency", palette_with_transparency),
    ("RGBA PNG", rgba_png),
    ("1-bit PNG", lambda: encode(Image.fromarray(make_board(64, 72) > 128))),
    ("TIFF", lambda: encode(make_board(64, 72), "TIFF")),
    ("WEBP", lambda: encode(make_board(64, 72), "WEBP", lossless=True)),
    ("single-frame GIF", lambda: encode(make_board(64, 72), "GIF")),
    ("EXIF-rotated JPEG", exif_rotated_jpeg),  # 64 wide, 72 high; displayed rotated
]


@pytest.mark.parametrize("make", [m for _, m in ODD_BUT_VALID], ids=[n for n, _ in ODD_BUT_VALID])
def test_odd_but_valid_images_are_inspected(client: TestClient, make: Callable[[], bytes]) -> None:
    response = client.post("/predict", files={"file": ("odd", make(), "application/octet-stream")})
    assert response.status_code == 200, response.text[:300]
    # 72 wide and 64 high after any EXIF rotation has been applied.
    assert response.json()["image"] == {"width": 72, "height": 64}


def test_non_utf8_filename_is_accepted(client: TestClient) -> None:
    # Raw bytes: invalid UTF-8 (0xff 0xfe) and latin-1 (0xe9) in the filename.
    body, headers = multipart(b"\xff\xfeplatine-\xe9.png", BOARD)
    response = client.post("/predict", content=body, headers=headers)
    assert response.status_code == 200, response.text[:300]
    # And in a batch, where the filename is echoed back: as text, whatever its bytes were.
    batch_body, batch_headers = multipart(b"\xff\xfe\xe9.png", BOARD)
    batch_body = batch_body.replace(b'name="file"', b'name="files"')
    batch = client.post("/predict/batch", content=batch_body, headers=batch_headers)
    assert batch.status_code == 200, batch.text[:300]
    assert isinstance(batch.json()["results"][0]["filename"], str)
    assert_still_serving(client)


# --- limits ---------------------------------------------------------------------------------


def test_body_over_the_limit_with_content_length(client: TestClient) -> None:
    payload = b"\x00" * (MAX_BODY + 1)
    for response in (
        client.post("/predict", content=payload, headers={"content-type": "image/png"}),
        client.post("/predict", files={"file": ("big.png", payload, "image/png")}),
        client.post("/predict/batch", files={"files": ("big.png", payload, "image/png")}),
    ):
        error = assert_error(response, 413, "payload_too_large")
        assert str(MAX_BODY) in error["message"] and "PCB_LIMITS_MAX_BODY_BYTES" in error["message"]
    assert_still_serving(client)


def chunks(total: int, size: int = 16 * 1024) -> Iterator[bytes]:
    """A body of ``total`` bytes, streamed: httpx sends it chunked, without Content-Length."""
    sent = 0
    while sent < total:
        n = min(size, total - sent)
        sent += n
        yield b"\x00" * n


def test_chunked_body_over_the_limit_without_content_length(client: TestClient) -> None:
    response = client.post("/predict", content=chunks(MAX_BODY * 2),
                           headers={"content-type": "image/png"})
    assert "content-length" not in {k.lower() for k in response.request.headers}
    error = assert_error(response, 413, "payload_too_large")
    assert str(MAX_BODY) in error["message"]

    def multipart_stream() -> Iterator[bytes]:
        yield b'--zz\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n\r\n'
        yield from chunks(MAX_BODY * 2)
        yield b"\r\n--zz--\r\n"

    response = client.post("/predict", content=multipart_stream(),
                           headers={"content-type": "multipart/form-data; boundary=zz"})
    assert_error(response, 413, "payload_too_large")
    assert_still_serving(client)


def test_chunked_body_under_the_limit_is_fine(client: TestClient) -> None:
    response = client.post("/predict", content=iter([BOARD[:100], BOARD[100:]]),
                           headers={"content-type": "image/png"})
    assert response.status_code == 200, response.text[:300]


def test_too_many_form_fields(client: TestClient) -> None:
    fields = {f"field{i}": "x" for i in range(MAX_FIELDS + 1)}
    response = client.post("/predict", data=fields,
                           files={"file": ("a.png", BOARD, "image/png")})
    error = assert_error(response, 413, "too_many_fields")
    assert str(MAX_FIELDS) in error["message"]
    # At the limit, the extra fields are ignored and the board inspected.
    at_limit = {f"field{i}": "x" for i in range(MAX_FIELDS)}
    ok = client.post("/predict", data=at_limit, files={"file": ("a.png", BOARD, "image/png")})
    assert ok.status_code == 200, ok.text[:300]


def test_unknown_route_and_method_are_json(client: TestClient) -> None:
    assert_error(client.get("/nope"), 404, "not_found")
    assert_error(client.get("/predict"), 405, "method_not_allowed")


def test_every_answer_carries_the_request_id(client: TestClient) -> None:
    # Whichever layer answers: a route (JSON or PNG), the body limit before the body is read,
    # request validation, the router (unknown path or method), the page. (500s: below.)
    board = {"file": ("b.png", BOARD, "image/png")}
    png = {"accept": "image/png"}
    raw = {"content-type": "image/png"}
    requests: list[tuple[str, str, str, dict[str, Any]]] = [
        ("json", "POST", "/predict", {"files": board}),
        ("mask-png", "POST", "/predict", {"files": board, "headers": png}),
        ("overlay", "POST", "/predict", {"files": board, "params": {"render": "overlay"}}),
        ("batch", "POST", "/predict/batch", {"files": {"files": board["file"]}}),
        ("not-an-image", "POST", "/predict", {"content": b"junk", "headers": raw}),
        ("too-large", "POST", "/predict", {"content": b"\0" * (MAX_BODY + 1), "headers": raw}),
        ("invalid-query", "POST", "/predict", {"files": board, "params": {"threshold": 2}}),
        ("unknown-path", "GET", "/nope", {}),
        ("wrong-method", "GET", "/predict", {}),
        ("golden-png", "GET", "/v1/golden-boards/none-such", {"headers": png}),
        ("metrics", "GET", "/metrics", {}),
        ("page", "GET", "/", {}),
    ]
    statuses = {}
    for what, method, path, kwargs in requests:
        headers = {**kwargs.pop("headers", {}), "X-Request-ID": f"rid-{what}"}
        response = client.request(method, path, headers=headers, **kwargs)
        statuses[what] = response.status_code
        assert response.headers.get("x-request-id") == f"rid-{what}", (what, response.headers)
    assert statuses["mask-png"] == statuses["overlay"] == 200, statuses
    assert (statuses["too-large"], statuses["unknown-path"], statuses["wrong-method"]) == (
        413, 404, 405), statuses


def test_unhandled_error_is_a_json_500_carrying_the_request_id(tiny_weights: Path) -> None:
    # A route that fails for real, added to the service's own app, so the 500 goes through the
    # real middleware and handlers. No lifespan: the route needs no model.
    app = create_app(tiny_settings(tiny_weights))

    async def boom() -> None:
        raise RuntimeError("secret detail")

    app.add_api_route("/boom-for-test", boom)
    client = TestClient(app, raise_server_exceptions=False)

    given = client.get("/boom-for-test", headers={"X-Request-ID": "trace-500.a"})
    error = assert_error(given, 500, "internal_error")
    assert given.headers["x-request-id"] == "trace-500.a"
    assert "trace-500.a" in error["message"] and "secret" not in error["message"]

    # Without the client's id, the one the service made up is both cited and returned.
    made_up = client.get("/boom-for-test")
    request_id = made_up.headers["x-request-id"]
    assert request_id and request_id in assert_error(made_up, 500, "internal_error")["message"]
