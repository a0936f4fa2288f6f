"""The dashboard's figures: boards and fail rate per hour or day, false-call rate per class."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Literal

from fastapi import APIRouter, Query

from app.api.deps import RecordsDep, ReviewAuth
from app.api.openapi import error_responses
from app.api.time_params import utc_param
from app.core.errors import ApiError
from app.records import Stats
from app.services.records_service import read_records

router = APIRouter(prefix="/v1/stats", tags=["inspections"], dependencies=[ReviewAuth])

#: Buckets per answer, at most (a year of hours is 8,760): past it, ask for days.
MAX_BUCKETS = 10_000
_STEP = {"hour": dt.timedelta(hours=1), "day": dt.timedelta(days=1)}


@router.get("", summary="Boards, fail rate and false-call rate over a time range",
            response_model=Stats, responses=error_responses(401, 403, 404, 422, 500, 503))
async def get_stats(
    records: RecordsDep,
    since: Annotated[dt.datetime | None, Query(
        description="Start (ISO 8601 with a zone); default: 24 hours before until.")] = None,
    until: Annotated[dt.datetime | None, Query(
        description="End, exclusive (ISO 8601 with a zone); default: now.")] = None,
    bucket: Literal["hour", "day"] = "hour",
) -> Stats:
    """For the boards inspected in ``[since, until)``: boards and failed boards per UTC hour
    (or day), every bucket listed; and per class, the review outcomes of the model's calls
    and the false-call rate (false calls / reviewed calls; current reviews only)."""
    end = utc_param("until", until) or dt.datetime.now(dt.UTC)
    start = utc_param("since", since) or end - dt.timedelta(hours=24)
    if start >= end:
        raise ApiError(422, "invalid_time",
                       f"since ({start.isoformat()}) must be before until ({end.isoformat()})")
    if (end - start) / _STEP[bucket] > MAX_BUCKETS:
        raise ApiError(422, "too_many_buckets",
                       f"{bucket} buckets from {start.isoformat()} to {end.isoformat()} are "
                       f"more than {MAX_BUCKETS:,}; expected a shorter range or bucket=day")
    return await read_records(records.stats, start, end, bucket)
