"""Which tiles of a board need the model at all.

Pair mode: after registration a defect is a difference from the golden board. Where board and
registered golden board agree, the pair model has nothing to find, so those tiles are skipped
(background, no forward pass). The *candidate map* is the registered difference, made tolerant
to what registration leaves behind and cleaned as the training masks are:

* tolerance: a board pixel is compared with the darkest and lightest golden pixel within
  :data:`TOLERANCE_PX` (an erosion and a dilation of the golden board), so a trace edge that
  sits a pixel off is no difference, while a pin hole in copper or a blob on bare substrate
  still is;
* threshold: :data:`CANDIDATE_THRESHOLD`, below the training masks' ``|test - template| > 100``
  (``training.data.DIFF_THRESHOLD``), so anything the masks would call a defect is a candidate;
* cleaning: the masks' 3x3 cross opening drops isolated pixels (JPEG ringing, dust).

Tiles are the full path's own tiles (same plan, same windows), so every computed tile gives
bit-identical outputs to the full path: a tile is computed when a candidate lies within
:data:`MARGIN_PX` of the region it owns, which keeps each defect's whole predicted blob inside
computed regions.

Single mode has no golden board, so only *blank* tiles are skipped: windows with no copper edge
at all (a morphological gradient below :data:`BLANK_EDGE_FLOOR` everywhere), e.g. bare
substrate or a solid pour around a board's outline.

The maps are computed in horizontal strips, reduced at once to a grid of
:data:`CELL_PX`-pixel cells, so the search holds a few strips of temporaries, never a
full-size float map.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import cv2
import numpy as np

from app.inference.tiling import Tile

__all__ = [
    "BLANK_EDGE_FLOOR",
    "CANDIDATE_THRESHOLD",
    "CELL_PX",
    "MARGIN_PX",
    "TOLERANCE_PX",
    "Gate",
    "blank_tiles",
    "candidate_cells",
    "gate_tiles",
]

#: Gray levels a board pixel must differ from every golden pixel within :data:`TOLERANCE_PX` to
#: be a candidate. The training masks take ``> 100``; copper and substrate are ~230 apart, so a
#: real copper change clears this by far, while JPEG ringing and a brightness drift do not.
CANDIDATE_THRESHOLD = 60
#: Misregistration tolerated, pixels each way (registration is within ~0.05 px; the rest is a
#: scanner's sub-pixel resampling of edges).
TOLERANCE_PX = 1
#: Candidates are kept on a grid of cells of this many pixels (the pair model's stride).
CELL_PX = 16
#: A tile is computed when a candidate lies this close to the region it owns: the model's
#: prediction of a defect extends a little past the pixels that changed.
MARGIN_PX = 32
#: Strip height of the candidate search (rows), bounding its temporaries.
STRIP_ROWS = 1024
#: A window whose morphological gradient (3x3 max - min) stays below this has no copper edge.
BLANK_EDGE_FLOOR = 64

_CROSS = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))


@dataclasses.dataclass(frozen=True)
class Gate:
    """The tiles of a board to compute, and how much of the board is skipped."""

    computed: list[Tile]
    skipped: list[Tile]

    @property
    def skipped_px(self) -> int:
        """Board pixels owned by skipped tiles (left background without a forward pass)."""
        return sum((t.core[1] - t.core[0]) * (t.core[3] - t.core[2]) for t in self.skipped)


def candidate_cells(
    board: np.ndarray,
    golden: np.ndarray,
    *,
    threshold: int = CANDIDATE_THRESHOLD,
    tolerance: int = TOLERANCE_PX,
    cell: int = CELL_PX,
) -> np.ndarray:
    """The candidate map of a board and its registered golden board, reduced to cells.

    Returns:
        ``(ceil(H / cell), ceil(W / cell))`` bool: True where a cell holds a candidate pixel.
    """
    if board.shape != golden.shape or board.ndim != 2:
        raise ValueError(
            f"board and golden board must be (H, W) of one shape. Received: {board.shape} and "
            f"{golden.shape}"
        )
    height, width = board.shape
    rows, cols = -(-height // cell), -(-width // cell)
    cells = np.zeros((rows, cols), dtype=bool)
    kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (2 * tolerance + 1, 2 * tolerance + 1))
    # Halo: the tolerance's window plus the opening's, so strip seams change nothing.
    halo = tolerance + 2
    strip = max(cell, STRIP_ROWS // cell * cell)
    for y0 in range(0, height, strip):
        y1 = min(height, y0 + strip)
        a, b = max(0, y0 - halo), min(height, y1 + halo)
        gold, brd = golden[a:b], board[a:b]
        # Exact shortcut: the golden pixel itself is among those within the tolerance, so a
        # pixel differing from it by no more than the threshold is no candidate; a strip where
        # none does (a clean rescan) needs no morphology at all.
        if cv2.minMaxLoc(cv2.absdiff(brd, gold))[1] <= threshold:
            continue
        over = cv2.subtract(brd, cv2.dilate(gold, kernel))  # copper lost (lighter)
        under = cv2.subtract(cv2.erode(gold, kernel), brd)  # copper added (darker)
        diff = cv2.max(over, under)
        del over, under
        raw = cv2.threshold(diff, threshold, 1, cv2.THRESH_BINARY)[1]
        del diff
        if not cv2.countNonZero(raw):
            continue  # the opening keeps a subset of these: nothing
        opened = cv2.morphologyEx(raw, cv2.MORPH_OPEN, _CROSS)[y0 - a : y0 - a + (y1 - y0)]
        _mark_cells(cells, opened, y0, cell)
    return cells


def _mark_cells(cells: np.ndarray, mask: np.ndarray, y0: int, cell: int) -> None:
    """Sets the cells of ``cells`` holding a pixel of ``mask`` (rows of the board from ``y0``).

    From the set pixels' coordinates: candidates are sparse, so this costs little where a
    reduction over every cell of the strip cost tens of milliseconds.
    """
    points = cv2.findNonZero(np.ascontiguousarray(mask))
    if points is None:
        return
    xy = points.reshape(-1, 2)
    cells[(xy[:, 1] + y0) // cell, xy[:, 0] // cell] = True


def gate_tiles(
    tiles: Sequence[Tile], cells: np.ndarray, *, cell: int = CELL_PX, margin: int = MARGIN_PX
) -> Gate:
    """Splits ``tiles`` into those with a candidate cell within ``margin`` px of their owned
    region (computed) and the rest (skipped)."""
    reach = -(-margin // cell)
    grown = cv2.dilate(
        cells.astype(np.uint8),
        cv2.getStructuringElement(cv2.MORPH_RECT, (2 * reach + 1, 2 * reach + 1)),
    )
    # Summed-area table: any candidate in a tile's cells in O(1) a tile.
    table = np.zeros((grown.shape[0] + 1, grown.shape[1] + 1), dtype=np.int64)
    table[1:, 1:] = grown.cumsum(0).cumsum(1)
    computed: list[Tile] = []
    skipped: list[Tile] = []
    for t in tiles:
        y_start, y_stop, x_start, x_stop = t.core
        r0, r1 = y_start // cell, -(-y_stop // cell)
        c0, c1 = x_start // cell, -(-x_stop // cell)
        count = table[r1, c1] - table[r0, c1] - table[r1, c0] + table[r0, c0]
        (computed if count else skipped).append(t)
    return Gate(computed, skipped)


def blank_tiles(
    board: np.ndarray, tiles: Sequence[Tile], tile: int, *, floor: int = BLANK_EDGE_FLOOR
) -> Gate:
    """Splits ``tiles`` into windows with some copper edge (computed) and blank ones (skipped).

    The whole window the model would see is checked, not only the owned region, so a skipped
    tile's neighbourhood is blank too. A board smaller than a tile is never skipped (its window
    is padded; not worth a special case).
    """
    height, width = board.shape
    computed: list[Tile] = []
    skipped: list[Tile] = []
    for t in tiles:
        if t.y0 + tile > height or t.x0 + tile > width:
            computed.append(t)
            continue
        window = board[t.y0 : t.y0 + tile, t.x0 : t.x0 + tile]
        # Cheap first: a window whose whole range is below the floor has no edge anywhere.
        lo, hi = cv2.minMaxLoc(window)[:2]
        if hi - lo < floor:
            skipped.append(t)
            continue
        edges = cv2.morphologyEx(window, cv2.MORPH_GRADIENT, _CROSS)
        (skipped if int(edges.max()) < floor else computed).append(t)
    return Gate(computed, skipped)
