"""The golden board a board is compared with: uploaded with it, or stored for its product."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import Literal, ParamSpec, TypeVar

import numpy as np
from anyio.to_thread import run_sync

from app.core.config import Settings
from app.core.ids import check_product
from app.services.golden_store import GoldenStore, GoldenStoreError
from app.services.uploads import Upload, decode_upload

P = ParamSpec("P")
T = TypeVar("T")

logger = logging.getLogger("pcb_inspect.golden")


@dataclasses.dataclass(frozen=True, eq=False)
class GoldenBoardImage:
    """The golden board a board is compared with."""

    source: Literal["upload", "product"]
    product: str | None
    sha256: str
    pixels: np.ndarray
    #: The uploaded file's bytes (``source == "upload"``), kept with the board's image when
    #: that is kept, so a review export can pair the two; ``None`` for a stored golden board.
    data: bytes | None = None
    #: The form field an uploaded golden board came in (``golden`` or ``template``).
    field: str | None = None
    #: How many warnings the single-image model gave when this stored board was stored;
    #: ``None`` for a board never checked, and for an uploaded one.
    warnings: int | None = None


def check_product_param(product: str | None) -> None:
    """Checks ``?product=``; :class:`InvalidProductError` for an id that cannot be one."""
    if product is not None:
        check_product(product, "?product=: ")


async def in_store(
    store: GoldenStore, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs
) -> T:
    """Runs a call of ``store`` in a worker thread (file I/O, PNG coding).

    Raises:
        UnknownProductError: As the store does.
        GoldenStoreError: The store's, without the server's paths (the log has them).
    """
    try:
        return await run_sync(lambda: fn(*args, **kwargs))
    except GoldenStoreError as exc:
        # The log has the file; the client learns what is wrong, not where the server keeps it.
        logger.error("golden board store: %s", exc)
        raise GoldenStoreError(without_paths(exc.message, store.root)) from None


def without_paths(message: str, root: Path) -> str:
    """``message`` with the store's folder (as given, and as an absolute path) replaced by the
    setting that names it: every path the store reports lies below it."""
    forms = sorted({str(root.resolve()), str(root.absolute()), str(root)}, key=len, reverse=True)
    # Whole path components only: a relative root such as "golden" must not rewrite the word.
    pattern = "|".join(re.escape(f) for f in forms)
    return re.sub(rf"(?<![\w/.-])(?:{pattern})(?=[/'\":]|$)", "PCB_DATA_DIR/golden",
                  message)


async def stored_golden(store: GoldenStore, product: str) -> GoldenBoardImage:
    """The stored golden board of ``product`` (decoded, from the cache when current).

    Raises:
        UnknownProductError, GoldenStoreError: As :func:`in_store`.
    """
    def read() -> tuple[str, np.ndarray, int | None]:
        board, pixels = store.pixels(product)
        # The check of exactly these pixels' PNG, even if the board is replaced meanwhile; its
        # header only, since an inspection shows the count.
        check = store.check_of(product, board.sha256, warnings=False)
        return board.sha256, pixels, None if check is None else check.count

    sha256, pixels, warnings = await in_store(store, read)
    return GoldenBoardImage("product", product, sha256, pixels, warnings=warnings)


async def uploaded_golden(upload: Upload, settings: Settings) -> GoldenBoardImage:
    """The uploaded golden board, decoded under the board's rules.

    Raises:
        ImageError: Its image error, the message starting with its field (``upload.field``,
            else ``template``, the field's older name): ``template: ...``.
    """
    decoded = await decode_upload(upload, settings, upload.field or "template")
    sha256 = hashlib.sha256(upload.data).hexdigest()
    return GoldenBoardImage("upload", None, sha256, decoded.pixels, upload.data,
                            upload.field or "template")
