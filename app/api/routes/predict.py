"""Inspection endpoints: one board (``POST /predict``) or several (``POST /predict/batch``).

A board sent alone goes to the single-image model. A board sent with a golden board (the
multipart field ``template``, or ``?product=`` for a stored one) goes to the pair model,
which compares the two after registering the golden board onto the board.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from app.api.deps import AuthDep, ModelDep, SettingsDep, StateDep, pair_model
from app.api.schemas import BatchOut, ErrorResponse, PredictionOut
from app.api.uploads import (
    BINARY,
    Upload,
    decode_or_error,
    decode_upload,
    read_upload_fields,
    read_uploads,
    upload_doc,
)
from app.core.config import Settings
from app.core.errors import ApiError, error_body
from app.core.metrics import DEFECTS, IMAGES, IN_FLIGHT, INSPECTIONS, REJECTED, VERDICTS
from app.core.state import ServiceState
from app.inference.batcher import BatcherClosedError, ModelCallError, QueueFullError
from app.inference.imaging import ImageError
from app.inference.inferencer import Inferencer, InferenceResult
from app.inference.postprocess import PostprocessConfig, encode_mask_png, encode_rle
from app.inference.render import render_overlay
from app.services.golden_store import (
    GoldenStoreError,
    InvalidProductError,
    UnknownProductError,
    check_product,
)
from pcb_inspect.registration import MIN_SCORE, AlignmentError

__all__ = ["Upload", "read_uploads", "router"]

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
MinConfidenceParam = Annotated[
    float | None,
    Query(ge=0, le=1, description="Drop defects less confident than this; default: card's."),
]
ThresholdParam = Annotated[
    float | None, Query(ge=0, le=1, description="Confidence cut; default: model card's.")
]
RenderParam = Annotated[
    Literal["none", "overlay"],
    Query(description="'overlay' returns a PNG of the board with masks, boxes and a legend."),
]
ProductParam = Annotated[
    str | None,
    Query(
        description="Compare with the stored golden board of this product "
        "(PUT /v1/golden-boards/{product}); uses the golden-board (pair) model.",
        max_length=200,
    ),
]

_UPLOAD_DOC = upload_doc(
    {
        "file": BINARY,
        "template": {
            **BINARY,
            "description": "Optional golden board of the same design; the "
            "board is then compared with it by the pair model.",
        },
    },
    required=["file"],
    raw_types=("image/png", "image/jpeg", "image/bmp", "image/tiff"),
)
_BATCH_DOC = upload_doc({"files": {"type": "array", "items": BINARY}}, required=["files"])
_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 401, 404, 413, 415, 422, 500, 503, 504)
}


@dataclasses.dataclass(frozen=True)
class Reference:
    """The golden board a request is compared with."""

    source: Literal["upload", "product"]
    product: str | None
    sha256: str
    pixels: np.ndarray


def _json_reference(reference: Reference, result: InferenceResult) -> dict[str, Any] | None:
    if result.alignment is None:  # pragma: no cover - the pair model always aligns
        return None
    return {
        "source": reference.source,
        "product": reference.product,
        "sha256": reference.sha256,
        "alignment": result.alignment.as_dict(),
    }


def _check_product_param(product: str | None) -> None:
    if product is None:
        return
    try:
        check_product(product)
    except InvalidProductError as exc:
        raise ApiError(422, "invalid_product", f"?product=: {exc}") from None


async def stored_reference(state: ServiceState, product: str) -> Reference:
    """The stored golden board of ``product`` (decoded, from the cache when current).

    Raises:
        ApiError: 404 ``unknown_product``, 500 ``golden_store_error``.
    """
    try:
        board, pixels = await run_in_threadpool(state.golden.pixels, product)
    except UnknownProductError:
        raise ApiError(
            404, "unknown_product",
            f"No golden board is stored for product {product!r}; register one with "
            f"PUT /v1/golden-boards/{product} or list them with GET /v1/golden-boards.",
        ) from None
    except GoldenStoreError as exc:
        raise ApiError(500, "golden_store_error", str(exc)) from None
    return Reference("product", product, board.sha256, pixels)


async def uploaded_reference(upload: Upload, settings: Settings) -> Reference:
    """The golden board of the ``template`` field, decoded under the same rules as the board.

    Raises:
        ApiError: Its image error, the message starting with ``template: ``.
    """
    decoded = await decode_or_error(upload, settings, "template")
    sha256 = hashlib.sha256(upload.data).hexdigest()
    return Reference("upload", None, sha256, decoded.pixels)


def _config(
    inferencer: Inferencer,
    settings: Settings,
    threshold: float | None,
    min_area_px: int | None,
    pixels_per_mm: float | None,
    min_confidence: float | None = None,
) -> PostprocessConfig:
    card = inferencer.card
    return PostprocessConfig(
        min_confidence=float(
            _first(min_confidence, settings.min_confidence, card.thresholds.min_confidence)
        ),
        threshold=_first(threshold, settings.threshold, card.thresholds.confidence),
        min_area_px=int(_first(min_area_px, settings.min_area_px, card.thresholds.min_area_px)),
        pixels_per_mm=_first(pixels_per_mm, settings.pixels_per_mm, card.pixels_per_mm),
        fail_rule=settings.fail_rule,
        fail_min_count=settings.fail_min_count,
        fail_min_area_mm2=settings.fail_min_area_mm2,
    )


@dataclasses.dataclass(frozen=True)
class RuleParams:
    """The query's post-processing parameters (``None``: not given)."""

    threshold: float | None
    min_area_px: int | None
    pixels_per_mm: float | None
    min_confidence: float | None = None

    def config(self, inferencer: Inferencer, settings: Settings) -> PostprocessConfig:
        """The rules for ``inferencer``: the query, else the settings, else its card.

        Per model, since the pair model's card has its own defaults.
        """
        return _config(inferencer, settings, self.threshold, self.min_area_px, self.pixels_per_mm,
                       self.min_confidence)


