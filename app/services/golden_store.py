"""The golden-board store: one defect-free board per product, on a shared volume.

Each board is one file, ``<root>/<product>.golden``: a one-line JSON header (product, size,
the PNG's sha256 and length, when it was stored) followed by the 8-bit grayscale PNG. Image
and metadata live in the same file so that they can never disagree, and every write is
atomic: the new file is written to a temporary name in the same folder, flushed and fsynced,
moved over the old one with ``os.replace``, and the folder is fsynced so the rename itself
survives a power cut. A reader therefore sees the old board or the new one, never a mix; a
writer killed mid-way leaves only a ``.tmp-*.partial`` file, which no reader looks at and
:meth:`GoldenStore.sweep_partials` removes later.

Several replicas may share the folder (a ReadWriteMany volume): nothing is held in memory
that another replica's write could make stale. Decoded boards are cached (LRU, bounded in
bytes: :mod:`app.services.golden_cache`), but every read first re-reads the file's header and
uses the cached pixels only when the sha256 there still matches, so a replacement by another
replica is seen at once.

No TensorFlow here; OpenCV encodes and decodes the PNGs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, BinaryIO

import cv2
import numpy as np

from app.core.domain_errors import DomainError
from app.core.files import fsync_dir, write_atomic
from app.core.ids import PRODUCT_PATTERN, check_product
from app.services.golden_cache import BoardCache

logger = logging.getLogger("pcb_inspect.golden")

FORMAT = "pcb-golden/1"
SUFFIX = ".golden"
_PARTIAL_PREFIX = ".tmp-"
_PARTIAL_SUFFIX = ".partial"
#: The header is a few hundred bytes; a longer first line means the file is not ours.
_MAX_HEADER_BYTES = 4096
#: PNG compression: level 3 is several times faster to write than the default 6 on large
#: boards, for files only slightly larger.
_PNG_LEVEL = 3


class GoldenStoreError(DomainError, RuntimeError):
    """A stored board cannot be read (damaged or foreign file) or written (I/O error)."""

    code = "golden_store_error"


class UnknownProductError(DomainError, LookupError):
    """No golden board is stored for the product."""

    code = "unknown_product"

    def __init__(self, product: str) -> None:
        super().__init__(
            f"No golden board is stored for product {product!r}; register one with "
            f"PUT /v1/golden-boards/{product} or list them with GET /v1/golden-boards."
        )
        self.product = product


@dataclasses.dataclass(frozen=True)
class GoldenBoard:
    """The metadata of one stored board."""

    product: str
    width: int
    height: int
    #: sha256 of the stored PNG (what ``GET /v1/golden-boards/{product}`` returns as a PNG).
    sha256: str
    #: When this version was stored, ISO 8601 UTC.
    created: str
    png_bytes: int

    def as_dict(self) -> dict[str, Any]:
        """The JSON form of the API: product, width, height, sha256, created."""
        return {
            "product": self.product,
            "width": self.width,
            "height": self.height,
            "sha256": self.sha256,
            "created": self.created,
        }


def encode_png(pixels: np.ndarray) -> bytes:
    """Encodes a ``(H, W)`` uint8 board as an 8-bit grayscale PNG."""
    if pixels.ndim != 2 or pixels.dtype != np.uint8:
        raise ValueError(
            f"expected a (H, W) uint8 board. Received: shape={pixels.shape}, dtype={pixels.dtype}"
        )
    ok, buf = cv2.imencode(".png", pixels, [cv2.IMWRITE_PNG_COMPRESSION, _PNG_LEVEL])
    if not ok:  # pragma: no cover - OpenCV fails only on unsupported arrays, excluded above
        raise GoldenStoreError("OpenCV could not encode the board as PNG")
    return bytes(buf)


class GoldenStore:
    """Golden boards under ``root`` (created on the first write).

    Args:
        root: The folder (``PCB_DATA_DIR/golden``); may be shared by several processes.
        cache_bytes: Bound of the in-memory cache of decoded boards; 0 turns it off.
    """

    def __init__(self, root: Path, cache_bytes: int) -> None:
        if cache_bytes < 0:
            raise ValueError(f"cache_bytes must be >= 0. Received: {cache_bytes}")
        self.root = Path(root)
        self.cache_bytes = int(cache_bytes)
        self._cache = BoardCache(self.cache_bytes)

    # ------------------------------------------------------------------------------ paths
    def path_of(self, product: str) -> Path:
        """The file of ``product``'s board (validated id)."""
        return self.root / f"{check_product(product)}{SUFFIX}"

    # ----------------------------------------------------------------------------- writing
    def put(self, product: str, pixels: np.ndarray) -> tuple[GoldenBoard, bool]:
        """Stores (or replaces) ``product``'s board.

        Returns:
            ``(metadata, created)``: ``created`` is False when a board was replaced.

        Raises:
            InvalidProductError: A bad id.
            GoldenStoreError: The folder cannot be written.
        """
        path = self.path_of(product)
        png = encode_png(pixels)
        board = GoldenBoard(
            product=product,
            width=int(pixels.shape[1]),
            height=int(pixels.shape[0]),
            sha256=hashlib.sha256(png).hexdigest(),
            created=dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace(
                "+00:00", "Z"
            ),
            png_bytes=len(png),
        )
        header = json.dumps(
            {"format": FORMAT, **dataclasses.asdict(board)}, separators=(",", ":")
        ).encode()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            existed = path.exists()
            write_atomic(path, (header, b"\n", png), prefix=_PARTIAL_PREFIX,
                         suffix=_PARTIAL_SUFFIX)
        except OSError as exc:
            raise GoldenStoreError(
                f"cannot store the golden board of {product!r} in {self.root}: {exc}"
            ) from exc
        # The board just written is what the next inspection of this product will want; a
        # copy, since the caller keeps its array.
        if pixels.nbytes <= self.cache_bytes:
            self._cache.remember(product, board.sha256, pixels.copy())
        else:
            self._cache.forget(product)
        return board, not existed

    def delete(self, product: str) -> None:
        """Removes ``product``'s board.

        Raises:
            InvalidProductError, UnknownProductError, GoldenStoreError.
        """
        path = self.path_of(product)
        try:
            os.unlink(path)
        except FileNotFoundError:
            raise UnknownProductError(product) from None
        except OSError as exc:
            raise GoldenStoreError(
                f"cannot delete the golden board of {product!r} in {self.root}: {exc}"
            ) from exc
        self._cache.forget(product)
        with contextlib.suppress(OSError):
            fsync_dir(self.root)

    def sweep_partials(self, max_age_s: float = 3600.0) -> int:
        """Removes temporary files older than ``max_age_s`` left by killed writers.

        Younger ones may belong to a write in progress in another replica. Returns how many
        were removed.
        """
        removed = 0
        now = time.time()
        with contextlib.suppress(FileNotFoundError):
            for entry in os.scandir(self.root):
                if not (entry.name.startswith(_PARTIAL_PREFIX)
                        and entry.name.endswith(_PARTIAL_SUFFIX)):
                    continue
                with contextlib.suppress(OSError):
                    if now - entry.stat().st_mtime > max_age_s:
                        os.unlink(entry.path)
                        removed += 1
        return removed

    # ----------------------------------------------------------------------------- reading
    def get(self, product: str) -> GoldenBoard:
        """The metadata of ``product``'s board (reads only the header).

        Raises:
            InvalidProductError, UnknownProductError, GoldenStoreError.
        """
        with self._open(product) as f:
            return _read_header(f, self.path_of(product))

    def list_boards(self) -> list[GoldenBoard]:
        """All stored boards, by product id. Damaged files are logged and left out."""
        boards = []
        try:
            names = sorted(os.listdir(self.root))
        except FileNotFoundError:
            return []
        for name in names:
            product = name.removesuffix(SUFFIX)
            if not name.endswith(SUFFIX) or not PRODUCT_PATTERN.fullmatch(product):
                continue
            try:
                boards.append(self.get(product))
            except UnknownProductError:
                continue  # deleted since listdir, by us or another replica
            except GoldenStoreError as exc:
                logger.warning("golden board left out of the list: %s", exc)
        return boards

    def png(self, product: str) -> tuple[GoldenBoard, bytes]:
        """The metadata and the PNG bytes of ``product``'s board (sha256 checked)."""
        path = self.path_of(product)
        with self._open(product) as f:
            board = _read_header(f, path)
            return board, _read_png(f, board, path)

    def pixels(self, product: str) -> tuple[GoldenBoard, np.ndarray]:
        """The metadata and the decoded ``(H, W)`` uint8 board (read-only array).

        Served from the cache when the file's sha256 still matches the cached one.
        """
        path = self.path_of(product)
        with self._open(product) as f:
            # Header and body come from one open file, i.e. one version of it, even if
            # another replica replaces the file meanwhile.
            board = _read_header(f, path)
            cached = self._cache.get(product, board.sha256)
            if cached is not None:
                return board, cached
            png = _read_png(f, board, path)
        decoded = cv2.imdecode(np.frombuffer(png, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
        if decoded is None or decoded.ndim != 2 or decoded.dtype != np.uint8 or (
            decoded.shape != (board.height, board.width)
        ):
            raise GoldenStoreError(
                f"golden board file {path} holds a PNG that is not the {board.width}x"
                f"{board.height} 8-bit grayscale board its header describes"
            )
        return board, self._cache.remember(product, board.sha256, decoded)

    def _open(self, product: str) -> BinaryIO:
        path = self.path_of(product)
        try:
            return open(path, "rb")  # the callers close it (with-blocks)
        except FileNotFoundError:
            raise UnknownProductError(product) from None
        except OSError as exc:
            raise GoldenStoreError(f"cannot read golden board file {path}: {exc}") from exc

    # ------------------------------------------------------------------------------- cache
    @property
    def cached_bytes(self) -> int:
        """Bytes of decoded boards held in memory now."""
        return self._cache.nbytes


def _read_header(f: BinaryIO, path: Path) -> GoldenBoard:
    line = f.readline(_MAX_HEADER_BYTES + 1)
    if not line.endswith(b"\n"):
        raise GoldenStoreError(
            f"golden board file {path} has no {FORMAT} header line (damaged or foreign file)"
        )
    try:
        raw = json.loads(line)
        if raw.pop("format") != FORMAT:
            raise ValueError(f"format is not {FORMAT!r}")
        board = GoldenBoard(**raw)
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise GoldenStoreError(
            f"golden board file {path} has an unreadable header ({exc}); expected {FORMAT}"
        ) from None
    if board.product != path.name.removesuffix(SUFFIX):
        raise GoldenStoreError(
            f"golden board file {path} holds product {board.product!r}, not the one its "
            "name says"
        )
    return board


def _read_png(f: BinaryIO, board: GoldenBoard, path: Path) -> bytes:
    png = f.read(board.png_bytes + 1)
    if len(png) != board.png_bytes or hashlib.sha256(png).hexdigest() != board.sha256:
        raise GoldenStoreError(
            f"golden board file {path} is damaged: its PNG ({len(png)} bytes) does not match "
            f"its header ({board.png_bytes} bytes, sha256 {board.sha256[:12]}...)"
        )
    return png
