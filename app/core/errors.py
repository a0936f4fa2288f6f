"""One error shape for every failure: ``{"error": {"code": ..., "message": ...}}``.

Handlers turn every exception into that JSON, so a client never sees a stack trace; a
``500`` says only that the server failed and carries the request id to look it up in the logs.

The services, records and inference raise domain errors (:mod:`app.core.domain_errors`), which
:data:`DOMAIN_ERRORS` answers by their code; :class:`ApiError` is for what only the HTTP layer
knows (a malformed body, a query parameter).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from app.core.domain_errors import DomainError
from app.core.metrics import REJECTED

logger = logging.getLogger("pcb_inspect.errors")


class ApiError(Exception):
    """An error with its HTTP status, machine-readable code and operator-readable message,
    raised by the HTTP layer only (routes, middleware)."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        headers: dict[str, str] | None = None,
        reject_reason: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}
        # Client errors and load shedding are counted as rejections, by reason.
        self.reject_reason = reject_reason or (code if 400 <= status < 600 else None)


@dataclasses.dataclass(frozen=True)
class HttpOf:
    """How a domain error is answered: its status, and the reason its rejection is counted
    under (``None``: its code)."""

    status: int
    reason: str | None = None


#: The one place where a domain error (:class:`app.core.domain_errors.DomainError`) becomes
#: HTTP: its code, the same in the JSON body, gives the status. Keyed by code, not class: the
#: classes live in the layers above core (services, records, inference), which core does not
#: import.
DOMAIN_ERRORS: dict[str, HttpOf] = {
    # The uploaded image (app.inference.imaging, and the upload's filename).
    "empty_image": HttpOf(400),
    "truncated_image": HttpOf(400),
    "corrupt_image": HttpOf(400),
    "filename_too_long": HttpOf(400),
    "image_too_large": HttpOf(413),
    "not_an_image": HttpOf(415),
    "unsupported_image_format": HttpOf(415),
    "unsupported_image_mode": HttpOf(415),
    "image_too_small": HttpOf(422),
    "multi_frame_image": HttpOf(422),
    # The request's values.
    "invalid_metadata": HttpOf(422),
    "invalid_product": HttpOf(422),
    "invalid_recipe": HttpOf(422),
    "alignment_failed": HttpOf(422),
    # What the request names and the service does not have.
    "unknown_product": HttpOf(404),
    "unknown_recipe": HttpOf(404),
    "recipe_outdated": HttpOf(409),
    # Records and reviews.
    "unknown_inspection": HttpOf(404),
    "image_not_kept": HttpOf(404),
    "invalid_cursor": HttpOf(422),
    "invalid_review": HttpOf(422),
    "unknown_defect": HttpOf(422),
    "unknown_class": HttpOf(422),
    "box_outside_image": HttpOf(422),
    # Load, time and the client.
    "overloaded": HttpOf(503, "queue_full"),
    "over_capacity": HttpOf(503, "memory_budget"),
    "shutting_down": HttpOf(503),
    "pair_model_unavailable": HttpOf(503),
    "records_unavailable": HttpOf(503),
    "timeout": HttpOf(504),
    # nginx's "client closed request": never read, it labels logs and metrics.
    "client_closed_request": HttpOf(499),
    # The server's own failures.
    "model_error": HttpOf(500),
    "golden_store_error": HttpOf(500),
    "recipe_store_error": HttpOf(500),
}


def as_api_error(exc: DomainError) -> ApiError:
    """The HTTP answer of a domain error, by :data:`DOMAIN_ERRORS`.

    Raises:
        KeyError: A code the table does not have: a server bug, answered as one (500).
    """
    http = DOMAIN_ERRORS[exc.code]
    headers = {} if exc.retry_after_s is None else {"Retry-After": str(exc.retry_after_s)}
    return ApiError(http.status, exc.code, exc.message, headers, reject_reason=http.reason)


def error_body(code: str, message: str, **extra: Any) -> dict[str, Any]:
    """Builds the JSON error body."""
    return {"error": {"code": code, "message": message, **extra}}


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    """Builds a JSON error response."""
    return JSONResponse(error_body(code, message), status_code=status, headers=headers)


_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    429: "too_many_requests",
    503: "unavailable",
}


def count_rejection(error: ApiError | DomainError) -> None:
    """Counts a client error or shed load as a rejection, by reason (a 500 is no rejection)."""
    if isinstance(error, DomainError):
        error = as_api_error(error)
    if error.reject_reason and error.status != 500:
        REJECTED.labels(reason=error.reject_reason).inc()


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    count_rejection(exc)
    return error_response(exc.status, exc.code, exc.message, exc.headers)


async def _domain_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, DomainError)
    if exc.code not in DOMAIN_ERRORS:
        return await _unhandled(request, exc)
    return await _api_error(request, as_api_error(exc))


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    REJECTED.labels(reason=code).inc()
    return error_response(exc.status_code, code, str(exc.detail), dict(exc.headers or {}))


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        parts.append(f"{loc}: {err.get('msg')}")
    REJECTED.labels(reason="invalid_request").inc()
    return error_response(422, "invalid_request", "; ".join(parts) or "invalid request")


async def _client_gone(request: Request, exc: Exception) -> JSONResponse:
    # The client hung up mid-upload: nothing failed here, so no 500 and no traceback. The
    # 499 (nginx's "client closed request") is never read; it only labels logs and metrics.
    REJECTED.labels(reason="client_closed_request").inc()
    logger.info("the client closed the request before its body arrived")
    return error_response(499, "client_closed_request", "The client closed the request.")


async def _unhandled(request: Request, exc: Exception) -> JSONResponse:
    request_id = getattr(request.state, "request_id", "-")
    logger.exception("unhandled error", extra={"request_id": request_id})
    # Starlette answers unhandled errors from its outermost layer, outside the middleware that
    # adds X-Request-ID to every other response, so the header is set here.
    headers = {"X-Request-ID": request_id} if request_id != "-" else None
    return error_response(
        500,
        "internal_error",
        f"The server failed to process this request (request id {request_id}).",
        headers,
    )


def install_error_handlers(app: FastAPI) -> None:
    """Registers the JSON error handlers on ``app``."""
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(DomainError, _domain_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(ClientDisconnect, _client_gone)
    app.add_exception_handler(Exception, _unhandled)
