"""Inspection endpoints: one board (``POST /predict``) or several (``POST /predict/batch``)."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.api.deps import AuthDep, ModelDep, SettingsDep, StateDep
from app.api.schemas import BatchOut, ErrorResponse, PredictionOut
from app.core.config import Settings
from app.core.errors import ApiError, error_body
from app.core.metrics import DEFECTS, IMAGES, IN_FLIGHT, REJECTED, VERDICTS
from app.core.state import ServiceState
from app.inference.batcher import BatcherClosedError, ModelCallError, QueueFullError
from app.inference.imaging import DecodedImage, ImageError, decode_image
from app.inference.inferencer import Inferencer, InferenceResult
from app.inference.postprocess import PostprocessConfig, encode_mask_png, encode_rle
from app.inference.render import render_overlay

router = APIRouter(prefix="/predict", tags=["inspection"], dependencies=[AuthDep])

MaskParam = Annotated[
    Literal["png", "rle", "none"],
    Query(description="How the mask comes back: base64 PNG, COCO RLE, or not at all."),
]
PxPerMmParam = Annotated[
    float | None, Query(gt=0, le=100000, description="Scan resolution; default: model card's.")
]
MinAreaParam = Annotated[
    int | None, Query(ge=0, le=10**9, description="Drop defects smaller than this (pixels).")
]
ThresholdParam = Annotated[
    float | None, Query(ge=0, le=1, description="Confidence cut; default: model card's.")
]
RenderParam = Annotated[
    Literal["none", "overlay"],
    Query(description="'overlay' returns a PNG of the board with masks, boxes and a legend."),
]

_UPLOAD_DOC = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {"file": {"type": "string", "format": "binary"}},
                }
            },
            "image/png": {"schema": {"type": "string", "format": "binary"}},
            "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
            "image/bmp": {"schema": {"type": "string", "format": "binary"}},
            "image/tiff": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}
_BATCH_DOC = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["files"],
                    "properties": {
                        "files": {"type": "array", "items": {"type": "string", "format": "binary"}}
                    },
                }
            }
        },
    }
}
_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 401, 413, 415, 422, 500, 503, 504)
}


@dataclasses.dataclass(frozen=True)
class Upload:
    """One uploaded file."""

    filename: str | None
    data: bytes


async def _read_form(request: Request, settings: Settings) -> Any:
    try:
        return await request.form(
            max_files=settings.max_batch_files, max_fields=settings.max_form_fields
        )
    except StarletteHTTPException as exc:
        detail = str(exc.detail)
        if detail.startswith("Too many files"):
            raise ApiError(
                413, "too_many_files",
                f"Too many files: at most {settings.max_batch_files} per request "
                "(PCB_MAX_BATCH_FILES).",
            ) from None
        if detail.startswith("Too many fields"):
            raise ApiError(
                413, "too_many_fields",
                f"Too many form fields: at most {settings.max_form_fields} per request "
                "(PCB_MAX_FORM_FIELDS).",
            ) from None
        raise ApiError(400, "malformed_multipart", f"Malformed multipart body: {detail}") from None


async def read_uploads(request: Request, settings: Settings, field: str) -> list[Upload]:
    """Reads the images of a request: multipart parts named ``field``, or a raw image body.

    Raises:
        ApiError: 400 for a missing part, 413 past a limit, 415 for another content type.
    """
    content_type = request.headers.get("content-type", "").lower()
    if content_type.startswith("multipart/form-data"):
        form = await _read_form(request, settings)
        try:
            parts = form.getlist(field)
            uploads = [p for p in parts if isinstance(p, UploadFile)]
            if not uploads:
                files = sorted({k for k, v in form.multi_items() if isinstance(v, UploadFile)})
                got = f" Received file fields: {files}." if files else " Received no file."
                raise ApiError(
                    400, "missing_file", f"No image in the multipart field '{field}'.{got}"
                )
            return [Upload(u.filename, await u.read()) for u in uploads]
        finally:
            # Nothing else closes a form read by hand: its spooled temp files would leak.
            await form.close()
    if field == "file" and (
        content_type.startswith("image/") or content_type == "application/octet-stream"
    ):
        return [Upload(None, await request.body())]
    allowed = "multipart/form-data" + (" or image/*" if field == "file" else "")
    raise ApiError(
        415,
        "unsupported_media_type",
        f"Content-Type {content_type or '(none)'!r} is not accepted; send {allowed}.",
    )


def _check_filename(upload: Upload, settings: Settings) -> None:
    if upload.filename and len(upload.filename) > settings.max_filename_chars:
        raise ImageError(
            "filename_too_long",
            f"The filename has {len(upload.filename)} characters; at most "
            f"{settings.max_filename_chars} are accepted.",
            400,
        )


async def _decode(upload: Upload, settings: Settings) -> DecodedImage:
    _check_filename(upload, settings)
    return await run_in_threadpool(
        decode_image,
        upload.data,
        max_pixels=settings.max_image_pixels,
        min_side=settings.min_image_side,
    )


def _config(
    inferencer: Inferencer,
    settings: Settings,
    threshold: float | None,
    min_area_px: int | None,
    pixels_per_mm: float | None,
) -> PostprocessConfig:
    card = inferencer.card
    return PostprocessConfig(
        threshold=_first(threshold, settings.threshold, card.thresholds.confidence),
        min_area_px=int(_first(min_area_px, settings.min_area_px, card.thresholds.min_area_px)),
        pixels_per_mm=_first(pixels_per_mm, settings.pixels_per_mm, card.pixels_per_mm),
        fail_rule=settings.fail_rule,
        fail_min_count=settings.fail_min_count,
        fail_min_area_mm2=settings.fail_min_area_mm2,
    )


def get_rules(
    model: ModelDep,
    settings: SettingsDep,
    threshold: ThresholdParam = None,
    min_area_px: MinAreaParam = None,
    pixels_per_mm: PxPerMmParam = None,
) -> PostprocessConfig:
    """The post-processing rules of a request: its query, else the settings, else the card."""
    return _config(model[0], settings, threshold, min_area_px, pixels_per_mm)


RulesDep = Annotated[PostprocessConfig, Depends(get_rules)]


def _first(*values: Any) -> Any:
    return next(v for v in values if v is not None)


async def _wait_disconnect(request: Request) -> None:
    while not await request.is_disconnected():
        await asyncio.sleep(0.05)


async def run_inference(
    request: Request,
    state: ServiceState,
    inferencer: Inferencer,
    submit: Any,
    pixels: Any,
    config: PostprocessConfig,
) -> InferenceResult:
    """Runs one board under the request timeout, dropping the work if the client leaves.

    Raises:
        ApiError: 503 (queue full, shutting down), 504 (timeout), 500 (model failure), 499
            (client gone; nobody reads it, it only ends the handler).
    """
    state.in_flight += 1
    state.idle.clear()
    IN_FLIGHT.inc()
    task = asyncio.ensure_future(inferencer.predict_async(pixels, config, submit))
    watcher = asyncio.ensure_future(_wait_disconnect(request))
    try:
        done, _ = await asyncio.wait(
            {task, watcher},
            timeout=state.settings.request_timeout_s,
            return_when=asyncio.FIRST_COMPLETED,
        )
        if task in done:
            return _result_or_error(task)
        task.cancel()  # frees the request's places in the queue
        if watcher in done:
            raise ApiError(499, "client_closed_request", "The client closed the request.")
        raise ApiError(
            504, "timeout",
            f"Inspection took longer than {state.settings.request_timeout_s:g} s "
            "(PCB_REQUEST_TIMEOUT_S); the work was dropped.",
            reject_reason="timeout",
        )
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
        state.in_flight -= 1
        IN_FLIGHT.dec()
        if state.in_flight == 0:
            state.idle.set()


def _result_or_error(task: asyncio.Future[InferenceResult]) -> InferenceResult:
    try:
        return task.result()
    except QueueFullError as exc:
        raise ApiError(
            503, "overloaded", f"The service is at capacity ({exc}); retry after a second.",
            {"Retry-After": "1"}, reject_reason="queue_full",
        ) from None
    except BatcherClosedError:
        raise ApiError(
            503, "shutting_down", "The service is shutting down; retry on another replica.",
            {"Retry-After": "5"}, reject_reason="shutting_down",
        ) from None
    except ModelCallError:
        raise ApiError(
            500, "model_error",
            "The model failed on the batch holding this image; the image itself may be fine. "
            "Retry.",
        ) from None


def _record(result: InferenceResult) -> None:
    IMAGES.inc()
    VERDICTS.labels(verdict=result.summary.verdict).inc()
    for defect in result.defects:
        DEFECTS.labels(class_name=defect.class_name).inc()


def prediction_json(
    result: InferenceResult, inferencer: Inferencer, config: PostprocessConfig, mask: str
) -> dict[str, Any]:
    """The JSON body of one board's result (the API contract)."""
    body: dict[str, Any] = {
        "image": {"width": result.width, "height": result.height},
        "model": {"name": inferencer.card.name, "version": inferencer.card.version},
        "defects": [
            {
                "id": d.id,
                "class": d.class_name,
                "confidence": d.confidence,
                "bbox": list(d.bbox),
                "area_px": d.area_px,
                "area_mm2": d.area_mm2,
                "centroid": list(d.centroid),
            }
            for d in result.defects
        ],
        "summary": dataclasses.asdict(result.summary),
        "mask": None,
        "params": {
            "threshold": config.threshold,
            "min_area_px": config.min_area_px,
            "pixels_per_mm": config.pixels_per_mm,
            "fail_rule": config.fail_rule,
            "tiles": result.tiles,
        },
        "timings_ms": result.timings_ms,
    }
    if mask == "png":
        data = base64.b64encode(encode_mask_png(result.class_map)).decode("ascii")
        body["mask"] = {"encoding": "png", "data": data}
    elif mask == "rle":
        # Keyed by class name, like the defects and by_class (not by bare class ids).
        rle = encode_rle(result.class_map, inferencer.card.classes)
        body["mask"] = {"encoding": "rle", "data": rle}
    return body


