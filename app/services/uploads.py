"""Uploaded images as the services take them, and their decoding under the service's limits.

Reading them from a request (multipart fields or a raw body) is the routes' part:
:mod:`app.api.uploads`. A board and a golden board (uploaded or stored) obey exactly the same
limits and image rules.
"""

from __future__ import annotations

import dataclasses

from anyio.to_thread import run_sync

from app.core.config import MAX_FILENAME_CHARS, MIN_IMAGE_SIDE, Settings
from app.inference.imaging import DecodedImage, ImageError, decode_image


@dataclasses.dataclass(frozen=True)
class Upload:
    """One uploaded file."""

    filename: str | None
    data: bytes
    #: The form field it came in, where a request can name one image in two ways (the golden
    #: board's ``golden`` or ``template``): its errors then name the field the client used.
    field: str | None = None


def _check_filename(upload: Upload, settings: Settings) -> None:
    if upload.filename and len(upload.filename) > MAX_FILENAME_CHARS:
        raise ImageError(
            "filename_too_long",
            f"The filename has {len(upload.filename)} characters; at most "
            f"{MAX_FILENAME_CHARS} are accepted.",
        )


async def decode_upload(
    upload: Upload, settings: Settings, field: str | None = None
) -> DecodedImage:
    """Decodes one upload under the service's image limits (in a worker thread).

    ``field``: named at the start of the message (``"template: not an image ..."`` for the
    golden board's field) when the request carries more than one kind of image, so the
    operator knows which one to fix.

    Raises:
        ImageError: The upload is not an acceptable image.
    """
    try:
        _check_filename(upload, settings)
        return await run_sync(
            lambda: decode_image(
                upload.data,
                max_pixels=settings.limits.max_image_pixels,
                min_side=MIN_IMAGE_SIDE,
            )
        )
    except ImageError as exc:
        if field is None:
            raise
        raise ImageError(exc.code, f"{field}: {exc.message}") from None
