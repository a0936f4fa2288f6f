"""The golden board a board is compared with: uploaded with it, or stored for its product."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import re
from pathlib import Path
from typing import Any, Literal

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

logger = logging.getLogger("pcb_inspect.golden")


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


async def call_store(store: GoldenStore, method: str, *args: Any) -> Any:
    """Runs a golden-store method in the threadpool (file I/O, PNG coding), mapping its errors
    the one way for inspections and the golden-board routes.

    Raises:
        ApiError: 404 ``unknown_product``, 500 ``golden_store_error``.
    """
    try:
        return await run_in_threadpool(getattr(store, method), *args)
    except UnknownProductError as exc:
        raise ApiError(
            404, "unknown_product",
            f"No golden board is stored for product {exc.product!r}; register one with "
            f"PUT /v1/golden-boards/{exc.product} or list them with GET /v1/golden-boards.",
        ) from None
    except GoldenStoreError as exc:
        # The log has the file; the client learns what is wrong, not where the server keeps it.
        logger.error("golden board store: %s", exc)
        raise ApiError(500, "golden_store_error", without_paths(str(exc), store.root)) from None


def without_paths(message: str, root: Path) -> str:
    """``message`` with the store's folder (as given, and as an absolute path) replaced by the
    setting that names it: every path the store reports lies below it."""
    forms = sorted({str(root.resolve()), str(root.absolute()), str(root)}, key=len, reverse=True)
    # Whole path components only: a relative root such as "golden" must not rewrite the word.
    pattern = "|".join(re.escape(f) for f in forms)
    return re.sub(rf"(?<![\w/.-])(?:{pattern})(?=[/'\":]|$)", "PCB_DATA_DIR/golden",
                  message)


async def stored_reference(store: GoldenStore, product: str) -> Reference:
    """The stored golden board of ``product`` (decoded, from the cache when current).

    Raises:
        ApiError: 404 ``unknown_product``, 500 ``golden_store_error``.
    """
    board, pixels = await call_store(store, "pixels", product)
    return Reference("product", product, board.sha256, pixels)


async def uploaded_reference(upload: Upload, settings: Settings) -> Reference:
    """The golden board of the ``template`` field, decoded under the board's rules.

    Raises:
        ApiError: Its image error, the message starting with ``template: ``.
    """
    decoded = await decode_or_error(upload, settings, "template")
    sha256 = hashlib.sha256(upload.data).hexdigest()
    return Reference("upload", None, sha256, decoded.pixels, upload.data)
