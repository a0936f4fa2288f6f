"""Reading uploaded images from a request: multipart fields or a raw image body.

Shared by the inspection service and the golden-board routes, so that a board, a template and
a golden board obey exactly the same limits and image rules. Their OpenAPI description is in
:mod:`app.api.openapi`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request

from app.core.config import MAX_FILENAME_CHARS, MAX_FORM_FIELDS, MIN_IMAGE_SIDE, Settings
from app.core.errors import ApiError
from app.inference.imaging import DecodedImage, ImageError, decode_image


@dataclasses.dataclass(frozen=True)
class Upload:
    """One uploaded file."""

    filename: str | None
    data: bytes


@dataclasses.dataclass(frozen=True)
class UploadForm:
    """What :func:`read_upload_form` read: the files of each field and the named text fields
    (empty for a raw image body)."""

    uploads: list[Upload]
    extra: dict[str, list[Upload]]
    texts: dict[str, list[str]]


async def _read_form(request: Request, settings: Settings) -> Any:
    try:
        return await request.form(
            max_files=settings.limits.max_batch_files, max_fields=MAX_FORM_FIELDS
        )
    except StarletteHTTPException as exc:
        detail = str(exc.detail)
        if detail.startswith("Too many files"):
            raise ApiError(
                413, "too_many_files",
                f"Too many files: at most {settings.limits.max_batch_files} per request "
                "(PCB_LIMITS_MAX_BATCH_FILES).",
            ) from None
        if detail.startswith("Too many fields"):
            raise ApiError(
                413, "too_many_fields",
                f"Too many form fields: at most {MAX_FORM_FIELDS} per request.",
            ) from None
        raise ApiError(400, "malformed_multipart", f"Malformed multipart body: {detail}") from None


async def read_upload_fields(
    request: Request, settings: Settings, field: str, optional: tuple[str, ...] = ()
) -> tuple[list[Upload], dict[str, list[Upload]]]:
    """Reads the images of a request: the required multipart field ``field`` and the
    ``optional`` ones, or (for ``field == "file"``) a raw image body.

    A route that reads its files this way declares no body parameters; describe its body with
    :func:`app.api.openapi.upload_doc`.

    Returns:
        ``(uploads of field, {optional field: its uploads, possibly none})``.

    Raises:
        ApiError: 400 for a missing part, 413 past a limit, 415 for another content type.
    """
    form = await read_upload_form(request, settings, field, optional)
    return form.uploads, form.extra


async def read_upload_form(
    request: Request, settings: Settings, field: str, optional: tuple[str, ...] = (),
    texts: tuple[str, ...] = (),
) -> UploadForm:
    """:func:`read_upload_fields`, and the values of the multipart text fields ``texts``
    (board metadata sent as form fields)."""
    content_type = request.headers.get("content-type", "").lower()
    if content_type.startswith("multipart/form-data"):
        form = await _read_form(request, settings)
        try:
            values = {name: [v for v in form.getlist(name) if isinstance(v, str)]
                      for name in texts}
            by_field: dict[str, list[Upload]] = {}
            for name in (field, *optional):
                parts = [p for p in form.getlist(name) if isinstance(p, UploadFile)]
                by_field[name] = [Upload(u.filename, await u.read()) for u in parts]
            if not by_field[field]:
                files = sorted({k for k, v in form.multi_items() if isinstance(v, UploadFile)})
                got = f" Received file fields: {files}." if files else " Received no file."
                raise ApiError(
                    400, "missing_file", f"No image in the multipart field '{field}'.{got}"
                )
            return UploadForm(by_field.pop(field), by_field, values)
        finally:
            # Nothing else closes a form read by hand: its spooled temp files would leak.
            await form.close()
    if field == "file" and (
        content_type.startswith("image/") or content_type == "application/octet-stream"
    ):
        return UploadForm([Upload(None, await request.body())],
                          {name: [] for name in optional}, {name: [] for name in texts})
    allowed = "multipart/form-data" + (" or image/*" if field == "file" else "")
    raise ApiError(
        415,
        "unsupported_media_type",
        f"Content-Type {content_type or '(none)'!r} is not accepted; send {allowed}.",
    )


async def read_uploads(request: Request, settings: Settings, field: str) -> list[Upload]:
    """The images of the multipart field ``field`` (or a raw image body for ``"file"``)."""
    uploads, _ = await read_upload_fields(request, settings, field)
    return uploads


def _check_filename(upload: Upload, settings: Settings) -> None:
    if upload.filename and len(upload.filename) > MAX_FILENAME_CHARS:
        raise ImageError(
            "filename_too_long",
            f"The filename has {len(upload.filename)} characters; at most "
            f"{MAX_FILENAME_CHARS} are accepted.",
            400,
        )


async def decode_upload(upload: Upload, settings: Settings) -> DecodedImage:
    """Decodes one upload under the service's image limits (in the threadpool).

    Raises:
        ImageError: The upload is not an acceptable image (its status and code).
    """
    _check_filename(upload, settings)
    return await run_in_threadpool(
        decode_image,
        upload.data,
        max_pixels=settings.limits.max_image_pixels,
        min_side=MIN_IMAGE_SIDE,
    )


async def decode_or_error(
    upload: Upload, settings: Settings, field: str | None = None
) -> DecodedImage:
    """:func:`decode_upload`, with an image problem raised as the API error.

    ``field``: named at the start of the message (``"template: not an image ..."``) when the
    request carries more than one kind of image, so the operator knows which one to fix.
    """
    try:
        return await decode_upload(upload, settings)
    except ImageError as exc:
        prefix = f"{field}: " if field else ""
        raise ApiError(exc.status, exc.code, prefix + exc.message) from None
