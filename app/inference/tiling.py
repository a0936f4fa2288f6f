"""Tiling: cut large boards into overlapping model-sized tiles and stitch the outputs back.

Tiles of side ``tile`` step by ``tile - overlap``. Every image pixel is OWNED by exactly one tile,
and only the owner's output is kept for it. Ownership boundaries sit in the middle of each
overlap, so every owned pixel has at least ``overlap // 2`` pixels of context on each side,
except where the tile's edge is the image's edge. Since the owned regions partition the image,
stitching is a plain copy: there is no blending, hence no seam, and a defect that crosses a tile
edge is labelled once, on the full-size maps.

Memory stays bounded: ``extract_tiles`` takes any subset of the plan (callers pass one batch at a
time), and ``Stitcher`` holds only the three full-size output maps (5 bytes per pixel).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

#: The stitched P(defect) is kept as uint16 ``round(p * FG_SCALE)``: steps of 1.5e-5, far below
#: anything post-processing or a client distinguishes (confidences are reported to 4 decimals),
#: at half the memory of float32 (128 MB less on an 8000 x 8000 board). 65535 = 255 x 257, so
#: the k/255 values of an 8-bit map are kept exactly.
FG_SCALE = 65535

__all__ = ["FG_SCALE", "Stitcher", "Tile", "chunk_tiles", "extract_tiles", "plan_tiles"]


@dataclass(frozen=True)
class Tile:
    """One tile of a plan.

    Attributes:
        y0: Row where the tile's window starts in the (padded) image.
        x0: Column where the tile's window starts in the (padded) image.
        core: ``(y_start, y_stop, x_start, x_stop)`` in image coordinates (stops exclusive):
            the region this tile owns.
        core_in_tile: The same region in tile coordinates.
    """

    y0: int
    x0: int
    core: tuple[int, int, int, int]
    core_in_tile: tuple[int, int, int, int]


def plan_tiles(height: int, width: int, tile: int, overlap: int) -> list[Tile]:
    """Plans the tiles that cover an image, and which pixels each tile owns.

    Along each dimension, windows start every ``tile - overlap`` pixels; the last window is
    shifted back to end exactly at the image border (so it may overlap its neighbour by more,
    and no padding is needed). A dimension no longer than ``tile`` gets one window at 0, padded
    up to ``tile`` by ``extract_tiles``. Between two neighbouring windows, ownership changes in
    the middle of their overlap.

    Args:
        height: Image height in pixels, >= 1.
        width: Image width in pixels, >= 1.
        tile: Side of the square tiles (the model's working size), >= 1.
        overlap: Pixels shared by neighbouring windows, ``0 <= overlap < tile``.

    Returns:
        The tiles in row-major order. Their cores partition the image exactly.

    Raises:
        ValueError: If a size or the overlap is out of range.
    """
    for name, value in (("height", height), ("width", width), ("tile", tile)):
        if not _is_int(value) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1. Received: {name}={value!r}")
    if not _is_int(overlap) or not 0 <= overlap < tile:
        raise ValueError(
            f"overlap must be an integer with 0 <= overlap < tile. "
            f"Received: overlap={overlap!r}, tile={tile!r}"
        )
    # Plain ints, so that numpy integer arguments do not leak numpy scalars into the tiles.
    rows = _plan_axis(int(height), int(tile), int(overlap))
    cols = _plan_axis(int(width), int(tile), int(overlap))
    return [
        Tile(
            y0=y0,
            x0=x0,
            core=(y_start, y_stop, x_start, x_stop),
            core_in_tile=(y_start - y0, y_stop - y0, x_start - x0, x_stop - x0),
        )
        for y0, y_start, y_stop in rows
        for x0, x_start, x_stop in cols
    ]


def _plan_axis(size: int, tile: int, overlap: int) -> list[tuple[int, int, int]]:
    """Windows along one axis as ``(start, owned_start, owned_stop)``."""
    if size <= tile:
        return [(0, 0, size)]
    stride = tile - overlap
    count = -(-(size - tile) // stride) + 1  # ceil: enough windows to reach the far border
    starts = [min(i * stride, size - tile) for i in range(count)]
    # Ownership flips halfway through the overlap [next_start, start + tile): each side of the
    # boundary then keeps at least half the overlap as context.
    middles = [(nxt + cur + tile) // 2 for cur, nxt in zip(starts[:-1], starts[1:], strict=True)]
    bounds = [0, *middles, size]
    return [(s, bounds[i], bounds[i + 1]) for i, s in enumerate(starts)]


def extract_tiles(image: np.ndarray, tiles: Sequence[Tile], tile: int) -> np.ndarray:
    """Cuts the given tiles out of an image, as a model input batch.

    Args:
        image: ``(H, W)`` image, normally uint8 grayscale (any dtype is kept).
        tiles: Tiles from ``plan_tiles(H, W, tile, overlap)``: all of them, or one batch.
        tile: The tile side the plan was made with.

    Returns:
        ``(len(tiles), tile, tile, 1)`` array of the image's dtype. Where the image is smaller
        than ``tile``, it is padded at the bottom/right by repeating its edge pixels, so the
        model sees no artificial edge that could look like copper.

    Raises:
        ValueError: If the image is not 2-D, or a tile does not fit the (padded) image.
    """
    image = np.asarray(image)
    if image.ndim != 2 or image.size == 0:
        raise ValueError(
            f"image must be a non-empty (H, W) array. Received: image with shape {image.shape}"
        )
    if not _is_int(tile) or tile < 1:
        raise ValueError(f"tile must be an integer >= 1. Received: tile={tile!r}")
    height, width = image.shape
    pad_y, pad_x = max(0, tile - height), max(0, tile - width)
    if pad_y or pad_x:
        # Only small images are padded, so the copy is at most one tile in size.
        image = np.pad(image, ((0, pad_y), (0, pad_x)), mode="edge")
    out = np.empty((len(tiles), tile, tile, 1), dtype=image.dtype)
    for i, t in enumerate(tiles):
        if t.y0 < 0 or t.x0 < 0 or t.y0 + tile > image.shape[0] or t.x0 + tile > image.shape[1]:
            raise ValueError(
                f"tile at (y0={t.y0}, x0={t.x0}) of side {tile} does not fit an image of shape "
                f"{(height, width)} (padded to {image.shape}); was it planned for this image?"
            )
        out[i, :, :, 0] = image[t.y0 : t.y0 + tile, t.x0 : t.x0 + tile]
    return out


class Stitcher:
    """Assembles per-tile outputs into full-size ``fg``, ``cls`` and ``cls_p`` maps.

    The three maps are allocated once, (H, W) uint16 (P(defect) in steps of 1 /
    :data:`FG_SCALE`), uint8 and float16, i.e. 5 bytes per pixel, and each tile writes only the
    region it owns, so the stitched maps do not depend on the order in which tiles arrive.

    Args:
        height: Image height in pixels, >= 1.
        width: Image width in pixels, >= 1.
    """

    def __init__(self, height: int, width: int) -> None:
        for name, value in (("height", height), ("width", width)):
            if not _is_int(value) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1. Received: {name}={value!r}")
        self._fg = np.zeros((height, width), dtype=np.uint16)
        self._cls = np.zeros((height, width), dtype=np.uint8)
        self._cls_p = np.zeros((height, width), dtype=np.float16)
        self._added: set[Tile] = set()

    def add(
        self, tile: Tile, fg_tile: np.ndarray, cls_tile: np.ndarray, cls_p_tile: np.ndarray
    ) -> None:
        """Writes the region a tile owns from its outputs into the full-size maps.

        Args:
            tile: The tile, from the plan of this image.
            fg_tile: ``(tile, tile)`` foreground confidence for the tile.
            cls_tile: ``(tile, tile)`` class ids for the tile (values 0..255).
            cls_p_tile: ``(tile, tile)`` P(class | defect) for the tile (stored as float16).

        Raises:
            ValueError: If the outputs' shapes disagree or cannot hold the tile's owned region,
                the region falls outside the image, or the tile was already added.
        """
        fg_tile = np.asarray(fg_tile)
        cls_tile = np.asarray(cls_tile)
        cls_p_tile = np.asarray(cls_p_tile)
        if fg_tile.ndim != 2 or not cls_tile.shape == cls_p_tile.shape == fg_tile.shape:
            raise ValueError(
                "fg_tile, cls_tile and cls_p_tile must be 2-D and of the same shape. "
                f"Received: fg_tile {fg_tile.shape}, cls_tile {cls_tile.shape}, "
                f"cls_p_tile {cls_p_tile.shape}"
            )
        y_start, y_stop, x_start, x_stop = tile.core
        ty_start, ty_stop, tx_start, tx_stop = tile.core_in_tile
        height, width = self._fg.shape
        if not (0 <= y_start < y_stop <= height and 0 <= x_start < x_stop <= width):
            raise ValueError(
                f"tile core {tile.core} is not inside the image of shape {(height, width)}"
            )
        if not (0 <= ty_start and ty_stop <= fg_tile.shape[0]) or not (
            0 <= tx_start and tx_stop <= fg_tile.shape[1]
        ):
            raise ValueError(
                f"tile core_in_tile {tile.core_in_tile} does not fit tile outputs of shape "
                f"{fg_tile.shape}"
            )
        if tile in self._added:
            # A repeat is harmless to the maps, but it means the caller lost track of its plan
            # (and some other tile may be missing), so it is refused rather than hidden.
            raise ValueError(f"tile at (y0={tile.y0}, x0={tile.x0}) was already added")
        region = np.clip(fg_tile[ty_start:ty_stop, tx_start:tx_stop], 0.0, 1.0) * FG_SCALE
        # NaN (a broken model) reads as 0, not defect, as it did before quantizing.
        np.nan_to_num(region, copy=False, nan=0.0)
        self._fg[y_start:y_stop, x_start:x_stop] = np.rint(region)
        self._cls[y_start:y_stop, x_start:x_stop] = cls_tile[ty_start:ty_stop, tx_start:tx_stop]
        self._cls_p[y_start:y_stop, x_start:x_stop] = cls_p_tile[ty_start:ty_stop, tx_start:tx_stop]
        self._added.add(tile)

    def release(self) -> None:
        """Frees the three maps (5 bytes a pixel); the stitcher is unusable afterwards."""
        empty = np.zeros((0, 0), dtype=np.uint8)
        self._fg, self._cls, self._cls_p = empty.astype(np.uint16), empty, empty.astype(np.float16)

    @property
    def fg_quantized(self) -> np.ndarray:
        """The stitched ``(H, W)`` uint16 P(defect) x :data:`FG_SCALE` (0 where no tile wrote),
        as kept: what post-processing reads, without a float copy of the board."""
        return self._fg

    @property
    def fg(self) -> np.ndarray:
        """The stitched ``(H, W)`` float32 P(defect) (0 where no tile wrote): a new array, 4
        bytes a pixel, for inspection and tests; post-processing reads :attr:`fg_quantized`."""
        return self._fg.astype(np.float32) / np.float32(FG_SCALE)

    @property
    def cls(self) -> np.ndarray:
        """The stitched ``(H, W)`` uint8 class ids (0 where no tile wrote)."""
        return self._cls

    @property
    def cls_p(self) -> np.ndarray:
        """The stitched ``(H, W)`` float16 P(class | defect) (0 where no tile wrote)."""
        return self._cls_p


def chunk_tiles(
    image: np.ndarray,
    tiles: Sequence[Tile],
    tile: int,
    batch: int,
    golden: np.ndarray | None = None,
) -> Iterator[tuple[list[Tile], np.ndarray]]:
    """Yields ``(tiles, pixels of those tiles)`` ``batch`` tiles at a time.

    Only one chunk's pixels exist at once, so memory stays bounded on a large board. With a
    (registered) ``golden`` board its tiles are the second channel.
    """
    for start in range(0, len(tiles), batch):
        chunk = list(tiles[start : start + batch])
        arrays = extract_tiles(image, chunk, tile)
        if golden is not None:
            arrays = np.concatenate([arrays, extract_tiles(golden, chunk, tile)], axis=-1)
        yield chunk, arrays


def _is_int(value: object) -> bool:
    """True for Python and numpy integers, but not bools (which are ints in Python)."""
    return isinstance(value, int | np.integer) and not isinstance(value, bool)
