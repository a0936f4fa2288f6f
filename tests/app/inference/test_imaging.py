"""Tests of ``app.inference.imaging``: every input is generated here with Pillow and numpy."""

from __future__ import annotations

import inspect
import io
import re
import struct
import subprocess
import sys
import time
import warnings
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from app.core.errors import DOMAIN_ERRORS
from app.inference import imaging
from app.inference.imaging import ALLOWED_FORMATS, DecodedImage, ImageError, decode_image

MAX_PIXELS = 10_000_000


def _encode(img: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def _noise(width: int = 80, height: int = 64, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width), dtype=np.uint8)


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _png_header(width: int, height: int, bit_depth: int = 8, color_type: int = 0) -> bytes:
    """PNG signature plus a valid IHDR chunk (correct CRC) and nothing else."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr)


def _bomb_png(side: int) -> bytes:
    """A complete, valid 1-bit all-zero PNG of side x side, compressed to a few tens of KB."""
    row = b"\x00" * (1 + (side + 7) // 8)  # filter byte + packed bits
    compressor = zlib.compressobj(9)
    block = row * 1000
    idat = b"".join(compressor.compress(block) for _ in range(side // 1000))
    idat += compressor.compress(row * (side % 1000)) + compressor.flush()
    return (
        _png_header(side, side, bit_depth=1) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")
    )


def _raises(data: bytes, code: str, status: int, **kwargs: int) -> ImageError:
    kwargs.setdefault("max_pixels", MAX_PIXELS)
    with pytest.raises(ImageError) as info:
        decode_image(data, **kwargs)
    err = info.value
    # The status the service answers with: the error table's, by the error's code.
    assert (err.code, DOMAIN_ERRORS[err.code].status) == (code, status), err.message
    assert err.message and "\n" not in err.message
    assert str(err) == err.message
    return err


# --- rejected inputs -----------------------------------------------------------------------


def test_empty_bytes() -> None:
    err = _raises(b"", "empty_image", 400)
    assert "0 bytes" in err.message


def test_text_named_png_is_not_an_image() -> None:
    err = _raises(b"lot 42, board 7: all good\n" * 4, "not_an_image", 415)
    assert "104 bytes" in err.message and "PNG" in err.message


def test_unsupported_format_is_named() -> None:
    data = _encode(Image.fromarray(_noise()), "PPM")
    err = _raises(data, "unsupported_image_format", 415)
    assert "PPM" in err.message and "PNG" in err.message


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_image(fmt: str) -> None:
    data = _encode(Image.fromarray(_noise()), fmt)
    err = _raises(data[: len(data) // 2], "truncated_image", 400)
    assert fmt in err.message and f"{len(data) // 2:,} bytes" in err.message
    # The decoder must not have flipped Pillow's process-wide "pad truncated files" switch.
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_png_cut_inside_header_is_truncated_not_unknown() -> None:
    data = _encode(Image.fromarray(_noise()), "PNG")
    _raises(data[:30], "truncated_image", 400)


def test_corrupt_png_data_is_a_400() -> None:
    # A valid header followed by an IDAT that is not zlib data.
    data = _png_header(16, 16) + _png_chunk(b"IDAT", b"\xff" * 64) + _png_chunk(b"IEND", b"")
    err = _raises(data, "corrupt_image", 400)
    assert "PNG" in err.message


def test_decompression_bomb_png_is_rejected_from_the_header() -> None:
    data = _bomb_png(20_000)
    assert len(data) < 200_000  # 400 million pixels in a small file: that is the point
    err = _raises(data, "image_too_large", 413)
    assert "400,000,000 pixels" in err.message and "10,000,000" in err.message


def test_forged_header_of_ten_billion_pixels_is_rejected_without_decoding() -> None:
    data = _png_header(100_000, 100_000) + _png_chunk(b"IEND", b"")
    start = time.perf_counter()
    err = _raises(data, "image_too_large", 413)
    assert time.perf_counter() - start < 1.0
    assert "10,000,000,000 pixels" in err.message


def test_own_pixel_limit_applies_below_pillows() -> None:
    # 16 MP is under Pillow's ~89 MP guard, so only decode_image's own check can refuse it.
    data = _png_header(4000, 4000) + _png_chunk(b"IEND", b"")
    err = _raises(data, "image_too_large", 413)
    assert "4000x4000" in err.message and "16,000,000" in err.message
    assert "10,000,000" in err.message


@pytest.fixture(autouse=True)
def _pillow_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    # A decode raises Pillow's process-wide guard to its max_pixels: put it back after each
    # test, so every test starts from Pillow's default.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)


def test_pillow_bomb_warning_band_follows_the_service_limit(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    # 100 MP lies between Pillow's default MAX_IMAGE_PIXELS and twice it, where Pillow only
    # warns: the service's limit decides there, and no warning leaks either way. The default
    # is set here because any earlier decode in this process has raised the process-wide
    # guard to that decode's limit, as it is meant to.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 89_478_485)
    assert Image.MAX_IMAGE_PIXELS < 10_000 * 10_000 < 2 * Image.MAX_IMAGE_PIXELS
    data = _png_header(10_000, 10_000) + _png_chunk(b"IEND", b"")
    filters_before = list(warnings.filters)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        err = _raises(data, "image_too_large", 413, max_pixels=99_999_999)
        # Within a limit of 200 MP the size is allowed: this file then fails for its missing
        # pixel data, not for its size.
        within = _raises(data, "corrupt_image", 400, max_pixels=200_000_000)
    assert caught == []
    assert "100,000,000 pixels" in err.message and "99,999,999" in err.message
    assert "PNG" in within.message
    assert warnings.filters == filters_before


def test_too_small() -> None:
    data = _encode(Image.new("L", (1, 1), 0), "PNG")
    err = _raises(data, "image_too_small", 422)
    assert "1x1" in err.message and "8" in err.message


def test_min_side_checks_each_side() -> None:
    data = _encode(Image.fromarray(_noise(width=100, height=7)), "PNG")
    err = _raises(data, "image_too_small", 422)
    assert "100x7" in err.message
    assert decode_image(data, max_pixels=MAX_PIXELS, min_side=7).pixels.shape == (7, 100)


def test_animated_gif() -> None:
    frames = [Image.fromarray(_noise(seed=s)).convert("P") for s in (1, 2)]
    data = _encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100)
    err = _raises(data, "multi_frame_image", 422)
    assert "GIF" in err.message and "2 frames" in err.message


def test_multi_page_tiff() -> None:
    pages = [Image.fromarray(_noise(seed=s)) for s in (1, 2, 3)]
    data = _encode(pages[0], "TIFF", save_all=True, append_images=pages[1:])
    err = _raises(data, "multi_frame_image", 422)
    assert "3 frames" in err.message


def test_bad_arguments_are_caller_bugs_not_image_errors() -> None:
    data = _encode(Image.fromarray(_noise()), "PNG")
    with pytest.raises(ValueError, match="max_pixels must be a positive int, got 0"):
        decode_image(data, max_pixels=0)
    with pytest.raises(ValueError, match="min_side must be a positive int, got -1"):
        decode_image(data, max_pixels=MAX_PIXELS, min_side=-1)
    with pytest.raises(TypeError, match="got str"):
        decode_image("not bytes", max_pixels=MAX_PIXELS)  # type: ignore[arg-type]


def test_unconvertible_mode_is_a_415_not_corrupt(monkeypatch: pytest.MonkeyPatch) -> None:
    # No accepted format yields such a mode today, so simulate Pillow refusing a conversion;
    # this pins that the ImageError (a ValueError) is not re-wrapped as "corrupt".
    original = Image.Image.convert

    def refuse_cmyk(self: Image.Image, mode: str | None = None, *args: object, **kw: object):
        if self.mode == "CMYK":
            raise ValueError(f"conversion from {self.mode} to {mode} not supported")
        return original(self, mode, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(Image.Image, "convert", refuse_cmyk)
    data = _encode(Image.new("CMYK", (16, 16)), "JPEG")
    err = _raises(data, "unsupported_image_mode", 415)
    assert "CMYK" in err.message


def test_concurrent_decodes_keep_the_bomb_guard_and_the_filters() -> None:
    good = _encode(Image.fromarray(_noise()), "PNG")
    bomb = _png_header(20_000, 20_000) + _png_chunk(b"IEND", b"")
    filters_before = list(warnings.filters)

    def decode(data: bytes) -> str:
        try:
            decode_image(data, max_pixels=200_000_000)
        except ImageError as exc:
            return exc.code
        return "ok"

    with ThreadPoolExecutor(max_workers=4) as pool:
        codes = list(pool.map(decode, [good, bomb] * 8))
    assert codes == ["ok", "image_too_large"] * 8
    assert warnings.filters == filters_before


def test_every_image_error_code_has_a_client_status() -> None:
    # Every code the decoder raises (the literals passed to ImageError in its source) is a
    # 4xx in the error table: an image problem is never answered as a server failure.
    source = inspect.getsource(imaging)
    codes = set(re.findall(r'ImageError\(\s*"([a-z_]+)"', source))
    assert len(codes) >= 9, codes
    for code in codes:
        assert 400 <= DOMAIN_ERRORS[code].status < 500, code


# --- accepted inputs -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "kwargs"),
    [("PNG", {}), ("BMP", {}), ("TIFF", {}), ("WEBP", {"lossless": True}), ("GIF", {})],
)
def test_lossless_formats_round_trip_exactly(fmt: str, kwargs: dict[str, object]) -> None:
    pixels = _noise(width=33, height=17)
    decoded = decode_image(_encode(Image.fromarray(pixels), fmt, **kwargs), max_pixels=MAX_PIXELS)
    assert isinstance(decoded, DecodedImage)
    assert decoded.format == fmt and fmt in ALLOWED_FORMATS
    assert (decoded.width, decoded.height) == (33, 17)
    assert decoded.pixels.dtype == np.uint8 and decoded.pixels.shape == (17, 33)
    np.testing.assert_array_equal(decoded.pixels, pixels)


def test_jpeg_and_bytearray_input() -> None:
    pixels = np.full((24, 40), 200, np.uint8)
    pixels[:, :20] = 30
    data = bytearray(_encode(Image.fromarray(pixels), "JPEG", quality=95))
    decoded = decode_image(data, max_pixels=MAX_PIXELS)
    assert (decoded.format, decoded.mode) == ("JPEG", "L")
    assert np.abs(decoded.pixels.astype(int) - pixels).max() <= 3


def test_sixteen_bit_png_is_scaled_by_257() -> None:
    values = np.array([0, 257, 32896, 65535, 1000, 128, 129, 65406], np.uint16)
    expected = np.array([0, 1, 128, 255, 4, 0, 1, 254], np.uint8)  # round(v / 257)
    image = Image.fromarray(np.tile(values, (8, 1)))
    decoded = decode_image(_encode(image, "PNG"), max_pixels=MAX_PIXELS)
    assert decoded.mode == "I;16"
    np.testing.assert_array_equal(decoded.pixels, np.tile(expected, (8, 1)))


def test_big_endian_sixteen_bit_tiff() -> None:
    values = np.tile(np.array([0, 257, 65535, 32896], ">u2"), (8, 2))
    image = Image.frombytes("I;16B", (8, 8), values.tobytes())
    decoded = decode_image(_encode(image, "TIFF"), max_pixels=MAX_PIXELS)
    assert decoded.mode.startswith("I;16")
    np.testing.assert_array_equal(decoded.pixels[0], [0, 1, 255, 128] * 2)


def test_thirty_two_bit_integer_is_clipped_then_scaled() -> None:
    values = np.tile(np.array([-3, 257, 70000, 65535], np.int32), (8, 2))
    decoded = decode_image(_encode(Image.fromarray(values, "I"), "TIFF"), max_pixels=MAX_PIXELS)
    assert decoded.mode == "I"
    np.testing.assert_array_equal(decoded.pixels[0], [0, 1, 255, 255] * 2)


def test_float_is_clipped_and_rounded() -> None:
    values = np.tile(np.array([-5.0, 0.4, 12.6, 300.0, np.nan, 254.5], np.float32), (8, 2))
    decoded = decode_image(_encode(Image.fromarray(values, "F"), "TIFF"), max_pixels=MAX_PIXELS)
    assert decoded.mode == "F"
    np.testing.assert_array_equal(decoded.pixels[0], [0, 0, 13, 255, 0, 254] * 2)


def test_cmyk_jpeg() -> None:
    image = Image.new("CMYK", (16, 16), (0, 0, 0, 0))  # no ink: white
    image.paste((0, 0, 0, 128), (0, 0, 8, 16))  # half-strength black: RGB 127
    decoded = decode_image(_encode(image, "JPEG", quality=95), max_pixels=MAX_PIXELS)
    assert (decoded.format, decoded.mode) == ("JPEG", "CMYK")
    assert np.abs(decoded.pixels[:, :6].astype(int) - 127).max() <= 2
    assert decoded.pixels[:, 10:].min() >= 253


def test_palette_with_transparency_composites_over_white() -> None:
    image = Image.new("P", (12, 8), 0)
    image.putpalette([0, 0, 0, 255, 0, 0, 0, 0, 255] + [0] * (256 - 3) * 3)
    image.paste(1, (4, 0, 8, 8))  # red
    image.paste(2, (8, 0, 12, 8))  # blue, but this index is transparent
    decoded = decode_image(_encode(image, "PNG", transparency=2), max_pixels=MAX_PIXELS)
    assert decoded.mode == "P"
    np.testing.assert_array_equal(decoded.pixels[0], [0] * 4 + [76] * 4 + [255] * 4)


def test_rgba_transparent_pixels_become_white() -> None:
    rgba = np.zeros((8, 12, 4), np.uint8)  # black everywhere
    rgba[:, :4, 3] = 0  # fully transparent
    rgba[:, 4:8, 3] = 255  # opaque
    rgba[:, 8:, 3] = 128  # half: 255 * 127 / 255 of white shows through
    decoded = decode_image(_encode(Image.fromarray(rgba, "RGBA"), "PNG"), max_pixels=MAX_PIXELS)
    assert decoded.mode == "RGBA"
    np.testing.assert_array_equal(decoded.pixels[0], [255] * 4 + [0] * 4 + [127] * 4)


def test_la_and_one_bit_modes() -> None:
    la = Image.merge("LA", (Image.new("L", (8, 8), 10), Image.new("L", (8, 8), 0)))
    decoded = decode_image(_encode(la, "PNG"), max_pixels=MAX_PIXELS)
    assert decoded.mode == "LA" and int(decoded.pixels.min()) == 255
    bits = Image.new("1", (8, 8), 0)
    bits.paste(1, (0, 0, 4, 8))
    decoded = decode_image(_encode(bits, "PNG"), max_pixels=MAX_PIXELS)
    assert decoded.mode == "1"
    np.testing.assert_array_equal(decoded.pixels[0], [255] * 4 + [0] * 4)


def test_exif_orientation_six_rotates_clockwise() -> None:
    pixels = np.full((20, 40), 255, np.uint8)  # landscape: H=20, W=40
    pixels[:8, :8] = 0  # dark block at the stored top-left corner
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: the camera was turned; display rotated 90 deg clockwise
    data = _encode(Image.fromarray(pixels), "JPEG", quality=95, exif=exif)
    decoded = decode_image(data, max_pixels=MAX_PIXELS)
    assert (decoded.width, decoded.height) == (20, 40)
    assert decoded.pixels.shape == (40, 20)
    # Rotating clockwise carries the top-left corner to the top-right.
    assert decoded.pixels[2, 17] < 40 and decoded.pixels[2, 2] > 215
    assert decoded.pixels[37, 2] > 215


def test_module_does_not_import_tensorflow() -> None:
    # In a fresh interpreter: this test process has TensorFlow loaded already by conftest.
    code = (
        "import sys, app.inference.imaging; "
        "loaded = [m for m in ('tensorflow', 'keras') if m in sys.modules]; "
        "print(loaded); sys.exit(1 if loaded else 0)"
    )
    root = Path(__file__).resolve().parents[3]
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
