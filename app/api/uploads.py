"""The HTTP side of the services' inputs: uploaded images read from a request (multipart fields
or a raw image body), its declared length, and whether its client is still there.

The services take what this reads (:class:`app.services.uploads.Upload`, a disconnect check)
and know nothing of requests. The bodies' OpenAPI description is in :mod:`app.api.openapi`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request

from app.core.config import MAX_FORM_FIELDS, Settings
from app.core.errors import ApiError
from app.services.uploads import Upload


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


async def _raw_body(request: Request) -> bytes:
    """The whole body, as ``request.body()`` reads it, but joined in a worker thread: copying
    an image of tens of megabytes into one buffer takes milliseconds that every other request,
    ``/livez`` included, would wait out on the event loop."""
    chunks = [chunk async for chunk in request.stream()]
    body = await run_in_threadpool(b"".join, chunks)
    request._body = body  # what ``request.body()`` returns from now on, as if it had read it
    return body


async def read_upload_form(
    request: Request, settings: Settings, field: str, optional: tuple[str, ...] = (),
    texts: tuple[str, ...] = (),
) -> UploadForm:
    """Reads the images of a request: the required multipart field ``field`` and the
    ``optional`` ones, or (for ``field == "file"``) a raw image body; and the values of the
    multipart text fields ``texts`` (board metadata sent as form fields).

    A route that reads its files this way declares no body parameters; describe its body with
    :func:`app.api.openapi.upload_doc`.

    Raises:
        ApiError: 400 for a missing part, 413 past a limit, 415 for another content type.
    """
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
        return UploadForm([Upload(None, await _raw_body(request))],
                          {name: [] for name in optional}, {name: [] for name in texts})
    allowed = "multipart/form-data" + (" or image/*" if field == "file" else "")
    raise ApiError(
        415,
        "unsupported_media_type",
        f"Content-Type {content_type or '(none)'!r} is not accepted; send {allowed}.",
    )


async def read_uploads(request: Request, settings: Settings, field: str) -> list[Upload]:
    """The images of the multipart field ``field`` (or a raw image body for ``"file"``)."""
    return (await read_upload_form(request, settings, field)).uploads


def one_upload(uploads: list[Upload], refusal: str) -> Upload:
    """The one image of a field; 400 ``too_many_files`` with ``refusal`` for several."""
    if len(uploads) > 1:
        raise ApiError(400, "too_many_files", refusal)
    return uploads[0]


def declared_length(request: Request) -> int | None:
    """The request's Content-Length; ``None`` when it has none (chunked) or it is not a
    number."""
    length = request.headers.get("content-length", "")
    return int(length) if length.isdigit() else None


def disconnect_check(request: Request) -> Callable[[], Awaitable[bool]]:
    """What a service polls to learn that the request's client has left."""
    return request.is_disconnected
