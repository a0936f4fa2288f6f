"""Inspection records: query, one record and its image, export, review, deletion.

Thin routes over :class:`app.services.records_service.RecordsService`. Reading and reviewing
need the ``review`` role; exporting and deleting ``admin``.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query
from fastapi.responses import Response, StreamingResponse

from app.api.deps import AdminAuth, RecordsDep, ReviewAuth, ReviewerDep
from app.api.json_body import bounded_json_route
from app.api.openapi import error_responses
from app.api.review_schemas import InspectionUnitsOut, ReviewPreviewOut, ReviewUnitsOut
from app.api.schemas import InspectionPageOut
from app.api.time_params import utc_param
from app.core.ids import PRODUCT_RULE, PRODUCT_SCHEMA, check_product
from app.records import (
    MAX_REVIEW_BYTES,
    META_MAX_CHARS,
    META_MAX_TAGS,
    InspectionFilter,
    ReviewRequest,
)
from app.services.board_meta import query_meta, split_tags
from app.services.records_service import read_records

# The review's JSON body is bounded before it is read, and parsed off the event loop.
router = APIRouter(prefix="/v1/inspections", tags=["inspections"], dependencies=[ReviewAuth],
                   route_class=bounded_json_route(MAX_REVIEW_BYTES, "review"))

_ERRORS = error_responses(401, 403, 404, 422, 500, 503)
_IMAGE_TYPES = ("image/png", "image/jpeg", "image/bmp", "image/tiff", "image/webp",
                "image/gif", "application/octet-stream")
_META = {"min_length": 1, "max_length": META_MAX_CHARS}


def get_filter(
    since: Annotated[dt.datetime | None, Query(
        description="Inspected at or after this time (ISO 8601 with a zone).")] = None,
    until: Annotated[dt.datetime | None, Query(
        description="Inspected before this time (ISO 8601 with a zone).")] = None,
    verdict: Literal["pass", "fail"] | None = None,
    product: Annotated[str | None, Query(
        description=f"Records of this product: {PRODUCT_RULE}.",
        json_schema_extra=PRODUCT_SCHEMA)] = None,
    serial: Annotated[str | None, Query(**_META)] = None,
    line: Annotated[str | None, Query(**_META)] = None,
    station: Annotated[str | None, Query(**_META)] = None,
    reviewed: Annotated[bool | None, Query(
        description="true: reviewed boards only; false: not yet reviewed (the queue).")] = None,
    tags: Annotated[list[str] | None, Query(
        description="Records carrying every one of these tags: repeat the parameter or "
        f"separate with commas (at most {META_MAX_TAGS}, each 1-{META_MAX_CHARS} "
        "characters).")] = None,
) -> InspectionFilter:
    """The filters of a query or export (every one optional; all must match)."""
    # As the metadata is checked when it is recorded (no control characters, which
    # PostgreSQL refuses in text; the product by its id rule): 422, not a database error.
    meta = query_meta(serial, line, station)
    if product is not None:
        check_product(product, "product: ")
    return InspectionFilter(
        since=utc_param("since", since), until=utc_param("until", until), verdict=verdict,
        product=product, serial=meta.serial, line=meta.line, station=meta.station,
        reviewed=reviewed, tags=split_tags(tags or ()),
    )


FilterDep = Annotated[InspectionFilter, Depends(get_filter)]


@router.get("", summary="Query the inspection records", response_model=InspectionPageOut,
            responses=_ERRORS)
async def list_inspections(
    records: RecordsDep,
    filters: FilterDep,
    limit: Annotated[int, Query(ge=1, le=500, description="Records per page.")] = 50,
    cursor: Annotated[str | None, Query(max_length=512,
                                        description="next_cursor of the previous page.")] = None,
) -> InspectionPageOut:
    """The records matching the filters, newest first, a page at a time: pass the answer's
    ``next_cursor`` as ``?cursor=`` (with the same filters) for the next page."""
    page = await read_records(records.page, filters, limit, cursor)
    return InspectionPageOut(items=page.items, next_cursor=page.next_cursor)


@router.get(
    "/export",
    summary="Export the inspection records (CSV or JSON lines, streamed)",
    dependencies=[AdminAuth],
    response_class=StreamingResponse,
    responses={**_ERRORS, 200: {"content": {"text/csv": {}, "application/x-ndjson": {}},
                                "description": "One line per record, newest first."}},
)
async def export_inspections(
    records: RecordsDep,
    filters: FilterDep,
    fmt: Annotated[Literal["csv", "jsonl"], Query(alias="format")] = "csv",
) -> StreamingResponse:
    """Every matching record, streamed as it is read (nothing is built in memory): CSV with
    flat columns and one row per defect (the model's calls and the missed defects a review
    added, each with its review outcome; a board with none has one row), every cell quoted and
    formula-like cells neutralised with a leading ``'``; or JSON lines, the full record."""
    lines = records.export(filters, fmt)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    media = "text/csv; charset=utf-8" if fmt == "csv" else "application/x-ndjson"
    return StreamingResponse(
        lines, media_type=media,
        headers={"Content-Disposition": f'attachment; filename="inspections-{stamp}.{fmt}"'},
    )


