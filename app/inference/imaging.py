"""Decoding of uploaded image files into the model's input: a 2-D uint8 grayscale array.

This module deliberately does not import TensorFlow, so that validating an upload stays cheap
and can happen before a request ever reaches the model.

Every client-side problem with the bytes (empty, not an image, truncated, too large, animated,
too small, an unaccepted format) is raised as :class:`ImageError`, which carries a short
machine code and a one-line message for an operator on the factory line (the status it is
answered with is in :data:`app.core.errors.DOMAIN_ERRORS`). Nothing Pillow raises while
parsing untrusted bytes is allowed to escape as anything else.
"""

from __future__ import annotations

import io
import re
import struct
import threading
import warnings
import zlib
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from app.core.domain_errors import DomainError

__all__ = ["ALLOWED_FORMATS", "DecodedImage", "ImageError", "declared_pixels", "decode_image"]

#: Pillow format names the service accepts. GIF is accepted only as a single frame.
ALLOWED_FORMATS: frozenset[str] = frozenset({"PNG", "JPEG", "BMP", "TIFF", "WEBP", "GIF"})

# Pillow reports a JPEG that carries several pictures (Multi-Picture Format, written by some
# cameras) as "MPO". It is still a JPEG file, so it is judged as one: a single picture is
# accepted, several are rejected as multi-frame like any other animation.
_FORMAT_ALIASES = {"MPO": "JPEG"}

_EXPECTED = "a PNG, JPEG, BMP, TIFF, WEBP or single-frame GIF image"

# File signatures: a file that claims to be, say, a PNG but whose header Pillow cannot parse is
# damaged (400), not "not an image" (415), which would send the operator the wrong way.
_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"\xff\xd8\xff", "JPEG"), (b"GIF87a", "GIF"), (b"GIF89a", "GIF"), (b"BM", "BMP"),
    (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"),
)

# What Pillow's decoders raise on malformed input. Plugins are not consistent: the same
# damage surfaces as OSError ("image file is truncated"), SyntaxError (bad chunk or marker),
# struct.error (short header read), ValueError, EOFError, IndexError or zlib.error.
_DECODE_ERRORS: tuple[type[BaseException], ...] = (
    OSError, SyntaxError, ValueError, struct.error, EOFError, IndexError, KeyError,
    zlib.error, ZeroDivisionError, OverflowError,
)
_IDENTIFY_ERRORS: tuple[type[BaseException], ...] = (
    Image.DecompressionBombError, Image.DecompressionBombWarning, *_DECODE_ERRORS,
)

# ``warnings.catch_warnings`` swaps the process-wide filter list and puts it back on exit; two
# threads doing that at once can restore each other's filters out of order. Decoding is
# bounded by ``max_pixels``, so serialising it costs little, and it keeps the bomb guard
# reliable when the server decodes in a thread pool.
_DECODE_LOCK = threading.Lock()

_BOMB_PIXELS = re.compile(r"\((\d+) pixels\)")


