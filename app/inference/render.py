"""Overlay rendering: the board with its defect masks, boxes and a class legend, as PNG.

``POST /predict?render=overlay`` returns this picture; the inspection page draws the same
thing in the browser with the same colours (it fetches them from ``/static/palette.json``,
generated from :data:`CLASS_COLORS_BGR`), so an operator sees one colour per class everywhere.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import cv2
import numpy as np

from app.inference.defects import Defect

__all__ = [
    "CLASS_COLORS_BGR", "MASK_ALPHA", "UNKNOWN_COLOR_BGR", "LabelPlace", "UnitFrame",
    "ZoneOutline", "leader_path", "place_labels", "render_overlay",
]

#: One BGR colour per class, in class-id order (id 1 first); Okabe-Ito, colour-blind friendly.
#: More classes than colours reuse them in order.
CLASS_COLORS_BGR: tuple[tuple[int, int, int], ...] = (
    (0, 159, 230),  # open: orange
    (233, 180, 86),  # short: sky blue
    (115, 158, 0),  # mousebite: green
    (66, 228, 240),  # spur: yellow
    (178, 114, 0),  # spurious_copper: blue
    (0, 94, 213),  # pin_hole: vermillion
)
#: For a defect whose class is not in the model's class list (should not happen).
UNKNOWN_COLOR_BGR: tuple[int, int, int] = (128, 128, 128)
#: Weight of the class colour over a mask pixel (the board keeps the rest, so it shows through).
MASK_ALPHA = 0.65

#: A panel's boards: green frame for a pass, red for a fail; zones in purple, and the defects
#: a zone set aside boxed in grey, unlabelled, so they read as "seen, not counted".
PASS_BGR: tuple[int, int, int] = (0, 150, 0)
FAIL_BGR: tuple[int, int, int] = (0, 0, 220)
ZONE_BGR: tuple[int, int, int] = (160, 60, 160)
IGNORED_BGR: tuple[int, int, int] = (150, 150, 150)

_FONT = cv2.FONT_HERSHEY_SIMPLEX


@dataclass(frozen=True)
class UnitFrame:
    """One board of a panel, as the overlay frames it."""

    bbox: tuple[int, int, int, int]
    label: str
    failed: bool


@dataclass(frozen=True)
class ZoneOutline:
    """One zone of a recipe, as the overlay outlines it."""

    polygon: Sequence[tuple[float, float]]
    name: str
    ignore: bool
_LEGEND_MIN_WIDTH = 240  # room for the longest class name and its count at the legend's size


def class_color(class_id: int) -> tuple[int, int, int]:
    """The BGR colour of 1-based ``class_id``."""
    if class_id < 1:
        return UNKNOWN_COLOR_BGR
    return CLASS_COLORS_BGR[(class_id - 1) % len(CLASS_COLORS_BGR)]


def _text_color(bgr: tuple[int, int, int]) -> tuple[int, int, int]:
    # Black on light colours, white on dark ones (Rec. 601 luma), as the page does.
    b, g, r = bgr
    return (0, 0, 0) if 0.299 * r + 0.587 * g + 0.114 * b > 150 else (255, 255, 255)


def render_overlay(
    pixels: np.ndarray,
    class_map: np.ndarray,
    defects: Sequence[Defect],
    class_names: Sequence[str],
    units: Sequence[UnitFrame] = (),
    zones: Sequence[ZoneOutline] = (),
    ignored: Sequence[Defect] = (),
) -> bytes:
    """Draws masks (tinted), boxes and labels on the board and appends a legend below it;
    with a recipe, also its zones, the defects they set aside and the panel's boards.

    Args:
        pixels: ``(H, W)`` uint8 grayscale board, or ``(H, W, 3)`` uint8 BGR.
        class_map: ``(H, W)`` uint8 class ids (0 background, ``k`` = ``class_names[k - 1]``).
        defects: The defects to box and label (bbox max exclusive).
        class_names: Class names, in class-id order.
        units: The panel's boards, framed green (pass) or red (fail) with their label.
        zones: The recipe's zones, outlined with their name (``ignore`` zones dashed).
        ignored: Defects a zone set aside: a thin grey box each, no label.

    Returns:
        PNG bytes of a BGR image, as wide as the board (wider only if the board is too narrow
        for the legend), with the legend under the board.

    Raises:
        ValueError: If the arrays' shapes or dtypes do not fit together.
    """
    _check_arrays(pixels, class_map)
    height, width = pixels.shape[:2]
    canvas = cv2.cvtColor(pixels, cv2.COLOR_GRAY2BGR) if pixels.ndim == 2 else pixels.copy()
    _tint_masks(canvas, class_map, len(class_names))
    # Sizes grow with the board so that labels stay readable on large scans.
    scale = max(0.4, min(height, width) / 1200)
    thickness = max(1, round(scale * 2))
    _draw_defects(canvas, defects, class_names, scale, thickness)
    for zone in zones:
        _zone(canvas, zone, scale, thickness)
    for d in ignored:
        x0, y0, x1, y1 = d.bbox
        cv2.rectangle(canvas, (x0 - 2, y0 - 2), (x1 + 1, y1 + 1), IGNORED_BGR, 1)
    for unit in units:
        _unit_frame(canvas, unit, scale, thickness)

    legend = _legend(class_names, defects, max(width, _LEGEND_MIN_WIDTH))
    if width < legend.shape[1]:
        pad = np.full((height, legend.shape[1] - width, 3), 255, dtype=np.uint8)
        canvas = np.hstack([canvas, pad])
    ok, png = cv2.imencode(".png", np.vstack([canvas, legend]))
    if not ok:  # pragma: no cover - OpenCV fails here only when out of memory
        raise RuntimeError("PNG encoding of the overlay failed")
    return png.tobytes()


def _check_arrays(pixels: np.ndarray, class_map: np.ndarray) -> None:
    if pixels.dtype != np.uint8 or not (
        pixels.ndim == 2 or (pixels.ndim == 3 and pixels.shape[2] == 3)
    ):
        raise ValueError(
            "pixels must be (H, W) or (H, W, 3) uint8. "
            f"Received: shape={pixels.shape}, dtype={pixels.dtype}"
        )
    if class_map.shape != pixels.shape[:2]:
        raise ValueError(
            f"class_map must have the board's shape {pixels.shape[:2]}. "
            f"Received: class_map with shape {class_map.shape}"
        )


def _tint_masks(canvas: np.ndarray, class_map: np.ndarray, n_classes: int) -> None:
    """Blends each class's colour over its mask pixels, in place."""
    for k in range(1, n_classes + 1):
        where = class_map == k
        if where.any():
            tint = np.array(class_color(k), dtype=np.float32)
            blended = (1 - MASK_ALPHA) * canvas[where] + MASK_ALPHA * tint
            canvas[where] = blended.round().astype(np.uint8)


