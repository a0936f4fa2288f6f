"""Defects of the golden board itself: found when it is stored, told apart when compared.

A golden board is a scan of a real board, and it can carry a defect of its own (a pin hole, a
speck of copper). Two places deal with that:

* **when it is stored** (``PUT /v1/golden-boards/{product}``), the single-image model inspects
  it like any board, and what it finds comes back as ``warnings`` with boxes, so a bad golden
  board is caught before any board is compared with it (it is stored all the same);
* **when a board is compared with it**, each difference that the pair model reports is
  checked for where it comes from. On the binarised board and golden board (registered onto
  the board), when the pixels that differ inside the defect's box are copper on the board
  that the golden board lacks, and on the golden board they lie in a hole: substrate closed
  on every side by copper, which the board fills whole with copper that runs on, then the
  golden board is the odd one (a pin hole in it). The difference is reported in
  ``reference_defects`` and not as a defect of the board: its pixels leave the class mask,
  the summary and the verdict. Anything else stays a defect of the board: a real short or
  spur adds copper into substrate that runs on, or covers only part of a closed area; an
  open, mousebite or pin hole of the board is copper the board lacks. A speck of copper on
  the golden board cannot be told from a small pad by shape alone, so it is left to the
  check when the board is stored.
"""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np

from app.inference.defects import Defect, PostprocessConfig
from app.inference.pipeline import InferenceResult
from app.inference.postprocess import summarize

#: Gray level that splits copper (dark) from substrate (light).
_COPPER_BELOW = 128
#: The window that an island of the golden board must fit in, around the defect's box: the
#: box grown by this many pixels, or by the box's own size when that is larger.
_ISLAND_MARGIN_PX = 24
#: Share of the differing pixels that must sit in holes of the golden board.
_ISLAND_SHARE = 0.5
#: Share of a golden-board hole that the board must cover with copper.
_FILLED_SHARE = 0.8
#: Opening that drops the one-pixel slivers registration leaves along copper edges, so that
#: they do not vote.
_SLIVER_KERNEL = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))


def _window(bbox: tuple[int, int, int, int], shape: tuple[int, ...]) -> tuple[slice, slice]:
    x0, y0, x1, y1 = bbox
    grow = max(_ISLAND_MARGIN_PX, x1 - x0, y1 - y0)
    h, w = shape[:2]
    return (slice(max(0, y0 - grow), min(h, y1 + grow)),
            slice(max(0, x0 - grow), min(w, x1 + grow)))


def _touches_border(labels: np.ndarray) -> set[int]:
    edge = np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])
    return {int(v) for v in np.unique(edge)}


def comes_from_golden(board: np.ndarray, golden: np.ndarray,
                         bbox: tuple[int, int, int, int]) -> bool:
    """Whether the difference inside ``bbox`` is a hole in the golden board's copper that the
    board does not have.

    Args:
        board: The board, ``(H, W)`` uint8.
        golden: The golden board registered onto it, same shape.
        bbox: ``(x_min, y_min, x_max, y_max)``, max exclusive.
    """
    rows, cols = _window(bbox, board.shape)
    b = board[rows, cols] < _COPPER_BELOW
    r = golden[rows, cols] < _COPPER_BELOW
    x0, y0, x1, y1 = bbox
    inside = np.zeros_like(b)
    inside[y0 - rows.start : y1 - rows.start, x0 - cols.start : x1 - cols.start] = True
    changed = ((b != r) & inside).astype(np.uint8)
    solid = cv2.morphologyEx(changed, cv2.MORPH_OPEN, _SLIVER_KERNEL)
    where = (solid if solid.any() else changed).astype(bool)
    # Copper on the board that the golden board lacks: the polarity of a hole in the golden
    # board (the other polarity is the board's missing copper, never the golden board's hole).
    target = where & b & ~r
    if not target.any() or target.sum() < _ISLAND_SHARE * where.sum():
        return False
    _, golden_labels = cv2.connectedComponents((~r).astype(np.uint8), connectivity=8)
    _, board_labels = cv2.connectedComponents(b.astype(np.uint8), connectivity=8)
    open_golden = _touches_border(golden_labels)
    open_board = _touches_border(board_labels)
    holes = 0
    for label in np.unique(golden_labels[target]):
        region = golden_labels == label
        # A hole of the golden board: substrate closed on every side by copper, which the
        # board fills (nearly) whole with copper that runs on out of the window. A real spur
        # or short into a closed substrate area covers only part of it.
        if int(label) in open_golden or b[region].mean() < _FILLED_SHARE:
            continue
        if not set(np.unique(board_labels[region & b]).tolist()) <= open_board:
            continue
        holes += int((region & target).sum())
    return bool(holes >= _ISLAND_SHARE * target.sum())


def registered_golden(result: InferenceResult, board: np.ndarray,
                      golden: np.ndarray) -> np.ndarray | None:
    """The golden board on the board's pixel grid, as the pair model saw it; ``None`` when
    the result has no alignment (the single-image model)."""
    from app.inference.registration import warp_golden

    if result.alignment is None:
        return None
    return warp_golden(golden, result.alignment, board.shape[:2])


def split_golden_defects(
    result: InferenceResult, board: np.ndarray, golden: np.ndarray,
    config: PostprocessConfig, class_names: tuple[str, ...],
) -> tuple[InferenceResult, list[Defect]]:
    """Moves the defects that come from the golden board out of ``result``.

    Returns:
        ``(result, golden_defects)``: the result without them (class mask, defect ids,
        summary and verdict recomputed over what is left), and them, as found.
    """
    if not result.defects:
        return result, []
    warped = registered_golden(result, board, golden)
    if warped is None:
        return result, []
    from_golden = [d for d in result.defects if comes_from_golden(board, warped, d.bbox)]
    if not from_golden:
        return result, []
    kept = [d for d in result.defects if d not in from_golden]
    class_map = result.class_map.copy()
    keep = np.zeros(class_map.shape, dtype=bool)
    for d in kept:
        x0, y0, x1, y1 = d.bbox
        keep[y0:y1, x0:x1] = True
    for d in from_golden:
        x0, y0, x1, y1 = d.bbox
        class_map[y0:y1, x0:x1][~keep[y0:y1, x0:x1]] = 0
    kept = [d.model_copy(update={"id": i}) for i, d in enumerate(kept, start=1)]
    summary = summarize(kept, class_names, result.width * result.height, config)
    return dataclasses.replace(result, defects=kept, class_map=class_map,
                               summary=summary), from_golden
