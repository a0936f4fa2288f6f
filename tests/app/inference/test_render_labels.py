"""Overlay labels on a crowded board: outside their boxes, never over each other, joined to a
box by a leader line when they had to move away from it."""

from __future__ import annotations

import itertools
import os
import tempfile
from pathlib import Path

import cv2
import numpy as np
import pytest

from app.inference.defects import Defect
from app.inference.render import LabelPlace, place_labels, render_overlay

NAMES = ["open", "short", "mousebite", "spur", "spurious_copper", "pin_hole"]
SHOT = Path(os.environ.get("PCB_SCREENSHOT_DIR") or tempfile.gettempdir())


def _overlap(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> int:
    w = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    h = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    return w * h if w > 0 and h > 0 else 0


def _grid(n: int, step: int, size: int, origin: int = 120) -> list[tuple[int, int, int, int]]:
    """``n`` x ``n`` boxes of ``size`` px, ``step`` px apart: a crowded cluster."""
    return [(origin + i * step, origin + j * step, origin + i * step + size,
             origin + j * step + size) for j in range(n) for i in range(n)]


def _rect(p: LabelPlace) -> tuple[int, int, int, int]:
    return (p.x, p.y, p.w, p.h)


@pytest.mark.parametrize(("n", "step"), [(3, 40), (4, 30), (5, 28)])
def test_labels_of_a_crowded_cluster_cover_no_label_and_no_box(n: int, step: int) -> None:
    boxes = _grid(n, step, size=8)
    places = place_labels([(70, 18)] * len(boxes), boxes, 640, 640, gap=3)
    for a, b in itertools.combinations(places, 2):
        assert _overlap(_rect(a), _rect(b)) == 0, (a, b)
    for p in places:
        for x0, y0, x1, y1 in boxes:
            assert _overlap(_rect(p), (x0 - 2, y0 - 2, x1 - x0 + 4, y1 - y0 + 4)) == 0, p
        assert 0 <= p.x <= 640 - p.w and 0 <= p.y <= 640 - p.h
    # In a crowd some labels had to move away, and those are the ones with a leader line.
    assert any(p.leader for p in places)


def test_a_lone_box_keeps_its_label_right_above_it() -> None:
    (place,) = place_labels([(60, 16)], [(100, 100, 130, 120)], 400, 300, gap=3)
    assert place == LabelPlace(98, 100 - 2 - 3 - 16, 60, 16, False)


def test_at_the_top_edge_the_label_goes_below() -> None:
    (place,) = place_labels([(60, 16)], [(100, 2, 130, 20)], 400, 300, gap=3)
    assert place.y == 20 + 1 + 3 and not place.leader


def test_labels_stay_inside_a_board_too_small_for_them() -> None:
    places = place_labels([(90, 16)] * 4, _grid(2, 12, 6, origin=4), 40, 40)
    assert all(0 <= p.x and p.x + p.w <= 40 and 0 <= p.y and p.y + p.h <= 40 for p in places)


def test_the_overlay_of_a_crowded_board_draws_every_label_apart() -> None:
    # Render it for real, then find each label tag: a filled rectangle in its class colour.
    pixels = np.full((360, 480), 90, dtype=np.uint8)
    class_map = np.zeros_like(pixels)
    boxes = _grid(4, 26, size=10, origin=150)
    defects = [Defect(id=i + 1, class_=NAMES[i % 6], confidence=0.9, bbox=box, area_px=100,
                      area_mm2=0.04, centroid=((box[0] + box[2]) / 2, (box[1] + box[3]) / 2))
               for i, box in enumerate(boxes)]
    png = render_overlay(pixels, class_map, defects, NAMES)
    image = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    (SHOT / "pcb-inspect-crowded-overlay.png").write_bytes(png)
    scale, thickness = 0.4, 1  # render_overlay's for a board this size
    sizes = [cv2.getTextSize(f"{d.id} {d.class_} 0.90", cv2.FONT_HERSHEY_SIMPLEX, scale,
                             thickness) for d in defects]
    places = place_labels([(tw + 6, th + b + 6) for (tw, th), b in sizes], boxes, 480, 360,
                          gap=thickness + 1)
    for a, b in itertools.combinations(places, 2):
        assert _overlap(_rect(a), _rect(b)) == 0
    from app.inference.render import class_color

    for d, p in zip(defects, places, strict=True):
        # The tag's top-left corner is in its class colour (text starts 3 px in).
        color = class_color(NAMES.index(d.class_) + 1)
        np.testing.assert_array_equal(image[p.y + 1, p.x + 1], color)
