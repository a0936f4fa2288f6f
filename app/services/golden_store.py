"""The golden-board store: one defect-free board per product, on a shared volume.

Each board is one file, ``<root>/<product>.golden``: a one-line JSON header (product, size,
the PNG's sha256 and length, when it was stored) followed by the 8-bit grayscale PNG. Image
and metadata live in the same file so that they can never disagree, and every write is
atomic: the new file is written to a temporary name in the same folder, flushed and fsynced,
moved over the old one with ``os.replace``, and the folder is fsynced so the rename itself
survives a power cut. A reader therefore sees the old board or the new one, never a mix; a
writer killed mid-way leaves only a ``.tmp-*.partial`` file, which no reader looks at and
:meth:`GoldenStore.sweep_partials` removes later.

What the single-image model found on a board when it was stored (its *check*: the warnings and
the model) is kept beside it in ``<root>/<product>.<sha256>.warnings``, written the same atomic
way once the check is done. The PNG's sha256 in the name ties the check to exactly the board it
was computed for: a board replaced meanwhile, here or by another replica, never shows the old
board's warnings, and two replicas storing two boards at once each keep their own. A board with
no check file (stored before checks were kept, or while no model could check it) reads as not
checked. Checks of boards no longer stored are removed when a board of the product is stored
or deleted, only when older than the current board's file, so that a concurrent writer's newer
check is never taken for a stale one.

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
import re
import time
from pathlib import Path
from typing import Any, BinaryIO

import cv2
import numpy as np

from app.core.domain_errors import DomainError
from app.core.files import fsync_dir, write_atomic
from app.core.ids import PRODUCT_PATTERN, check_product
from app.inference.defects import Defect
from app.services.golden_cache import BoardCache

logger = logging.getLogger("pcb_inspect.golden")

FORMAT = "pcb-golden/1"
SUFFIX = ".golden"
_PARTIAL_PREFIX = ".tmp-"
_PARTIAL_SUFFIX = ".partial"
#: The header is a few hundred bytes; a longer first line means the file is not ours.
_MAX_HEADER_BYTES = 4096
CHECK_FORMAT = "pcb-golden-warnings/1"
CHECK_SUFFIX = ".warnings"
#: The fields of a check's ``checked_by``: the model card's name and version, and its mode.
_CHECKED_BY = ("name", "version", "mode")
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


@dataclasses.dataclass(frozen=True)
class GoldenCheck:
    """What the single-image model found on one stored board (the PNG of ``sha256``)."""

    sha256: str
    #: The model that checked it: ``name``, ``version`` and ``mode`` of its card.
    checked_by: dict[str, str]
    #: When it was checked, ISO 8601 UTC.
    checked: str
    #: How many warnings; ``warnings`` itself is ``None`` when only the header was read.
    count: int
    warnings: tuple[Defect, ...] | None = None


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
            created=_now(),
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
        self._sweep_checks(product, keep=board.sha256)
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
        deleted: GoldenBoard | None = None
        with contextlib.suppress(GoldenStoreError, UnknownProductError), self._open(product) as f:
            deleted = _read_header(f, path)
            mtime_ns = os.fstat(f.fileno()).st_mtime_ns
        try:
            os.unlink(path)
        except FileNotFoundError:
            raise UnknownProductError(product) from None
        except OSError as exc:
            raise GoldenStoreError(
                f"cannot delete the golden board of {product!r} in {self.root}: {exc}"
            ) from exc
        self._cache.forget(product)
        if deleted is not None:
            # Its own check was written after it, so it is not older than it: by name.
            with contextlib.suppress(OSError):
                os.unlink(self._check_path(product, deleted.sha256))
            self._remove_checks(product, keep=None, older_than_ns=mtime_ns)
        with contextlib.suppress(OSError):
            fsync_dir(self.root)

    # ------------------------------------------------------------------------------ checks
    def put_check(self, product: str, sha256: str, checked_by: dict[str, str],
                  warnings: list[Defect]) -> GoldenCheck | None:
        """Keeps what ``checked_by`` found on the board of ``product`` whose PNG has ``sha256``.

        Returns:
            The check kept; ``None`` when that board is no longer the stored one (replaced or
            deleted while it was being checked): its check would never be read.

        Raises:
            InvalidProductError, GoldenStoreError; ValueError: ``checked_by`` without exactly
                the fields name, version and mode.
        """
        if set(checked_by) != set(_CHECKED_BY):
            raise ValueError(f"checked_by must have {_CHECKED_BY}. Received: {checked_by}")
        path = self.path_of(product)
        try:
            current = self.get(product)
        except UnknownProductError:
            return None
        if current.sha256 != sha256:
            return None
        check = GoldenCheck(
            sha256=sha256, checked_by=dict(checked_by), checked=_now(), count=len(warnings),
            warnings=tuple(warnings),
        )
        header = json.dumps(
            {"format": CHECK_FORMAT, "product": product, "sha256": sha256,
             "checked_by": check.checked_by, "checked": check.checked, "count": check.count},
            separators=(",", ":"),
        ).encode()
        body = json.dumps([w.model_dump(mode="json", by_alias=True) for w in warnings],
                          separators=(",", ":")).encode()
        try:
            write_atomic(self._check_path(product, sha256), (header, b"\n", body),
                         prefix=_PARTIAL_PREFIX, suffix=_PARTIAL_SUFFIX)
        except OSError as exc:
            raise GoldenStoreError(
                f"cannot store the check of the golden board of {product!r} in {path.parent}: "
                f"{exc}"
            ) from exc
        # A check of an older board that finished after that board was replaced.
        self._sweep_checks(product, keep=sha256)
        return check

    def check_of(self, product: str, sha256: str, *, warnings: bool = True
                 ) -> GoldenCheck | None:
        """The check of the board of ``product`` whose PNG has ``sha256``; ``None`` when it
        was not checked. ``warnings=False`` reads only the header (the count, not the list).

        An unreadable check file is logged and reads as not checked: the check is advice
        about the board, and the board itself is still good to compare with.
        """
        path = self._check_path(product, sha256)
        try:
            with open(path, "rb") as f:
                return _read_check(f, path, product, sha256, warnings)
        except FileNotFoundError:
            return None
        except (OSError, GoldenStoreError) as exc:
            logger.warning("golden board check read as not checked: %s", exc)
            return None

    def _check_path(self, product: str, sha256: str) -> Path:
        return self.root / f"{check_product(product)}.{sha256}{CHECK_SUFFIX}"

    def _sweep_checks(self, product: str, keep: str) -> None:
        """Removes the checks of ``product`` other than ``keep``'s that are older than the
        stored board's file (a newer one may be another replica's board's, its board already
        stored)."""
        try:
            with self._open(product) as f:
                current = _read_header(f, self.path_of(product))
                mtime_ns = os.fstat(f.fileno()).st_mtime_ns
        except (UnknownProductError, GoldenStoreError, OSError):
            return
        keep_both = {keep, current.sha256}
        self._remove_checks(product, keep=keep_both, older_than_ns=mtime_ns)

    def _remove_checks(self, product: str, keep: set[str] | None,
                       older_than_ns: int) -> None:
        pattern = re.compile(re.escape(product) + r"\.([0-9a-f]{64})" + re.escape(CHECK_SUFFIX))
        with contextlib.suppress(OSError):
            for entry in os.scandir(self.root):
                match = pattern.fullmatch(entry.name)
                if match is None or (keep is not None and match.group(1) in keep):
                    continue
                with contextlib.suppress(OSError):
                    if entry.stat().st_mtime_ns < older_than_ns:
                        os.unlink(entry.path)

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

    def get_checked(self, product: str) -> tuple[GoldenBoard, GoldenCheck | None]:
        """The metadata of ``product``'s board and its check (``None``: not checked)."""
        board = self.get(product)
        return board, self.check_of(product, board.sha256)

    def list_checked(self) -> list[tuple[GoldenBoard, GoldenCheck | None]]:
        """:meth:`list_boards`, each board with its check (``None``: not checked)."""
        return [(b, self.check_of(b.product, b.sha256)) for b in self.list_boards()]

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


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _read_check(f: BinaryIO, path: Path, product: str, sha256: str,
                with_warnings: bool) -> GoldenCheck:
    line = f.readline(_MAX_HEADER_BYTES + 1)
    try:
        if not line.endswith(b"\n"):
            raise ValueError("no header line")
        raw = json.loads(line)
        if raw.get("format") != CHECK_FORMAT:
            raise ValueError(f"format is not {CHECK_FORMAT!r}")
        if (raw["product"], raw["sha256"]) != (product, sha256):
            raise ValueError("it names another board")
        checked_by = raw["checked_by"]
        if not (isinstance(checked_by, dict) and set(checked_by) == set(_CHECKED_BY)
                and all(isinstance(v, str) for v in checked_by.values())
                and checked_by["mode"] in ("single", "pair")):
            raise ValueError(f"checked_by is not an object of {', '.join(_CHECKED_BY)}")
        count = raw["count"]
        if not isinstance(count, int) or count < 0:
            raise ValueError("count is not a count")
        warnings = None
        if with_warnings:
            warnings = tuple(Defect.model_validate(w) for w in json.loads(f.read()))
            if len(warnings) != count:
                raise ValueError(f"{len(warnings)} warnings, its header says {count}")
        return GoldenCheck(sha256=sha256, checked_by=checked_by, checked=str(raw["checked"]),
                           count=count, warnings=warnings)
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise GoldenStoreError(
            f"golden board check file {path} is unreadable ({exc}); expected {CHECK_FORMAT}"
        ) from None


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
