"""Golden boards: one defect-free board per product, for ``/predict?product=``.

Thin routes over :class:`app.services.golden_store.GoldenStore`, which does the storing.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from app.api.deps import AdminAuth, AuthDep, InspectionsDep, SettingsDep, StoreDep
from app.api.openapi import BINARY, error_responses, upload_doc
from app.api.params import ProductPath, product_id
from app.api.schemas import (
    GoldenBoardListOut,
    GoldenBoardOut,
    GoldenBoardPutOut,
    ModelRef,
)
from app.api.uploads import disconnect_check, one_upload, read_uploads
from app.services.golden_images import in_store
from app.services.golden_store import GoldenBoard, GoldenCheck
from app.services.uploads import decode_upload

router = APIRouter(prefix="/v1/golden-boards", tags=["golden boards"], dependencies=[AuthDep])

_ERRORS = error_responses(401, 404, 422, 500)
_UPLOAD_ERRORS = error_responses(400, 401, 403, 413, 415, 422, 500)
_UPLOAD_DOC = upload_doc({"file": BINARY}, required=["file"], raw_types=("image/png",))


def _out(board: GoldenBoard, check: GoldenCheck | None) -> GoldenBoardOut:
    if check is None:
        return GoldenBoardOut(**board.as_dict())
    return GoldenBoardOut(**board.as_dict(), warnings=list(check.warnings or ()),
                          checked_by=ModelRef.model_validate(check.checked_by))


@router.put(
    "/{product}",
    summary="Store or replace the golden board of a product",
    response_model=GoldenBoardPutOut,
    status_code=201,
    # Storing or removing a golden board changes what every later inspection of the product
    # is compared with: an administrator's act, not a station's.
    dependencies=[AdminAuth],
    responses={**_UPLOAD_ERRORS, 200: {"model": GoldenBoardPutOut, "description": "Replaced."},
               201: {"description": "Stored (new product)."}},
    openapi_extra=_UPLOAD_DOC,
)
async def put_golden_board(
    product: ProductPath, request: Request, response: Response, settings: SettingsDep,
    store: StoreDep, inspections: InspectionsDep,
) -> GoldenBoardPutOut:
    """Stores the multipart field ``file`` (or a raw ``image/*`` body) as ``product``'s
    defect-free golden board: 201 when new, 200 when it replaced one.

    The image obeys the same rules and limits as a board sent to ``/predict``; it is stored
    as an 8-bit grayscale PNG, whose sha256 the answer gives. The single-image model then
    inspects it: what it finds comes back as ``warnings`` (a golden board with defects makes
    every comparison with it wrong there; it is stored all the same, so replace it).
    """
    product = product_id(product)
    uploads = await read_uploads(request, settings, "file")
    upload = one_upload(
        uploads, f"A product has one golden board; received {len(uploads)} images in field "
        "'file'."
    )
    decoded = await decode_upload(upload, settings)
    board, created = await in_store(store, store.put, product, decoded.pixels)
    response.status_code = 201 if created else 200
    found, checker = await inspections.check_golden(decoded.pixels, disconnect_check(request))
    card = checker.inferencer.card if checker is not None else None
    checked_by = None if card is None else ModelRef(name=card.name, version=card.version,
                                                    mode="single")
    if checked_by is not None:
        # Kept with exactly this board's PNG, for GET and for every inspection against it.
        await in_store(store, store.put_check, product, board.sha256, checked_by.model_dump(),
                       found)
    return GoldenBoardPutOut(**board.as_dict(), warnings=found, checked_by=checked_by)


@router.get(
    "",
    summary="List the golden boards",
    response_model=GoldenBoardListOut,
    responses=error_responses(401, 500),
)
async def list_golden_boards(store: StoreDep) -> GoldenBoardListOut:
    """Every stored golden board: product, size, sha256 of its PNG, when it was stored, and
    what the single-image model found on it then (``warnings``, ``checked_by``)."""
    boards = await in_store(store, store.list_checked)
    return GoldenBoardListOut(count=len(boards), boards=[_out(b, c) for b, c in boards])


@router.get(
    "/{product}",
    summary="One golden board: its metadata, or the image itself",
    response_model=GoldenBoardOut,
    responses={**_ERRORS, 200: {"content": {"image/png": {}},
                                "description": "Metadata, or the PNG with Accept: image/png."}},
)
async def get_golden_board(
    product: ProductPath, request: Request, store: StoreDep
) -> GoldenBoardOut | Response:
    """The metadata of ``product``'s golden board as JSON, with the warnings the single-image
    model gave when it was stored (null when it was not checked), or with ``Accept: image/png``
    the stored PNG (its sha256 is the metadata's)."""
    product = product_id(product)
    accept = request.headers.get("accept", "").lower()
    if "image/png" in accept and "application/json" not in accept:
        board, png = await in_store(store, store.png, product)
        return Response(png, media_type="image/png", headers={"ETag": f'"{board.sha256}"'})
    return _out(*await in_store(store, store.get_checked, product))


@router.delete(
    "/{product}",
    summary="Remove the golden board of a product",
    status_code=204,
    response_class=Response,
    dependencies=[AdminAuth],
    responses={**_ERRORS, **error_responses(403)},
)
async def delete_golden_board(product: ProductPath, store: StoreDep) -> Response:
    """Removes ``product``'s golden board; inspections with ``?product=`` then get 404."""
    product = product_id(product)
    await in_store(store, store.delete, product)
    return Response(status_code=204)