def _draw_defects(
    canvas: np.ndarray,
    defects: Sequence[Defect],
    class_names: Sequence[str],
    scale: float,
    thickness: int,
) -> None:
    """Boxes each defect in its class's colour, then places its label (with a leader line
    when the label had to move away from its box), in place."""
    height, width = canvas.shape[:2]
    colors = []
    for d in defects:
        k = class_names.index(d.class_) + 1 if d.class_ in class_names else 0
        colors.append(class_color(k))
        x0, y0, x1, y1 = d.bbox
        # One pixel outside the defect on every side, so the box never hides its edge.
        cv2.rectangle(canvas, (x0 - 2, y0 - 2), (x1 + 1, y1 + 1), colors[-1], thickness)
    # After every box, so that no box is drawn over a label.
    texts = [f"{d.id} {d.class_} {d.confidence:.2f}" for d in defects]
    sizes = [cv2.getTextSize(t, _FONT, scale, thickness) for t in texts]
    places = place_labels([(tw + 6, th + base + 6) for (tw, th), base in sizes],
                          [d.bbox for d in defects], width, height, gap=thickness + 1)
    for d, color, place in zip(defects, colors, places, strict=True):
        if place.leader:
            # Under every tag: a line may pass behind another label, never over its text.
            lx, ly, _, lh = leader_path(place, d.bbox)
            cv2.line(canvas, (lx + 1, ly), (lx + 1, ly + max(0, lh - 1)), color, thickness,
                     cv2.LINE_AA)
    for text, ((_, th), _), color, place in zip(texts, sizes, colors, places, strict=True):
        _label(canvas, text, place, th, color, scale, thickness)


def _unit_frame(canvas: np.ndarray, unit: UnitFrame, scale: float, thickness: int) -> None:
    """Frames one board of a panel green (pass) or red (fail), with its tag, in place."""
    color = FAIL_BGR if unit.failed else PASS_BGR
    x0, y0, x1, y1 = unit.bbox
    # Inside the box (max exclusive), so neighbouring boards' frames never overlap.
    t = thickness + 1
    for rows, cols in ((slice(y0, y0 + t), slice(x0, x1)), (slice(y1 - t, y1), slice(x0, x1)),
                       (slice(y0, y1), slice(x0, x0 + t)), (slice(y0, y1), slice(x1 - t, x1))):
        canvas[rows, cols] = color
    # Its tag inside its top-left corner, where no defect's tag is placed over it.
    (tw, th), base = cv2.getTextSize(unit.label, _FONT, scale, thickness)
    _label(canvas, unit.label, LabelPlace(x0 + t, y0 + t, tw + 6, th + base + 6, False), th,
           color, scale, thickness)