class ImageError(DomainError, ValueError):
    """A client-side image problem.

    Attributes:
        code: Short snake_case machine code, e.g. ``"empty_image"``, ``"not_an_image"``,
            ``"truncated_image"``, ``"corrupt_image"``, ``"image_too_large"``,
            ``"multi_frame_image"``, ``"image_too_small"``, ``"unsupported_image_format"``,
            ``"unsupported_image_mode"``.
        message: One line an operator on the factory line understands, naming the value
            received and what is expected.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message, code=code)

    def __repr__(self) -> str:
        return f"ImageError(code={self.code!r}, message={self.message!r})"


# eq=False: the generated __eq__/__hash__ would compare and hash the pixel array, which numpy
# refuses ("truth value of an array is ambiguous" / unhashable type).
@dataclass(frozen=True, eq=False)
class DecodedImage:
    """A decoded upload, ready for the model.

    Attributes:
        pixels: ``(H, W)`` uint8 grayscale array, EXIF orientation applied.
        width: ``W``, after EXIF orientation.
        height: ``H``, after EXIF orientation.
        format: Pillow's name of the file format: ``"PNG"``, ``"JPEG"``, ``"BMP"``, ...
        mode: The original Pillow mode, e.g. ``"L"``, ``"I;16"``, ``"P"``, ``"RGBA"``.
    """

    pixels: np.ndarray
    width: int
    height: int
    format: str
    mode: str


def decode_image(
    data: bytes | bytearray | memoryview, *, max_pixels: int, min_side: int = 8
) -> DecodedImage:
    """Decodes an uploaded image file into a 2-D uint8 grayscale array.

    The header is read first and the size checked against ``max_pixels`` before any pixel is
    decoded, so a file whose header claims a huge image is refused without allocating memory
    for it. ``max_pixels`` is the limit in force: Pillow's own decompression-bomb guard
    (``Image.MAX_IMAGE_PIXELS``, 89,478,485 by default) is raised to it if lower, and stays
    on above it as a second line (its warning raised as an error here).

    Conversion to grayscale:
        * ``1``, ``L``, ``P``, ``RGB``, ``CMYK``, ``YCbCr``, ...: Pillow's standard ``"L"``
          conversion (ITU-R 601-2 luma).
        * Any transparency (``RGBA``, ``LA``, ``PA``, palette or colour-key transparency) is
          composited over a white background first: bare PCB substrate is light, so a
          transparent region reads as "no copper".
        * 16-bit (``I;16``, ``I;16B``, ``I;16L``) and 32-bit integer (``I``) images are taken
          as full-range 16-bit data and scaled by the type's range, ``round(v / 257)``, which
          maps 0..65535 exactly onto 0..255. No per-image contrast stretch is applied, so the
          same board scanned twice gives the same gray levels. ``I`` values outside 0..65535
          are clipped, and a 16-bit image's transparency, if any, is ignored.
        * ``F`` (float) images are clipped to 0..255 and rounded; NaN becomes 0.

    Args:
        data: The uploaded file's bytes (any bytes-like object).
        max_pixels: Largest accepted ``width * height``. Must be positive.
        min_side: Smallest accepted width and height, in pixels. Must be positive.

    Returns:
        The decoded image.

    Raises:
        ImageError: If the bytes are not an acceptable image; see the class for codes.
        TypeError: If ``data`` is not bytes-like.
        ValueError: If ``max_pixels`` or ``min_side`` is not positive (a caller bug).
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TypeError(f"data must be bytes, got {type(data).__name__}")
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels <= 0:
        raise ValueError(f"max_pixels must be a positive int, got {max_pixels!r}")
    if isinstance(min_side, bool) or not isinstance(min_side, int) or min_side <= 0:
        raise ValueError(f"min_side must be a positive int, got {min_side!r}")
    data = bytes(data)
    if not data:
        raise ImageError("empty_image", f"the upload is empty (0 bytes); expected {_EXPECTED}")

    declared = _header_size(data)
    if declared is not None:
        _check_size(*declared, max_pixels=max_pixels)

    with _DECODE_LOCK, warnings.catch_warnings():
        _raise_pillow_limit(max_pixels)
        # Pillow only *warns* between MAX_IMAGE_PIXELS and twice that; an error here turns
        # that band into a clean 413 instead of a decode of a possible bomb.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            return _decode(data, max_pixels=max_pixels, min_side=min_side)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise _bomb_error(exc, max_pixels) from exc


def declared_pixels(data: bytes) -> int | None:
    """``width * height`` as the file's header declares it, read without decoding a pixel
    (``None``: no header Pillow can read; :func:`decode_image` then says what is wrong).

    Takes no lock and touches no process-wide state, so it never waits for a decode."""
    declared = _header_size(data)
    return None if declared is None else declared[1] * declared[2]


def _header_size(data: bytes) -> tuple[str, int, int] | None:
    """``(format, width, height)`` from the header, by the accepted formats' own readers.

    Not ``Image.open``: it runs Pillow's bomb guard, which warns through the process-wide
    warnings filters that :func:`decode_image` swaps under ``_DECODE_LOCK``; the readers alone
    parse the header and nothing else.
    """
    prefix = data[:16]
    for fmt in sorted(ALLOWED_FORMATS):
        if fmt not in Image.OPEN:
            Image.init()  # the plugins that preinit() does not import (TIFF, WEBP)
        factory, accept = Image.OPEN[fmt]
        accepted = accept(prefix) if accept is not None else True
        if isinstance(accepted, str) or not accepted:  # a str: Pillow's "not quite" note
            continue
        try:
            with factory(io.BytesIO(data), "") as img:
                width, height = img.size
                name = _FORMAT_ALIASES.get(str(img.format), str(img.format))
        except Exception:  # unreadable here: the decode names what is wrong
            continue
        return name, int(width), int(height)
    return None