def _wants_png(request: Request) -> bool:
    accept = request.headers.get("accept", "").lower()
    return "image/png" in accept and "application/json" not in accept


@router.post(
    "",
    summary="Inspect one board image",
    response_model=PredictionOut,
    responses={
        **_ERRORS,
        200: {"content": {"image/png": {}}, "description": "JSON result, or a PNG on request."},
    },
    openapi_extra=_UPLOAD_DOC,
)
async def predict(
    request: Request,
    model: ModelDep,
    settings: SettingsDep,
    state: StateDep,
    config: RulesDep,
    mask: MaskParam = "png",
    render: RenderParam = "none",
) -> Response:
    """Finds the defects on one board.

    Send the image as the multipart field ``file`` or as a raw body with an ``image/*``
    Content-Type. ``Accept: image/png`` returns the class mask PNG itself, and
    ``render=overlay`` a PNG of the board with the defects drawn.
    """
    inferencer, batcher = model
    uploads = await read_uploads(request, settings, "file")
    if len(uploads) > 1:
        raise ApiError(
            400, "too_many_files",
            f"/predict takes one image; received {len(uploads)} in field 'file'. "
            "Use /predict/batch for several.",
        )
    try:
        decoded = await _decode(uploads[0], settings)
    except ImageError as exc:
        raise ApiError(exc.status, exc.code, exc.message) from None
    result = await run_inference(
        request, state, inferencer, batcher.submit, decoded.pixels, config
    )
    _record(result)
    if render == "overlay":
        png = await run_in_threadpool(
            render_overlay, decoded.pixels, result.class_map, result.defects,
            inferencer.card.classes,
        )
        return Response(png, media_type="image/png")
    if _wants_png(request):
        png = await run_in_threadpool(encode_mask_png, result.class_map)
        return Response(png, media_type="image/png")
    # Encoding a large board's mask takes a while: keep it off the event loop.
    body = await run_in_threadpool(prediction_json, result, inferencer, config, mask)
    return JSONResponse(body)


