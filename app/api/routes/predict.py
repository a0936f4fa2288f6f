"""Inspection endpoints: one board (``POST /predict``) or several (``POST /predict/batch``).

A board sent alone goes to the single-image model. A board sent with a golden board (the
multipart field ``golden``, or ``template``, its older name; or ``?product=`` for a stored
one) goes to the pair model, which compares the two after registering the golden board onto
the board.

Only the HTTP is here; :class:`app.services.inspection.InspectionService` does the work, and
:mod:`app.api.params` has the query parameters (result form, board metadata, rules).
"""

from __future__ import annotations

import dataclasses

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from app.api.deps import AuthDep, InspectionsDep, ModelDep
from app.api.openapi import BINARY, error_responses, upload_doc
from app.api.params import MaskParam, MetaDep, ProductParam, RenderParam, RulesDep
from app.api.schemas import BatchOut, PredictionOut
from app.api.uploads import declared_length, disconnect_check, one_upload, read_upload_form
from app.core.errors import ApiError, count_rejection
from app.core.ids import PRODUCT_SCHEMA
from app.inference.defects import Defect
from app.inference.encoding import encode_mask_png
from app.inference.render import UnitFrame, ZoneOutline, render_overlay
from app.records import META_MAX_CHARS
from app.services.board_meta import META_FIELDS, BoardMeta, with_form
from app.services.golden_images import check_product_param
from app.services.inspection import InspectedBoard, InspectionService
from app.services.uploads import Upload

#: The multipart fields of an uploaded golden board: "template" is its older name, kept for
#: the clients that send it.
_GOLDEN_FIELDS = ("golden", "template")

router = APIRouter(prefix="/predict", tags=["inspection"], dependencies=[AuthDep])

#: The board metadata as multipart text fields (the query parameters of the same names work
#: for every body; these only in a multipart one).
_META_FIELDS = {
    **{name: {"type": "string", "maxLength": META_MAX_CHARS, "description": f"The board's {name}."}
       for name in ("serial", "line", "station")},
    "product": {"type": "string", **PRODUCT_SCHEMA,
                "description": "As ?product=: the stored golden board, and the record's product."},
    "tags": {"type": "string", "description": "Comma-separated tags of the record."},
}
_UPLOAD_DOC = upload_doc(
    {
        "file": BINARY,
        "golden": {
            **BINARY,
            "description": "Optional golden board of the same design; the "
            "board is then compared with it by the pair model.",
        },
        "template": {
            **BINARY,
            "description": "The older name of 'golden', still accepted (one of the two).",
        },
        **_META_FIELDS,
    },
    required=["file"],
    raw_types=("image/png", "image/jpeg", "image/bmp", "image/tiff"),
)
_BATCH_DOC = upload_doc(
    {"files": {"type": "array", "items": BINARY}, **_META_FIELDS}, required=["files"]
)
_ERRORS = error_responses(400, 401, 404, 409, 413, 415, 422, 500, 503, 504)


def recipe_drawing(
    done: InspectedBoard,
) -> tuple[list[UnitFrame], list[ZoneOutline], list[Defect]]:
    """What the overlay draws of a recipe: the boards (when it has units), its zones and the
    defects they set aside; nothing without a recipe, so that overlay stays as it was."""
    recipe = done.recipe
    if recipe is None:
        return [], [], []
    units = [
        UnitFrame(u.bbox, f"{u.position}{'' if u.identifier is None else ' ' + u.identifier} "
                  f"{u.verdict.upper()}", u.verdict == "fail")
        for u in done.units
    ] if recipe.body.units else []
    zones = [ZoneOutline(z.polygon, z.name, z.action == "ignore") for z in recipe.body.zones]
    return units, zones, [i.defect for i in done.ignored]


