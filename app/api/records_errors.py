"""The records' errors as API errors, and the one way the routes call the (blocking) records."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy.exc import DBAPIError
from starlette.concurrency import run_in_threadpool

from app.core.errors import ApiError
from app.records import (
    InvalidBoxError,
    InvalidCursorError,
    ReviewValidationError,
    UnknownClassError,
    UnknownDefectError,
    UnknownInspectionError,
)
from app.services.records import ImageNotKeptError

T = TypeVar("T")

_REVIEW_CODES: tuple[tuple[type[ReviewValidationError], str], ...] = (
    (UnknownDefectError, "unknown_defect"),
    (UnknownClassError, "unknown_class"),
    (InvalidBoxError, "box_outside_image"),
)


def api_error(exc: Exception) -> ApiError | None:
    """The API error of a records error; ``None`` for anything else."""
    if isinstance(exc, UnknownInspectionError):
        return ApiError(404, "unknown_inspection",
                        f"No inspection has id {exc.inspection_id!r}; expected an "
                        "inspection_id from /predict or GET /v1/inspections.")
    if isinstance(exc, ImageNotKeptError):
        return ApiError(404, "image_not_kept",
                        f"The image of inspection {exc.args[0]!r} was not kept "
                        "(PCB_IMAGES_KEEP) or has expired (PCB_IMAGES_RETENTION_DAYS, _MB).")
    if isinstance(exc, InvalidCursorError):
        return ApiError(422, "invalid_cursor", str(exc))
    if isinstance(exc, ReviewValidationError):
        code = next((c for t, c in _REVIEW_CODES if isinstance(exc, t)), "invalid_review")
        return ApiError(422, code, str(exc))
    if isinstance(exc, DBAPIError):
        # Inspections keep being recorded (to the spool); only reading waits for the database.
        return ApiError(503, "records_unavailable",
                        "The records database does not answer; inspections are still "
                        "recorded (spooled). Retry shortly.", {"Retry-After": "5"})
    return None


async def call_records(fn: Callable[..., T], *args: Any) -> T:
    """Runs a blocking records call in the threadpool, its errors as API errors."""
    try:
        return await run_in_threadpool(fn, *args)
    except Exception as exc:
        error = api_error(exc)
        if error is None:
            raise
        raise error from None


def utc_param(name: str, value: dt.datetime | None) -> dt.datetime | None:
    """A time query parameter in UTC; 422 ``invalid_time`` for one without a zone, which
    could mean the server's zone or UTC."""
    if value is None:
        return None
    if value.tzinfo is None or value.utcoffset() is None:
        raise ApiError(422, "invalid_time",
                       f"{name}: expected a time with its zone, e.g. 2025-01-31T08:00:00Z, "
                       f"received {value.isoformat()!r} (no zone)")
    received = value.isoformat()
    try:
        value = value.astimezone(dt.UTC)
    except OverflowError:
        # A zone that moves the time before year 1 or past 9999 (0001-01-01T00:00+14:00).
        value = dt.datetime.min.replace(tzinfo=dt.UTC)
    if not 1900 <= value.year <= 9998:
        # Buckets and ranges are computed in datetimes, which end at the year 9999.
        raise ApiError(422, "invalid_time",
                       f"{name}: expected a year from 1900 to 9998 (UTC), received {received!r}")
    return value
