"""Overlay rendering: the board with its defect masks, boxes and a class legend, as PNG.

``POST /predict?render=overlay`` returns this picture; the inspection page draws the same
thing in the browser with the same colours (it fetches them from ``/static/palette.json``,
generated from :data:`CLASS_COLORS_BGR`), so an operator sees one colour per class everywhere.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from app.inference.defects import Defect

__all__ = [
    "CLASS_COLORS_BGR",
    "MASK_ALPHA",
    "UNKNOWN_COLOR_BGR",
    "UnitFrame",
    "ZoneOutline",
    "render_overlay",
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
    height, width = pixels.shape[:2]
    canvas = cv2.cvtColor(pixels, cv2.COLOR_GRAY2BGR) if pixels.ndim == 2 else pixels.copy()
    for k in range(1, len(class_names) + 1):
        where = class_map == k
        if where.any():
            tint = np.array(class_color(k), dtype=np.float32)
            blended = (1 - MASK_ALPHA) * canvas[where] + MASK_ALPHA * tint
            canvas[where] = blended.round().astype(np.uint8)

    # Sizes grow with the board so that labels stay readable on large scans.
    scale = max(0.4, min(height, width) / 1200)
    thickness = max(1, round(scale * 2))
    for d in defects:
        k = class_names.index(d.class_name) + 1 if d.class_name in class_names else 0
        color = class_color(k)
        x0, y0, x1, y1 = d.bbox
        # One pixel outside the defect on every side, so the box never hides its edge.
        cv2.rectangle(canvas, (x0 - 2, y0 - 2), (x1 + 1, y1 + 1), color, thickness)
        _label(canvas, f"{d.id} {d.class_name} {d.confidence:.2f}", (x0, y0, x1, y1), color,
               scale, thickness)

    for zone in zones:
        _zone(canvas, zone, scale, thickness)
    for d in ignored:
        x0, y0, x1, y1 = d.bbox
        cv2.rectangle(canvas, (x0 - 2, y0 - 2), (x1 + 1, y1 + 1), IGNORED_BGR, 1)
    for unit in units:
        color = FAIL_BGR if unit.failed else PASS_BGR
        x0, y0, x1, y1 = unit.bbox
        # Inside the box (max exclusive), so neighbouring boards' frames never overlap.
        t = thickness + 1
        for rows, cols in ((slice(y0, y0 + t), slice(x0, x1)), (slice(y1 - t, y1), slice(x0, x1)),
                           (slice(y0, y1), slice(x0, x0 + t)), (slice(y0, y1), slice(x1 - t, x1))):
            canvas[rows, cols] = color
        _label(canvas, unit.label, (x0 + 2, y0 + 2, x1, y0 + 2), color, scale, thickness,
               inside=True)

    legend = _legend(class_names, defects, max(width, _LEGEND_MIN_WIDTH))
    if width < legend.shape[1]:
        pad = np.full((height, legend.shape[1] - width, 3), 255, dtype=np.uint8)
        canvas = np.hstack([canvas, pad])
    ok, png = cv2.imencode(".png", np.vstack([canvas, legend]))
    if not ok:  # pragma: no cover - OpenCV fails here only when out of memory
        raise RuntimeError("PNG encoding of the overlay failed")
    return png.tobytes()


def _label(
    canvas: np.ndarray,
    text: str,
    bbox: tuple[int, int, int, int],
    color: tuple[int, int, int],
    scale: float,
    thickness: int,
    inside: bool = False,
) -> None:
    """A filled tag in the class colour above the box (below it when there is no room), or
    at its top-left corner, ``inside``."""
    height, width = canvas.shape[:2]
    (tw, th), base = cv2.getTextSize(text, _FONT, scale, thickness)
    tag_w, tag_h = tw + 6, th + base + 6
    x0, y0, _, y1 = bbox
    # Keep the tag inside the image: shifted left at the right edge, below the box at the top.
    left = min(max(0, x0 - 2), max(0, width - tag_w))
    top = y0 if inside else y0 - 3 - thickness - tag_h
    if top < 0:
        top = min(y1 + 2 + thickness, max(0, height - tag_h))
    cv2.rectangle(canvas, (left, top), (left + tag_w - 1, top + tag_h - 1), color, -1)
    cv2.putText(canvas, text, (left + 3, top + 3 + th), _FONT, scale, _text_color(color),
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
    counts = Counter(d.class_name for d in defects)
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
