"""The overlay PNG of ``POST /predict?render=overlay``: masks, boxes, labels and legend."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from app.inference.defects import Defect
from app.inference.render import (
    CLASS_COLORS_BGR,
    FAIL_BGR,
    IGNORED_BGR,
    MASK_ALPHA,
    PASS_BGR,
    UNKNOWN_COLOR_BGR,
    ZONE_BGR,
    UnitFrame,
    ZoneOutline,
    class_color,
    render_overlay,
)

NAMES = ["open", "short", "mousebite", "spur", "spurious_copper", "pin_hole"]
GREY = 90


def _decode(png: bytes) -> np.ndarray:
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    image = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None
    return image


def _board() -> tuple[np.ndarray, np.ndarray, list[Defect]]:
    pixels = np.full((300, 400), GREY, dtype=np.uint8)
    class_map = np.zeros_like(pixels)
    class_map[200:220, 100:130] = 2  # short, well inside the board
    class_map[100:110, 300:310] = 6  # pin_hole
    defects = [
        Defect(id=1, class_="pin_hole", confidence=0.7, bbox=(300, 100, 310, 110),
               area_px=100, area_mm2=0.04, centroid=(304.5, 104.5)),
        Defect(id=2, class_="short", confidence=0.91, bbox=(100, 200, 130, 220),
               area_px=600, area_mm2=0.26, centroid=(114.5, 209.5)),
    ]
    return pixels, class_map, defects


def test_mask_pixels_are_blended_with_the_class_colour() -> None:
    pixels, class_map, defects = _board()
    image = _decode(render_overlay(pixels, class_map, defects, NAMES))
    for class_id, (y, x) in ((2, (210, 115)), (6, (105, 305))):
        expected = np.round((1 - MASK_ALPHA) * GREY + MASK_ALPHA * np.array(class_color(class_id)))
        np.testing.assert_array_equal(image[y, x], expected.astype(np.uint8))
    # Far from every defect the board is untouched grey.
    np.testing.assert_array_equal(image[20, 20], [GREY, GREY, GREY])


def test_boxes_are_drawn_one_pixel_outside_the_defect_in_the_class_colour() -> None:
    pixels, class_map, defects = _board()
    image = _decode(render_overlay(pixels, class_map, defects, NAMES))
    # Left edge of the 'short' box: x0 - 2, halfway down the defect.
    np.testing.assert_array_equal(image[210, 98], CLASS_COLORS_BGR[1])
    # Bottom edge: y_max (exclusive) + 1.
    np.testing.assert_array_equal(image[221, 115], CLASS_COLORS_BGR[1])


def test_panel_units_zones_and_ignored_defects_are_drawn() -> None:
    pixels, class_map, defects = _board()
    units = [UnitFrame((0, 0, 200, 300), "1 SER-1 FAIL", True),
             UnitFrame((200, 0, 400, 300), "2 SER-2 PASS", False)]
    zones = [ZoneOutline([(250.0, 150.0), (350.0, 150.0), (350.0, 250.0), (250.0, 250.0)],
                         "fid", ignore=False),
             ZoneOutline([(20.0, 40.0), (180.0, 40.0), (180.0, 60.0)], "rail", ignore=True)]
    ignored = [Defect(id=3, class_="spur", confidence=0.5, bbox=(60, 100, 70, 110),
                      area_px=40, area_mm2=0.02, centroid=(64.5, 104.5))]
    image = _decode(render_overlay(pixels, class_map, defects, NAMES, units, zones, ignored))
    # Unit frames inside their boxes, max exclusive: the left board's right edge at x=199
    # is red, the right board's left edge at x=200 green.
    np.testing.assert_array_equal(image[150, 199], FAIL_BGR)
    np.testing.assert_array_equal(image[150, 200], PASS_BGR)
    np.testing.assert_array_equal(image[299, 300], PASS_BGR)
    # The rules zone's right edge, and a dash of the ignore zone at its first vertex.
    np.testing.assert_array_equal(image[200, 350], ZONE_BGR)
    np.testing.assert_array_equal(image[40, 22], ZONE_BGR)
    # The ignored defect's grey box, one pixel outside it.
    np.testing.assert_array_equal(image[105, 58], IGNORED_BGR)
    # Without a recipe, nothing of it: the overlay is exactly the plain one.
    assert render_overlay(pixels, class_map, defects, NAMES, [], [], []) == render_overlay(
        pixels, class_map, defects, NAMES)


def test_legend_is_appended_below_the_board() -> None:
    pixels, class_map, defects = _board()
    image = _decode(render_overlay(pixels, class_map, defects, NAMES))
    assert image.shape[1] == 400
    assert image.shape[0] > 300
    legend = image[300:]
    # Every class swatch is in the legend, in its colour.
    for color in CLASS_COLORS_BGR:
        assert np.all(legend == color, axis=-1).any(), f"no swatch of colour {color} in legend"


def test_narrow_board_is_padded_so_the_legend_fits() -> None:
    pixels = np.zeros((40, 64), dtype=np.uint8)
    image = _decode(render_overlay(pixels, np.zeros_like(pixels), [], NAMES))
    assert image.shape[1] > 64
    np.testing.assert_array_equal(image[:40, :64], 0)  # the board itself, unchanged
    np.testing.assert_array_equal(image[:40, 64:], 255)  # white padding beside it


def test_labels_stay_inside_the_image_at_the_borders() -> None:
    pixels = np.full((120, 160), GREY, dtype=np.uint8)
    class_map = np.zeros_like(pixels)
    class_map[0:5, 150:160] = 1  # top right corner: no room above, none to the right
    defects = [Defect(id=1, class_="open", confidence=0.8, bbox=(150, 0, 160, 5),
                      area_px=50, area_mm2=0.02, centroid=(154.5, 2.0))]
    image = _decode(render_overlay(pixels, class_map, defects, NAMES))
    board = image[:120]
    # The tag (filled with the class colour) was moved below the box and left of the edge.
    tag = np.all(board == CLASS_COLORS_BGR[0], axis=-1)
    ys, xs = np.nonzero(tag[10:])
    assert len(xs) > 50, "label tag not drawn"
    assert xs.min() < 150


def test_defect_of_an_unknown_class_is_grey() -> None:
    pixels = np.full((100, 100), 0, dtype=np.uint8)
    defects = [Defect(id=1, class_="mystery", confidence=0.5, bbox=(40, 40, 50, 50),
                      area_px=100, area_mm2=0.04, centroid=(44.5, 44.5))]
    image = _decode(render_overlay(pixels, np.zeros_like(pixels), defects, NAMES))
    np.testing.assert_array_equal(image[45, 38], UNKNOWN_COLOR_BGR)


def test_colour_board_input_is_accepted() -> None:
    pixels = np.zeros((50, 260, 3), dtype=np.uint8)
    pixels[..., 2] = 200
    image = _decode(render_overlay(pixels, np.zeros((50, 260), np.uint8), [], NAMES))
    np.testing.assert_array_equal(image[10, 10], [0, 0, 200])


def test_more_classes_than_colours_reuse_the_palette() -> None:
    assert class_color(len(CLASS_COLORS_BGR) + 1) == CLASS_COLORS_BGR[0]
    assert class_color(0) == UNKNOWN_COLOR_BGR


@pytest.mark.parametrize(
    ("pixels", "class_map", "match"),
    [
        (np.zeros((10, 10), np.uint8), np.zeros((10, 11), np.uint8), r"class_map .* \(10, 11\)"),
        (np.zeros((10, 10), np.float32), np.zeros((10, 10), np.uint8), "dtype=float32"),
        (np.zeros((10, 10, 4), np.uint8), np.zeros((10, 10), np.uint8), r"shape=\(10, 10, 4\)"),
    ],
)
def test_mismatched_inputs_are_rejected_naming_what_was_received(
    pixels: np.ndarray, class_map: np.ndarray, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        render_overlay(pixels, class_map, [], NAMES)