#: How far (in label heights) a label may move away from its box to find a free place.
LABEL_STEPS = 12


class LabelPlace(NamedTuple):
    """Where a label goes: its top-left corner and size, and whether a leader line joins it
    to its box (it is not next to the box)."""

    x: int
    y: int
    w: int
    h: int
    leader: bool


def _overlaps(rects: np.ndarray, others: np.ndarray) -> np.ndarray:
    """Overlap areas of each of ``rects`` (N, 4: x, y, w, h) with each of ``others`` (M, 4),
    summed over ``others``: (N,)."""
    if len(others) == 0 or len(rects) == 0:
        return np.zeros(len(rects), dtype=np.int64)
    a, b = rects[:, None, :], others[None, :, :]
    w = np.minimum(a[..., 0] + a[..., 2], b[..., 0] + b[..., 2]) - np.maximum(a[..., 0], b[..., 0])
    h = np.minimum(a[..., 1] + a[..., 3], b[..., 1] + b[..., 3]) - np.maximum(a[..., 1], b[..., 1])
    return np.where((w > 0) & (h > 0), w * h, 0).sum(axis=1)


def _within(rects: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """The rectangles (x, y, w, h) of ``rects`` that reach into the area ``lo``-``hi``."""
    return rects[(rects[:, 0] < hi[0]) & (rects[:, 0] + rects[:, 2] > lo[0])
                 & (rects[:, 1] < hi[1]) & (rects[:, 1] + rects[:, 3] > lo[1])]


def _candidates(bbox: tuple[int, int, int, int], w: int, h: int,
                gap: int) -> list[tuple[int, int, bool]]:
    x0, y0, x1, y1 = bbox
    left, right = x0 - 2, x1 + 1 - w
    above, below = y0 - 2 - gap - h, y1 + 1 + gap
    out = [(left, above, False), (left, below, False), (right, above, False),
           (right, below, False), (x1 + 1 + gap, y0 - 2, False), (x0 - 2 - gap - w, y0 - 2, False)]
    for k in range(1, LABEL_STEPS + 1):
        dy = k * (h + gap)
        out += [(left, above - dy, True), (left, below + dy, True), (right, above - dy, True),
                (right, below + dy, True)]
    return out


def place_labels(sizes: Sequence[tuple[int, int]], boxes: Sequence[tuple[int, int, int, int]],
                 width: int, height: int, gap: int = 2) -> list[LabelPlace]:
    """Places each box's label outside its box where it covers no other label and no box.

    The same rule as the inspection page's (``app/static/common.js``, ``placeLabels``): the
    first free place of: above, below, right of, left of the box; then further up or down,
    with a leader line (whose path avoids labels and boxes where it can); where none is free
    (a board crowded edge to edge), the place that covers the least, labels before boxes.

    Args:
        sizes: ``(w, h)`` of each label.
        boxes: Each label's box ``[x0, y0, x1, y1]``, max exclusive.
        width: The image's width; labels stay inside it.
        height: The image's height.
        gap: Space between a box's frame and its label.
    """
    n = len(boxes)
    frames = np.array([(x0 - 2, y0 - 2, x1 - x0 + 4, y1 - y0 + 4) for x0, y0, x1, y1 in boxes],
                      dtype=np.int64).reshape(n, 4)
    placed = np.zeros((n, 4), dtype=np.int64)  # the first k rows: the labels placed so far
    lines = np.zeros((n, 4), dtype=np.int64)  # their leader lines (zero size: none)
    out: list[LabelPlace] = []
    for k, ((w, h), bbox) in enumerate(zip(sizes, boxes, strict=True)):
        w = min(w, width)
        places = []
        for cx, cy, leader in _candidates(bbox, w, h, gap):
            x = min(max(0, cx), max(0, width - w))
            y = min(max(0, cy), max(0, height - h))
            if y != cy and leader:
                continue  # pushed back by the edge: a nearer place tried it
            places.append(LabelPlace(x, y, w, h, leader))
        rects = np.array([p[:4] for p in places], dtype=np.int64)
        paths = np.array([leader_path(p, bbox) if p.leader else (0, 0, 0, 0) for p in places],
                         dtype=np.int64)
        # Only what lies where a candidate could reach matters (a large board has hundreds).
        lo, hi = rects[:, :2].min(axis=0), (rects[:, :2] + rects[:, 2:]).max(axis=0)
        labels_near, lines_near = _within(placed[:k], lo, hi), _within(lines[:k], lo, hi)
        frames_near = _within(frames, lo, hi)
        others = _within(np.delete(frames, k, axis=0), lo, hi)
        # In order of what matters: no label over a label, then none over a box, then none
        # over a leader line, then leader lines crossing as little as they can.
        cost = (1000 * _overlaps(rects, labels_near) + 100 * _overlaps(rects, frames_near)
                + 10 * _overlaps(rects, lines_near) + _overlaps(paths, labels_near)
                + _overlaps(paths, others))
        # The nearest of the cheapest (argmin takes the first).
        best = int(np.argmin(cost))
        placed[k] = rects[best]
        if places[best].leader:
            lines[k] = paths[best]
        out.append(places[best])
    return out


def leader_path(place: LabelPlace, bbox: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    """The leader line of a label placed away from its box, as a 3 px wide rectangle: straight
    up or down from the label's edge to the box's frame."""
    x0, y0, x1, y1 = bbox
    bx = min(max(place.x + place.w // 2, x0), x1)
    if place.y + place.h <= y0:  # above the box
        return (bx - 1, place.y + place.h, 3, max(0, y0 - 2 - place.y - place.h))
    return (bx - 1, y1 + 1, 3, max(0, place.y - y1 - 1))


def _label(
    canvas: np.ndarray,
    text: str,
    place: LabelPlace,
    text_h: int,
    color: tuple[int, int, int],
    scale: float,
    thickness: int,
) -> None:
    """A filled tag in the class colour at ``place``."""
    x, y, w, h = place.x, place.y, place.w, place.h
    cv2.rectangle(canvas, (x, y), (x + w - 1, y + h - 1), color, -1)
    cv2.putText(canvas, text, (x + 3, y + 3 + text_h), _FONT, scale, _text_color(color),
                thickness, cv2.LINE_AA)


def _zone(canvas: np.ndarray, zone: ZoneOutline, scale: float, thickness: int) -> None:
    """The zone's outline (dashed for an ignore zone) and its name at its first vertex."""
    points = np.asarray(zone.polygon, dtype=np.float64).round().astype(np.int32)
    if zone.ignore:
        # Dashes of 8 px every 14 px along each edge.
        for a, b in zip(points, np.roll(points, -1, axis=0), strict=True):
            length = float(np.hypot(*(b - a)))
            for start in np.arange(0.0, max(length, 1.0), 14.0):
                p = a + (b - a) * (start / max(length, 1.0))
                q = a + (b - a) * (min(start + 8.0, length) / max(length, 1.0))
                cv2.line(canvas, (int(p[0]), int(p[1])), (int(q[0]), int(q[1])), ZONE_BGR,
                         thickness)
    else:
        cv2.polylines(canvas, [points], True, ZONE_BGR, thickness)
    x, y = (int(v) for v in points[0])
    cv2.putText(canvas, zone.name, (x + 3, y + 3 + cv2.getTextSize(zone.name, _FONT, scale,
                thickness)[0][1]), _FONT, scale, ZONE_BGR, thickness, cv2.LINE_AA)


def _legend(class_names: Sequence[str], defects: Sequence[Defect], width: int) -> np.ndarray:
    """White band with one swatch, name and defect count per class, in columns that fit."""
    counts = Counter(d.class_ for d in defects)
    cell_w, row_h = _LEGEND_MIN_WIDTH, 22
    columns = max(1, width // cell_w)
    rows = -(-len(class_names) // columns)
    legend = np.full((30 + row_h * rows, width, 3), 255, dtype=np.uint8)
    cv2.putText(legend, "legend (defects found)", (8, 20), _FONT, 0.55, (0, 0, 0), 1,
                cv2.LINE_AA)
    for i, name in enumerate(class_names):
        x = 8 + (i % columns) * cell_w
        y = 30 + row_h * (i // columns)
        cv2.rectangle(legend, (x, y), (x + 18, y + 16), class_color(i + 1), -1)
        cv2.rectangle(legend, (x, y), (x + 18, y + 16), (0, 0, 0), 1)
        cv2.putText(legend, f"{name} ({counts.get(name, 0)})", (x + 26, y + 13), _FONT, 0.5,
                    (0, 0, 0), 1, cv2.LINE_AA)
    return legend