async def _board_form(
    request: Request, inspections: InspectionService, meta: BoardMeta, field: str,
) -> tuple[list[Upload], list[Upload], BoardMeta]:
    """The boards of ``field``, the uploaded golden boards (each with its field) and ``meta``
    with the form's metadata fields."""
    form = await read_upload_form(
        request, inspections.settings, field, _GOLDEN_FIELDS, META_FIELDS
    )
    goldens = [dataclasses.replace(u, field=name)
               for name in _GOLDEN_FIELDS for u in form.extra[name]]
    return form.uploads, goldens, with_form(meta, form.texts)


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
    response: Response,
    model: ModelDep,
    inspections: InspectionsDep,
    rules: RulesDep,
    meta: MetaDep,
    mask: MaskParam = "png",
    render: RenderParam = "none",
    product: ProductParam = None,
) -> PredictionOut | Response:
    """Finds the defects on one board.

    Send the image as the multipart field ``file`` or as a raw body with an ``image/*``
    Content-Type. ``Accept: image/png`` returns the class mask PNG itself, and
    ``render=overlay`` a PNG of the board with the defects drawn.

    With a golden board, either the multipart field ``golden`` (``template``, its older name,
    works too) or ``?product=`` (a board stored with ``PUT /v1/golden-boards/{product}``), the
    golden-board (pair) model compares the board with it; the result then has a ``reference``
    block (the API's name for the golden board) with the alignment.

    The board is recorded before the answer is sent: its ``inspection_id`` is in the JSON and
    in the ``X-Inspection-ID`` header (PNG answers too). ``serial``, ``line``, ``station``,
    ``product`` and ``tags`` (query parameters or form fields) go into the record.
    """
    async with inspections.request_in_flight():
        check_product_param(product)
        inspections.check_body_fits(declared_length(request))
        boards, goldens, meta = await _board_form(
            request, inspections, meta or BoardMeta(product=product), "file"
        )
        product = meta.product
        check_product_param(product)
        board = one_upload(
            boards, f"/predict takes one image; received {len(boards)} in field 'file'. "
            "Use /predict/batch for several."
        )
        fields = sorted({u.field or "" for u in goldens}, key=_GOLDEN_FIELDS.index)
        golden = one_upload(
            goldens, f"{fields[0] if len(fields) == 1 else 'golden'}: /predict takes one golden "
            f"board; received {len(goldens)} in field{'s' if len(fields) > 1 else ''} "
            f"{' and '.join(repr(f) for f in fields)}."
        ) if goldens else None
        if golden is not None and product is not None:
            raise ApiError(
                422, "invalid_request",
                f"Send the golden board either as the field {golden.field!r} or as "
                f"?product={product}, not both.",
            )
        done = await inspections.inspect(
            model, board, rules, meta, golden, disconnect_check(request)
        )
        result = done.result
        headers = {"X-Inspection-ID": done.record_id} if done.record_id else {}
        # Encoding a large board's mask or overlay takes a while: keep it off the event loop.
        if render == "overlay":
            png = await run_in_threadpool(
                render_overlay, done.pixels, result.class_map, result.defects,
                done.inferencer.card.classes, *recipe_drawing(done),
            )
            return Response(png, media_type="image/png", headers=headers)
        if _wants_png(request):
            png = await run_in_threadpool(encode_mask_png, result.class_map)
            return Response(png, media_type="image/png", headers=headers)
        response.headers.update(headers)
        return await run_in_threadpool(PredictionOut.of, done, mask)


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
    inspections: InspectionsDep,
    rules: RulesDep,
    meta: MetaDep,
    mask: MaskParam = "none",
    product: ProductParam = None,
) -> BatchOut:
    """Finds the defects on several boards (repeated multipart field ``files``).

    Results come back in upload order, each with its filename and its own status: one bad
    image never fails the others. The tiles of all images share the model's batches. With
    ``?product=`` every board is compared with that product's stored golden board (pair
    model); a board that does not align gets its own 422 ``alignment_failed``.

    Each board is recorded on its own, with the request's metadata; its ``inspection_id`` is
    in its ``result``.
    """
    async with inspections.request_in_flight():
        check_product_param(product)
        # Before the upload is read: a batch for a product without a golden board (or without
        # a pair model) fails at once, not after every file has arrived.
        target = await inspections.target(model, product)
        # An uploaded golden board is read only to be refused: ignored, it would inspect every
        # board alone while the station believes they were compared with its golden board.
        boards, goldens, meta = await _board_form(
            request, inspections, meta or BoardMeta(product=product), "files"
        )
        if goldens:
            raise ApiError(
                422, "invalid_request",
                f"{goldens[0].field}: /predict/batch takes no golden board in the request; "
                "store it with PUT /v1/golden-boards/{product} and send ?product= (the form "
                "field 'product' works too), or send each board with its golden board to "
                "/predict.",
            )
        items = await inspections.inspect_batch(
            target, boards, rules, meta, disconnect_check(request)
        )
        for item in items:
            if item.error is not None:
                # Counted here: the exception handler that counts the others never sees it.
                count_rejection(item.error)
        return await run_in_threadpool(BatchOut.of, items, mask)