def _check_size(fmt: str, width: int, height: int, *, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise ImageError(
            "image_too_large",
            f"the {fmt} image is {width}x{height} = {width * height:,} pixels; "
            f"the limit is {max_pixels:,} pixels",
        )


def _raise_pillow_limit(max_pixels: int) -> None:
    """Raises Pillow's process-wide bomb guard to ``max_pixels`` if it is lower, so that the
    service's limit is the one in force. Only ever raised, and only under ``_DECODE_LOCK``: a
    decode with a lower limit of its own still refuses by its header first."""
    if Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS < max_pixels:
        Image.MAX_IMAGE_PIXELS = max_pixels


def _decode(data: bytes, *, max_pixels: int, min_side: int) -> DecodedImage:
    """The body of :func:`decode_image`, run with the bomb warning turned into an error."""
    # ImageFile.LOAD_TRUNCATED_IMAGES is process-wide and left alone (False): with it on,
    # Pillow pads a truncated file with gray and a damaged board would be inspected as if real.
    try:
        img = Image.open(io.BytesIO(data), formats=sorted(ALLOWED_FORMATS))
    except UnidentifiedImageError as exc:
        raise _unidentified_error(data) from exc
    except _DECODE_ERRORS as exc:
        raise _damaged_error(_sniff(data) or "image", data, exc) from exc

    with img:
        fmt = _FORMAT_ALIASES.get(str(img.format), str(img.format))
        mode = img.mode
        if fmt not in ALLOWED_FORMATS:  # pragma: no cover - open() is restricted to these
            raise _format_error(fmt)
        width, height = img.size
        _check_size(fmt, width, height, max_pixels=max_pixels)
        if width < min_side or height < min_side:
            raise ImageError(
                "image_too_small",
                f"the {fmt} image is {width}x{height} pixels; "
                f"each side must be at least {min_side} pixels",
            )
        try:
            # For GIF and TIFF this walks the frame headers, not the pixel data.
            n_frames = int(getattr(img, "n_frames", 1))
        except _DECODE_ERRORS as exc:
            raise _damaged_error(fmt, data, exc) from exc
        if n_frames > 1:
            raise ImageError(
                "multi_frame_image",
                f"the {fmt} image has {n_frames} frames (an animation or several pages); "
                "expected a single-frame image",
            )
        try:
            img.load()
            # exif_transpose needs the pixels; in_place avoids a second full-size copy.
            ImageOps.exif_transpose(img, in_place=True)
            pixels = _to_gray(img)
        except ImageError:
            raise  # already a client error; it is a ValueError, so it must not be re-wrapped
        except _DECODE_ERRORS as exc:
            raise _damaged_error(fmt, data, exc) from exc

    height, width = pixels.shape
    return DecodedImage(pixels=pixels, width=width, height=height, format=fmt, mode=mode)


def _to_gray(img: Image.Image) -> np.ndarray:
    """Converts a loaded Pillow image of any supported mode to a ``(H, W)`` uint8 array."""
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # Widen before adding so 65535 + 128 cannot wrap; (v + 128) // 257 == round(v / 257).
        wide = np.asarray(img).astype(np.int64)
        np.clip(wide, 0, 65535, out=wide)
        return ((wide + 128) // 257).astype(np.uint8)
    if mode == "F":
        values = np.nan_to_num(np.asarray(img, dtype=np.float64), nan=0.0, posinf=255.0,
                               neginf=0.0)
        return np.rint(np.clip(values, 0.0, 255.0)).astype(np.uint8)
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        gray = Image.alpha_composite(white, rgba).convert("L")
    elif mode in ("1", "L", "P", "RGB"):
        gray = img.convert("L")
    else:
        # CMYK, YCbCr, LAB, HSV: Pillow converts these to L only by way of RGB.
        try:
            gray = img.convert("RGB").convert("L")
        except ValueError as exc:
            raise ImageError(
                "unsupported_image_mode",
                f"the image's pixel mode {mode} cannot be converted to grayscale; "
                "expected grayscale, palette, RGB(A), CMYK or 16-bit grayscale pixels",
            ) from exc
    return np.array(gray, dtype=np.uint8)


def _sniff(data: bytes) -> str | None:
    """Names the accepted format whose signature ``data`` starts with, if any."""
    for signature, fmt in _SIGNATURES:
        if data.startswith(signature):
            return fmt
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return None


def _unidentified_error(data: bytes) -> ImageError:
    """The error for bytes that none of the accepted formats' readers could parse."""
    claimed = _sniff(data)
    if claimed is not None:
        return ImageError(
            "truncated_image",
            f"the {claimed} file's header is cut short or damaged ({len(data):,} bytes "
            f"received); expected a complete {claimed} file",
        )
    # Only now ask every Pillow reader, and only for the format's name, so that an ICO or PSD
    # is reported as "unsupported format" rather than as "not an image".
    try:
        with Image.open(io.BytesIO(data)) as other:
            other_format = other.format
    except _IDENTIFY_ERRORS:
        other_format = None
    if other_format:
        return _format_error(other_format)
    return ImageError(
        "not_an_image",
        f"the upload ({len(data):,} bytes) is not a recognisable image file; expected {_EXPECTED}",
    )


def _format_error(fmt: str) -> ImageError:
    return ImageError(
        "unsupported_image_format",
        f"image format {fmt} is not accepted; expected {_EXPECTED}",
    )


def _damaged_error(fmt: str, data: bytes, exc: BaseException) -> ImageError:
    """The error for an accepted format whose data cannot be decoded."""
    detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if "truncated" in detail.lower() or isinstance(exc, EOFError | struct.error):
        return ImageError(
            "truncated_image",
            f"the {fmt} image is truncated: its data ends early ({len(data):,} bytes "
            f"received); expected a complete {fmt} file",
        )
    return ImageError(
        "corrupt_image",
        f"the {fmt} image is damaged and cannot be decoded ({detail}); "
        f"expected a valid {fmt} file",
    )


def _bomb_error(exc: BaseException, max_pixels: int) -> ImageError:
    """The error for an image Pillow's decompression-bomb guard refused."""
    match = _BOMB_PIXELS.search(str(exc))
    received = f"{int(match.group(1)):,} pixels" if match else "more pixels than allowed"
    limit = max_pixels
    if Image.MAX_IMAGE_PIXELS is not None:
        limit = min(max_pixels, Image.MAX_IMAGE_PIXELS)
    return ImageError(
        "image_too_large",
        f"the image declares {received}; the limit is {limit:,} pixels",
    )