@router.post(
    "/batch",
    summary="Inspect several board images",
    response_model=BatchOut,
    responses=_ERRORS,
    openapi_extra=_BATCH_DOC,
)
async def predict_batch(
    request: Request,
    model: ModelDep,
    settings: SettingsDep,
    state: StateDep,
    config: RulesDep,
    mask: MaskParam = "none",
) -> JSONResponse:
    """Finds the defects on several boards (repeated multipart field ``files``).

    Results come back in upload order, each with its filename and its own status: one bad
    image never fails the others. The tiles of all images share the model's batches.
    """
    inferencer, batcher = model
    uploads = await read_uploads(request, settings, "files")

    async def one(index: int, upload: Upload) -> dict[str, Any]:
        item: dict[str, Any] = {"index": index, "filename": upload.filename}
        try:
            decoded = await _decode(upload, settings)
            result = await run_inference(
                request, state, inferencer, batcher.submit, decoded.pixels, config
            )
        except ImageError as exc:
            REJECTED.labels(reason=exc.code).inc()
            return {**item, "status": exc.status, **error_body(exc.code, exc.message)}
        except ApiError as exc:
            if exc.status != 500 and exc.reject_reason:
                REJECTED.labels(reason=exc.reject_reason).inc()
            return {**item, "status": exc.status, **error_body(exc.code, exc.message)}
        _record(result)
        body = await run_in_threadpool(prediction_json, result, inferencer, config, mask)
        return {**item, "status": 200, "result": body}

    results = await asyncio.gather(*(one(i, u) for i, u in enumerate(uploads)))
    ok = sum(1 for r in results if r["status"] == 200)
    return JSONResponse(
        {"count": len(results), "succeeded": ok, "failed": len(results) - ok, "results": results}
    )
