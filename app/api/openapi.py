"""OpenAPI pieces shared by the routes: the bodies of routes that read their own uploads, and
the error responses."""

from __future__ import annotations

from typing import Any

from app.api.schemas import ErrorResponse

#: OpenAPI schema of one uploaded file, as a multipart field or as a raw body.
BINARY: dict[str, str] = {"type": "string", "format": "binary"}


def upload_doc(
    properties: dict[str, Any], required: list[str], raw_types: tuple[str, ...] = ()
) -> dict[str, Any]:
    """The ``openapi_extra`` of a route that reads its files itself (with
    :func:`app.api.uploads.read_upload_form`).

    Such a route declares no body parameters, so FastAPI cannot describe the body; this does.

    Args:
        properties: The multipart fields, by name, as OpenAPI schemas.
        required: The names of the fields a request must carry.
        raw_types: Media types also accepted as a raw one-image body instead of multipart.

    Returns:
        ``{"requestBody": ...}`` for the route's ``openapi_extra``.
    """
    content: dict[str, Any] = {
        "multipart/form-data": {
            "schema": {"type": "object", "required": required, "properties": properties}
        }
    }
    content.update({media_type: {"schema": BINARY} for media_type in raw_types})
    return {"requestBody": {"required": True, "content": content}}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The ``responses`` entries of a route's error statuses, each with the one error shape."""
    return {status: {"model": ErrorResponse} for status in statuses}
