"""Overlay rendering: the board with its defect masks, boxes and a class legend, as PNG."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from app.inference.postprocess import Defect

#: One BGR colour per class, in class order (colour-blind-friendly Okabe-Ito palette).
CLASS_COLORS_BGR: tuple[tuple[int, int, int], ...] = (
    (0, 159, 230),  # open: orange
    (233, 180, 86),  # short: sky blue
    (115, 158, 0),  # mousebite: green
    (66, 228, 240),  # spur: yellow
    (178, 114, 0),  # spurious_copper: blue
    (0, 94, 213),  # pin_hole: vermillion
)


def render_overlay(
    pixels: np.ndarray,
    class_map: np.ndarray,
    defects: Sequence[Defect],
    class_names: Sequence[str],
) -> bytes:
    """Draws masks (tinted), boxes and labels on the board and appends a legend.

    Args:
        pixels: ``(H, W)`` uint8 board.
        class_map: ``(H, W)`` uint8 class ids (0 background).
        defects: The defects to box and label.
        class_names: Class names, in class-id order (1-based ids).

    Returns:
        PNG bytes of an RGB image.
    """
    canvas = cv2.cvtColor(pixels, cv2.COLOR_GRAY2BGR)
    for k, _ in enumerate(class_names, start=1):
        where = class_map == k
        if where.any():
            color = np.array(CLASS_COLORS_BGR[(k - 1) % len(CLASS_COLORS_BGR)], dtype=np.float32)
            canvas[where] = (0.35 * canvas[where] + 0.65 * color).astype(np.uint8)
    scale = max(0.4, min(pixels.shape) / 1200)
    thickness = max(1, round(scale * 2))
    for d in defects:
        k = class_names.index(d.class_name) if d.class_name in class_names else 0
        color = CLASS_COLORS_BGR[k % len(CLASS_COLORS_BGR)]
        x0, y0, x1, y1 = d.bbox
        cv2.rectangle(canvas, (x0 - 2, y0 - 2), (x1 + 1, y1 + 1), color, thickness)
        label = f"{d.id} {d.class_name} {d.confidence:.2f}"
        cv2.putText(canvas, label, (x0, max(12, y0 - 5)), cv2.FONT_HERSHEY_SIMPLEX, scale,
                    color, thickness, cv2.LINE_AA)
    legend = np.full((28 + 22 * len(class_names), canvas.shape[1], 3), 255, dtype=np.uint8)
    cv2.putText(legend, "legend", (8, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (0, 0, 0), 1,
                cv2.LINE_AA)
    for i, name in enumerate(class_names):
        y = 30 + 22 * i
        color = CLASS_COLORS_BGR[i % len(CLASS_COLORS_BGR)]
        cv2.rectangle(legend, (8, y), (26, y + 16), color, -1)
        cv2.putText(legend, name, (34, y + 13), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1,
                    cv2.LINE_AA)
    ok, png = cv2.imencode(".png", np.vstack([canvas, legend]))
    if not ok:
        raise RuntimeError("PNG encoding of the overlay failed")
    return png.tobytes()