@router.get("/{inspection_id}", summary="One inspection record and its reviews",
            response_model=InspectionUnitsOut, responses=_ERRORS)
async def get_inspection(inspection_id: str, records: RecordsDep) -> InspectionUnitsOut:
    """The record: metadata, image hash, model, rules, verdict and defects, and every
    distinct review of it (oldest first; the last is the current one). Each review lists the
    boards of the panel with their verdict after it (``units``), and the record's ``units``
    carry the current review's as ``reviewed_verdict``."""
    inspection, reviews = await read_records(records.detail_by_unit, inspection_id)
    return InspectionUnitsOut.of(inspection, reviews)


@router.get(
    "/{inspection_id}/image",
    summary="The kept image of an inspection",
    response_class=Response,
    responses={**_ERRORS, 200: {"content": {t: {} for t in _IMAGE_TYPES},
                                "description": "The bytes as the station sent them."}},
)
async def get_inspection_image(inspection_id: str, records: RecordsDep) -> Response:
    """The board's image as it was sent (its sha256 is the record's); 404 ``image_not_kept``
    when the policy did not keep it or retention removed it."""
    data, media_type = await read_records(records.image, inspection_id)
    # The bytes are what a station sent: a browser must not guess another type from them.
    return Response(data, media_type=media_type, headers={"X-Content-Type-Options": "nosniff"})


@router.post(
    "/{inspection_id}/review",
    summary="Review an inspection: an outcome per defect, and the missed defects",
    response_model=ReviewUnitsOut,
    status_code=201,
    responses={**_ERRORS, **error_responses(400, 413),  # not JSON; too large
               200: {"model": ReviewUnitsOut, "description": "The same review again: "
                                "nothing changed."}, 201: {"description": "A new review."}},
)
async def review_inspection(
    inspection_id: str, body: ReviewRequest, response: Response, records: RecordsDep,
    reviewer: ReviewerDep,
) -> ReviewUnitsOut:
    """Records the operator's review under the key's name: per defect ``confirmed``,
    ``false_call`` or ``reclassified`` (with the new ``class``), and ``missed`` defects as
    boxes ``[x_min, y_min, x_max, y_max]`` with a class.

    201 for a new review (the history keeps the earlier ones); 200 with the current review
    when the same one is sent again. 422 ``unknown_defect``, ``unknown_class`` or
    ``box_outside_image`` for a review that does not fit the board; 422 for one without
    ``defects`` and ``missed`` or with more than the bounds of either, 413 for a body over
    its byte bound.

    The answer is the stored review with each board of the panel (``units``, by position):
    the model's verdict and ``reviewed_verdict``, 'fail' when one of its calls is confirmed
    or reclassified, a missed box's centroid is on it, or the model failed it and a call of
    it has no outcome. Calls and missed boxes on no board are in ``outside``.
    """
    review, created, units = await read_records(records.review_by_unit, inspection_id,
                                                reviewer.name, body)
    response.status_code = 201 if created else 200
    return ReviewUnitsOut.of(review, units)


@router.post(
    "/{inspection_id}/review/preview",
    summary="What a review would make of each board, without recording it",
    response_model=ReviewPreviewOut,
    responses={**_ERRORS, **error_responses(400, 413)},
)
async def preview_review(inspection_id: str, body: ReviewRequest,
                         records: RecordsDep) -> ReviewPreviewOut:
    """Takes a review as ``POST .../review`` does and refuses it as that does, but records
    nothing: the answer is each board's verdict after it, and what lies on no board, as the
    review would be stored. The review page calls it as the operator works, so that the
    boards' verdicts and where a drawn box lands come from the rule the server applies."""
    units = await read_records(records.preview, inspection_id, body)
    return ReviewPreviewOut(units=units.units, outside=units.outside)


@router.delete(
    "/{inspection_id}",
    summary="Delete an inspection record, its reviews and its kept image",
    status_code=204,
    response_class=Response,
    dependencies=[AdminAuth],
    responses=_ERRORS,
)
async def delete_inspection(inspection_id: str, records: RecordsDep) -> Response:
    """Deletes the record and its reviews; its image too unless another record (the same
    bytes sent again) still uses it."""
    await read_records(records.delete, inspection_id)
    return Response(status_code=204)
