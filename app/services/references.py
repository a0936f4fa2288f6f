"""The golden board a board is compared with: uploaded with it, or stored for its product."""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Literal

import numpy as np
from starlette.concurrency import run_in_threadpool

from app.core.config import Settings
from app.core.errors import ApiError
from app.services.golden_store import (
    GoldenStore,
    GoldenStoreError,
    InvalidProductError,
    UnknownProductError,
    check_product,
)
from app.services.uploads import Upload, decode_or_error


@dataclasses.dataclass(frozen=True, eq=False)
class Reference:
    """The golden board a board is compared with."""

    source: Literal["upload", "product"]
    product: str | None
    sha256: str
    pixels: np.ndarray
    #: The uploaded file's bytes (``source == "upload"``), kept with the board's image when
    #: that is kept, so a review export can pair the two; ``None`` for a stored golden board.
    data: bytes | None = None


def check_product_param(product: str | None) -> None:
    """Checks ``?product=``; 422 ``invalid_product`` for an id that cannot be one."""
    if product is None:
        return
    try:
        check_product(product)
    except InvalidProductError as exc:
        raise ApiError(422, "invalid_product", f"?product=: {exc}") from None


def unknown_product(product: str) -> ApiError:
    """The one 404 for a product with no golden board, for inspections and the golden routes."""
    return ApiError(
        404, "unknown_product",
        f"No golden board is stored for product {product!r}; register one with "
        f"PUT /v1/golden-boards/{product} or list them with GET /v1/golden-boards.",
    )


async def stored_reference(store: GoldenStore, product: str) -> Reference:
    """The stored golden board of ``product`` (decoded, from the cache when current).

    Raises:
        ApiError: 404 ``unknown_product``, 500 ``golden_store_error``.
    """
    try:
        board, pixels = await run_in_threadpool(store.pixels, product)
    except UnknownProductError:
        raise unknown_product(product) from None
    except GoldenStoreError as exc:
        raise ApiError(500, "golden_store_error", str(exc)) from None
    return Reference("product", product, board.sha256, pixels)


async def uploaded_reference(upload: Upload, settings: Settings) -> Reference:
    """The golden board of the ``template`` field, decoded under the board's rules.

    Raises:
        ApiError: Its image error, the message starting with ``template: ``.
    """
    decoded = await decode_or_error(upload, settings, "template")
    sha256 = hashlib.sha256(upload.data).hexdigest()
    return Reference("upload", None, sha256, decoded.pixels, upload.data)