def get_rules(
    threshold: ThresholdParam = None,
    min_area_px: MinAreaParam = None,
    pixels_per_mm: PxPerMmParam = None,
    min_confidence: MinConfidenceParam = None,
) -> RuleParams:
    """The post-processing parameters of a request's query."""
    return RuleParams(threshold, min_area_px, pixels_per_mm, min_confidence)


RulesDep = Annotated[RuleParams, Depends(get_rules)]


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
    reference: Reference | None = None,
) -> InferenceResult:
    """Runs one board under the request timeout, dropping the work if the client leaves.

    With a ``reference`` (pair model) the golden board is registered first.

    Raises:
        ApiError: 503 (queue full, shutting down), 504 (timeout), 500 (model failure), 499
            (client gone; nobody reads it, it only ends the handler), 422 (the reference
            cannot be aligned).
    """
    timeout = state.settings.request_timeout_for(len(inferencer.pre_process(pixels)))
    state.in_flight += 1
    state.idle.clear()
    IN_FLIGHT.inc()
    task = asyncio.ensure_future(
        inferencer.predict_async(
            pixels, config, submit, reference=None if reference is None else reference.pixels
        )
    )
    watcher = asyncio.ensure_future(_wait_disconnect(request))
    try:
        done, _ = await asyncio.wait(
            {task, watcher},
            timeout=timeout,
            return_when=asyncio.FIRST_COMPLETED,
        )
        if task in done:
            return _result_or_error(task, reference)
        task.cancel()  # frees the request's places in the queue
        if watcher in done:
            raise ApiError(499, "client_closed_request", "The client closed the request.")
        raise ApiError(
            504, "timeout",
            f"Inspection took longer than {timeout:g} s (PCB_REQUEST_TIMEOUT_S "
            f"{state.settings.request_timeout_s:g} s + PCB_REQUEST_TIMEOUT_PER_TILE_S "
            f"{state.settings.request_timeout_per_tile_s:g} s for each tile after the first); "
            "the work was dropped.",
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


def _result_or_error(
    task: asyncio.Future[InferenceResult], reference: Reference | None = None
) -> InferenceResult:
    try:
        return task.result()
    except AlignmentError as exc:
        # Comparing a board with a golden board it does not align to would paint the whole
        # board as defects: refuse instead, with the score so the operator can judge.
        what = "the template" if reference is None or reference.source == "upload" else (
            f"the golden board of product {reference.product!r}"
        )
        detail = str(exc)
        if "score" not in detail:
            detail += f" (alignment score {exc.score:.3f})"
        raise ApiError(
            422, "alignment_failed",
            f"Cannot align {what} to this board: {detail}. Alignment needs a score of at least "
            f"{MIN_SCORE}; check that the golden board is the same design, side and "
            "orientation.",
        ) from None
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


def _record(result: InferenceResult, inferencer: Inferencer) -> None:
    IMAGES.inc()
    INSPECTIONS.labels(mode=inferencer.mode).inc()
    VERDICTS.labels(verdict=result.summary.verdict).inc()
    for defect in result.defects:
        DEFECTS.labels(class_name=defect.class_name).inc()


def prediction_json(
    result: InferenceResult,
    inferencer: Inferencer,
    config: PostprocessConfig,
    mask: str,
    reference: Reference | None = None,
) -> dict[str, Any]:
    """The JSON body of one board's result (the API contract)."""
    body: dict[str, Any] = {
        "image": {"width": result.width, "height": result.height},
        "model": {
            "name": inferencer.card.name,
            "version": inferencer.card.version,
            "mode": inferencer.mode,
        },
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
            "min_confidence": config.min_confidence,
            "pixels_per_mm": config.pixels_per_mm,
            "fail_rule": config.fail_rule,
            "tiles": result.tiles,
        },
        "timings_ms": result.timings_ms,
        "reference": None if reference is None else _json_reference(reference, result),
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
    rules: RulesDep,
    mask: MaskParam = "png",
    render: RenderParam = "none",
    product: ProductParam = None,
) -> Response:
    """Finds the defects on one board.

    Send the image as the multipart field ``file`` or as a raw body with an ``image/*``
    Content-Type. ``Accept: image/png`` returns the class mask PNG itself, and
    ``render=overlay`` a PNG of the board with the defects drawn.

    With a golden board, either the multipart field ``template`` or ``?product=`` (a board
    stored with ``PUT /v1/golden-boards/{product}``), the golden-board (pair) model compares
    the board with it; the result then has a ``reference`` block with the alignment.
    """
    _check_product_param(product)
    uploads, extra = await read_upload_fields(request, settings, "file", ("template",))
    if len(uploads) > 1:
        raise ApiError(
            400, "too_many_files",
            f"/predict takes one image; received {len(uploads)} in field 'file'. "
            "Use /predict/batch for several.",
        )
    templates = extra["template"]
    if len(templates) > 1:
        raise ApiError(
            400, "too_many_files",
            f"template: /predict takes one golden board; received {len(templates)} in field "
            "'template'.",
        )
    if templates and product is not None:
        raise ApiError(
            422, "invalid_request",
            f"Send the golden board either as the field 'template' or as ?product={product}, "
            "not both.",
        )
    inferencer, batcher = model
    if templates or product is not None:
        inferencer, batcher = pair_model(state)
    decoded = await decode_or_error(uploads[0], settings)
    reference = None
    if templates:
        reference = await uploaded_reference(templates[0], settings)
    elif product is not None:
        reference = await stored_reference(state, product)
    config = rules.config(inferencer, settings)
    result = await run_inference(
        request, state, inferencer, batcher.submit, decoded.pixels, config, reference
    )
    _record(result, inferencer)
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
    body = await run_in_threadpool(
        prediction_json, result, inferencer, config, mask, reference
    )
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
    rules: RulesDep,
    mask: MaskParam = "none",
    product: ProductParam = None,
) -> JSONResponse:
    """Finds the defects on several boards (repeated multipart field ``files``).

    Results come back in upload order, each with its filename and its own status: one bad
    image never fails the others. The tiles of all images share the model's batches. With
    ``?product=`` every board is compared with that product's stored golden board (pair
    model); a board that does not align gets its own 422 ``alignment_failed``.
    """
    _check_product_param(product)
    inferencer, batcher = model
    reference = None
    if product is not None:
        # Checked before the upload is read: a batch for a product without a golden board
        # (or without a pair model) fails at once, not after every file has arrived.
        inferencer, batcher = pair_model(state)
        reference = await stored_reference(state, product)
    config = rules.config(inferencer, settings)
    uploads = await read_uploads(request, settings, "files")

    async def one(index: int, upload: Upload) -> dict[str, Any]:
        item: dict[str, Any] = {"index": index, "filename": upload.filename}
        try:
            decoded = await decode_upload(upload, settings)
            result = await run_inference(
                request, state, inferencer, batcher.submit, decoded.pixels, config, reference
            )
        except ImageError as exc:
            REJECTED.labels(reason=exc.code).inc()
            return {**item, "status": exc.status, **error_body(exc.code, exc.message)}
        except ApiError as exc:
            if exc.status != 500 and exc.reject_reason:
                REJECTED.labels(reason=exc.reject_reason).inc()
            return {**item, "status": exc.status, **error_body(exc.code, exc.message)}
        _record(result, inferencer)
        body = await run_in_threadpool(
            prediction_json, result, inferencer, config, mask, reference
        )
        return {**item, "status": 200, "result": body}

    results = await asyncio.gather(*(one(i, u) for i, u in enumerate(uploads)))
    ok = sum(1 for r in results if r["status"] == 200)
    return JSONResponse(
        {"count": len(results), "succeeded": ok, "failed": len(results) - ok, "results": results}
    )
