"""Time query parameters: in UTC, with a zone, within the years the records can count."""

from __future__ import annotations

import datetime as dt

from app.core.errors import ApiError


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
