"""Tests for app.inference.postprocess, on tiny maps whose answers are worked out by hand.

The maps go through a :class:`~app.inference.tiling.Stitcher`, as the model's do in the server,
so post-processing reads them as it does there: P(defect) quantized to uint16, cls_p float16.
"""

from __future__ import annotations

import io
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app.inference.defects import Defect, PostprocessConfig, Summary
from app.inference.encoding import decode_rle, encode_mask_png, encode_rle
from app.inference.postprocess import (
    DefectPixels,
    describe_defects,
    gather_defect_pixels,
    postprocess,
    registered_difference,
)
from app.inference.tiling import FG_SCALE, Stitcher, extract_tiles, plan_tiles
from pcb_inspect.classes import CLASS_NAMES

# The model's order; pcb_inspect.classes imports no TensorFlow, so neither do these tests.
NAMES = CLASS_NAMES


def two_blob_maps() -> tuple[np.ndarray, np.ndarray]:
    """A 12x12 board with an "open" 2x3 block and an L-shaped "spur" of 5 pixels.

    Background pixels have fg 0.1 and cls 2 ("short"): the graph always emits some class, and
    the thresholding alone must keep it out. The blobs are 4 background pixels apart (rows 3-6),
    one more than the default merge distance, so they stay two defects. Each is of one class
    and no ``cls_p`` is given, so the purity is 1 and the confidence is the mean ``fg``.
    """
    fg = np.full((12, 12), 0.1, dtype=np.float32)
    cls = np.full((12, 12), 2, dtype=np.uint8)
    # "open": rows 1-2, cols 1-3 -> bbox (1, 1, 4, 3), area 6, centroid (2.0, 1.5), conf 0.75.
    fg[1:3, 1:4] = [[0.5, 1.0, 0.5], [1.0, 0.5, 1.0]]
    cls[1:3, 1:4] = 1
    # "spur": (7,8) (8,8) (9,8) (9,9) (9,10) as (y, x) -> bbox (8, 7, 11, 10), area 5,
    # centroid x = 43/5 = 8.6, y = 42/5 = 8.4, conf mean(0.6..1.0) = 0.8.
    for (y, x), v in zip(
        [(7, 8), (8, 8), (9, 8), (9, 9), (9, 10)], [0.6, 0.7, 0.8, 0.9, 1.0], strict=True
    ):
        fg[y, x] = v
        cls[y, x] = 4
    return fg, cls


def stitched(fg: np.ndarray, cls: np.ndarray, cls_p: np.ndarray | None = None) -> Stitcher:
    """The maps as one tile of the board stitched; ``cls_p`` defaults to 1 (sure of the class)."""
    height, width = fg.shape
    (tile,) = plan_tiles(height, width, max(height, width), 0)
    stitcher = Stitcher(height, width)
    stitcher.add(tile, fg, cls, np.ones(fg.shape, np.float16) if cls_p is None else cls_p)
    return stitcher


def config(**overrides: object) -> PostprocessConfig:
    """threshold 0.5, no area cut, 2 px/mm (so mm² = px / 4), count rule."""
    values: dict[str, object] = {"threshold": 0.5, "min_area_px": 0, "pixels_per_mm": 2.0}
    values.update(overrides)
    return PostprocessConfig(**values)  # type: ignore[arg-type]


def test_two_blobs_give_hand_computed_defects_and_summary() -> None:
    fg, cls = two_blob_maps()

    result = postprocess(stitched(fg, cls), NAMES, config())

    assert result.defects == [
        Defect(
            id=1,
            class_="open",
            confidence=0.75,
            bbox=(1, 1, 4, 3),
            area_px=6,
            area_mm2=1.5,
            centroid=(2.0, 1.5),
        ),
        Defect(
            id=2,
            class_="spur",
            confidence=0.8,
            bbox=(8, 7, 11, 10),
            area_px=5,
            area_mm2=1.25,
            centroid=(8.6, 8.4),
        ),
    ]
    assert result.summary == Summary(
        defect_count=2,
        defect_area_px=11,
        defect_area_mm2=2.75,
        defect_area_ratio=0.076389,  # 11 / 144
        by_class={
            "open": 1,
            "short": 0,
            "mousebite": 0,
            "spur": 1,
            "spurious_copper": 0,
            "pin_hole": 0,
        },
        verdict="fail",
    )
    expected_map = np.zeros((12, 12), dtype=np.uint8)
    expected_map[1:3, 1:4] = 1
    expected_map[[7, 8, 9, 9, 9], [8, 8, 8, 9, 10]] = 4
    assert result.class_map.dtype == np.uint8
    np.testing.assert_array_equal(result.class_map, expected_map)


def test_defect_fields_are_plain_python_types() -> None:
    # The API serialises these to JSON; numpy scalars would not survive json.dumps.
    fg, cls = two_blob_maps()
    defect = postprocess(stitched(fg, cls), NAMES, config()).defects[0]
    assert type(defect.confidence) is float
    assert type(defect.area_px) is int
    assert all(type(v) is int for v in defect.bbox)
    assert all(type(v) is float for v in defect.centroid)


def test_ids_follow_bbox_top_then_left() -> None:
    # Single pixels at least 4 background pixels apart: three defects at merge distance 3.
    fg = np.zeros((8, 14), dtype=np.float32)
    cls = np.ones((8, 14), dtype=np.uint8)
    fg[5, 0] = fg[0, 12] = fg[5, 6] = 0.9  # top-most first, then left-most on the same row
    cls[0, 12] = 6

    defects = postprocess(stitched(fg, cls), NAMES, config()).defects

    assert [(d.id, d.bbox, d.class_) for d in defects] == [
        (1, (12, 0, 13, 1), "pin_hole"),
        (2, (0, 5, 1, 6), "open"),
        (3, (6, 5, 7, 6), "open"),
    ]


def test_confidence_equal_to_threshold_counts() -> None:
    # 0.7 is not exact in float32 nor in the stitcher's steps of 1 / FG_SCALE; the cut must
    # still treat it as "equal". One step below is not a defect.
    fg = np.zeros((3, 4), dtype=np.float32)
    cls = np.ones((3, 4), dtype=np.uint8)
    fg[1, 0] = np.float32(0.7)
    fg[1, 3] = (round(0.7 * FG_SCALE) - 1) / FG_SCALE  # the step below

    result = postprocess(stitched(fg, cls), NAMES, config(threshold=0.7))

    assert [d.bbox for d in result.defects] == [(0, 1, 1, 2)]
    assert result.defects[0].confidence == 0.7


def test_threshold_zero_never_flags_zero_confidence() -> None:
    fg = np.zeros((4, 4), dtype=np.float32)
    cls = np.full((4, 4), 3, dtype=np.uint8)
    assert postprocess(stitched(fg, cls), NAMES, config(threshold=0.0)).defects == []

    fg[2, 2] = 1e-4  # a few quantization steps: under half a step (7.6e-6) reads as 0
    result = postprocess(stitched(fg, cls), NAMES, config(threshold=0.0))
    assert [(d.class_, d.bbox) for d in result.defects] == [("mousebite", (2, 2, 3, 3))]


def test_min_area_drops_small_components_and_zeroes_them_in_class_map() -> None:
    fg = np.zeros((8, 8), dtype=np.float32)
    cls = np.full((8, 8), 2, dtype=np.uint8)
    fg[0, 0:3] = 0.9  # 3 px: dropped at min_area_px=4
    fg[5:7, 5:7] = 0.9  # 4 px: kept (the rule drops only components with FEWER pixels)

    result = postprocess(stitched(fg, cls), NAMES, config(min_area_px=4))

    assert [(d.id, d.bbox, d.area_px) for d in result.defects] == [(1, (5, 5, 7, 7), 4)]
    expected_map = np.zeros((8, 8), dtype=np.uint8)
    expected_map[5:7, 5:7] = 2
    np.testing.assert_array_equal(result.class_map, expected_map)
    assert result.summary.defect_count == 1
    assert result.summary.defect_area_px == 4
    assert result.summary.by_class["short"] == 1


def test_empty_map_passes_with_zeros_and_no_nan() -> None:
    fg = np.zeros((10, 10), dtype=np.float32)
    cls = np.ones((10, 10), dtype=np.uint8)

    result = postprocess(stitched(fg, cls), NAMES, config())

    assert result.defects == []
    assert result.summary == Summary(
        defect_count=0,
        defect_area_px=0,
        defect_area_mm2=0.0,
        defect_area_ratio=0.0,
        by_class=dict.fromkeys(NAMES, 0),
        verdict="pass",
    )
    assert not math.isnan(result.summary.defect_area_ratio)
    assert not result.class_map.any()


def test_diagonal_neighbours_are_one_defect() -> None:
    fg = np.zeros((5, 5), dtype=np.float32)
    cls = np.ones((5, 5), dtype=np.uint8)
    fg[[1, 2, 3], [1, 2, 3]] = 0.9  # touching only at corners: one 8-connected component

    defects = postprocess(stitched(fg, cls), NAMES, config()).defects

    assert [(d.bbox, d.area_px, d.centroid) for d in defects] == [((1, 1, 4, 4), 3, (2.0, 2.0))]


def test_touching_blobs_of_different_classes_are_one_defect() -> None:
    # One blob, its halves argmax'ed to different classes: one defect, not two. Equal votes
    # (same fg, same number of pixels, no cls_p): the tie goes to the lower class id.
    fg = np.zeros((4, 6), dtype=np.float32)
    cls = np.ones((4, 6), dtype=np.uint8)
    fg[1:3, 1:5] = 0.9
    cls[1:3, 3:5] = 5  # right half is spurious copper

    result = postprocess(stitched(fg, cls), NAMES, config())

    assert [(d.class_, d.bbox, d.area_px) for d in result.defects] == [
        ("open", (1, 1, 5, 3), 8)
    ]
    assert result.defects[0].confidence == 0.45  # mean fg 0.9 x purity 4 * 0.9 / (8 * 0.9)
    assert result.summary.by_class["spurious_copper"] == 0


def test_mixed_class_blob_is_one_defect_of_the_probability_weighted_majority() -> None:
    # A 1x5 blob: 3 faint, unsure "open" pixels and 2 sure "spur" pixels. By pixel count "open"
    # would win 3 to 2; by the vote sum(fg * cls_p) "spur" wins 2 * 1.0 to 3 * 0.25.
    fg = np.zeros((3, 7), dtype=np.float32)
    cls = np.full((3, 7), 2, dtype=np.uint8)
    cls_p = np.full((3, 7), 0.5, dtype=np.float16)
    fg[1, 1:6] = [0.5, 0.5, 0.5, 1.0, 1.0]
    cls[1, 1:6] = [1, 1, 1, 4, 4]
    cls_p[1, 1:6] = [0.5, 0.5, 0.5, 1.0, 1.0]

    result = postprocess(stitched(fg, cls, cls_p), NAMES, config())

    # confidence = mean fg x purity = (3.5 / 5) x (2.0 / 2.75) = 0.7 x 8/11 = 0.50909...
    assert result.defects == [
        Defect(
            id=1,
            class_="spur",
            confidence=0.5091,
            bbox=(1, 1, 6, 2),
            area_px=5,
            area_mm2=1.25,
            centroid=(3.0, 1.0),
        )
    ]
    # The class map paints the whole defect with its one class, so masks agree with the list.
    expected_map = np.zeros((3, 7), dtype=np.uint8)
    expected_map[1, 1:6] = 4
    np.testing.assert_array_equal(result.class_map, expected_map)
    assert result.summary.by_class == {**dict.fromkeys(NAMES, 0), "spur": 1}


def test_confidence_is_mean_fg_times_class_purity() -> None:
    fg = np.zeros((4, 4), dtype=np.float32)
    cls = np.ones((4, 4), dtype=np.uint8)
    cls_p = np.ones((4, 4), dtype=np.float16)
    fg[1:3, 1:3] = [[0.9, 0.8], [0.6, 1.0]]
    cls[1:3, 1:3] = [[2, 2], [3, 3]]
    cls_p[1:3, 1:3] = [[0.75, 0.5], [1.0, 0.5]]
    # Votes: short 0.9 * 0.75 + 0.8 * 0.5 = 1.075; mousebite 0.6 * 1.0 + 1.0 * 0.5 = 1.1.
    mean_fg = (0.9 + 0.8 + 0.6 + 1.0) / 4
    purity = 1.1 / (1.075 + 1.1)

    (defect,) = postprocess(stitched(fg, cls, cls_p), NAMES, config()).defects

    assert defect.class_ == "mousebite"
    assert defect.confidence == round(mean_fg * purity, 4) == 0.4172


def two_fragments(gap: int, diagonal: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Two 1x2 "short" fragments on row 5 (or two pixels on a diagonal), ``gap`` px apart."""
    fg = np.zeros((12, 16), dtype=np.float32)
    cls = np.full((12, 16), 2, dtype=np.uint8)
    if diagonal:
        fg[1, 1] = fg[2 + gap, 2 + gap] = 0.8
    else:
        fg[5, 1:3] = fg[5, 3 + gap : 5 + gap] = 0.8
    return fg, cls


@pytest.mark.parametrize(
    ("gap", "diagonal", "merge_distance_px", "n_defects"),
    [
        (2, False, 3, 1),  # a few pixels apart: one defect
        (3, False, 3, 1),  # exactly the merge distance: still one
        (4, False, 3, 2),  # farther: two
        (3, True, 3, 1),  # the distance is Chebyshev: diagonal gaps count the same
        (4, True, 3, 2),
        (1, False, 0, 2),  # merging off: plain 8-connected components
        (0, True, 0, 1),  # ... which still join diagonal neighbours
    ],
)
def test_fragments_within_the_merge_distance_are_one_defect(
    gap: int, diagonal: bool, merge_distance_px: int, n_defects: int
) -> None:
    fg, cls = two_fragments(gap, diagonal)

    result = postprocess(stitched(fg, cls), NAMES, config(merge_distance_px=merge_distance_px))

    assert len(result.defects) == n_defects
    # Merging never adds the gap's pixels: the area is the defect pixels only.
    assert sum(d.area_px for d in result.defects) == int((fg > 0).sum())
    np.testing.assert_array_equal(result.class_map, np.where(fg > 0, 2, 0))


def test_merged_fragments_two_px_apart_give_one_hand_computed_defect() -> None:
    fg, cls = two_fragments(2)  # pixels at x = 1, 2 and 5, 6 of row 5
    cls[5, 5:7] = 6  # the right fragment was argmax'ed to another class

    (defect,) = postprocess(stitched(fg, cls), NAMES, config()).defects

    # bbox spans the gap, but the area and centroid count only the 4 defect pixels.
    assert (defect.bbox, defect.area_px, defect.centroid) == ((1, 5, 7, 6), 4, (3.5, 5.0))
    assert defect.class_ == "short"  # 2 votes of 0.8 each: the tie goes to the lower id
    assert defect.confidence == 0.4  # mean fg 0.8 x purity 0.5


def test_fragments_on_one_component_of_the_difference_are_one_defect() -> None:
    # Two fragments 8 px apart on row 3, and a third 5 px off them on row 9. The board
    # differs from its golden board along row 3 from x = 1 to 13 (one change), and at row 9.
    fg = np.zeros((12, 24), dtype=np.float32)
    cls = np.full((12, 24), 2, dtype=np.uint8)
    fg[3, 1:3] = 0.9
    fg[3, 11:13] = 0.7
    fg[9, 18:20] = 0.8
    link = np.zeros((12, 24), dtype=bool)
    link[2:5, 1:13] = True
    link[9, 18:20] = True
    link[0, 22:24] = True  # a change the model found nothing on: no defect

    linked = postprocess(stitched(fg, cls), NAMES, config(merge_distance_px=3), link=link)
    plain = postprocess(stitched(fg, cls), NAMES, config(merge_distance_px=3))

    assert [(d.bbox, d.area_px) for d in linked.defects] == [((1, 3, 13, 4), 4),
                                                            ((18, 9, 20, 10), 2)]
    assert linked.defects[0].confidence == 0.8  # mean fg of its own 4 pixels: none added
    assert len(plain.defects) == 3
    np.testing.assert_array_equal(linked.class_map, np.where(fg > 0, 2, 0))
    # With min_area_px 0, a component of the difference alone is still no defect.
    assert all(d.area_px > 0 for d in linked.defects)
    with pytest.raises(ValueError, match="link must have the shape"):
        postprocess(stitched(fg, cls), NAMES, config(), link=link[:5])


def test_registered_difference_keeps_changes_and_drops_edge_slivers() -> None:
    golden = np.full((20, 20), 255, dtype=np.uint8)
    golden[:, 8:12] = 0  # a trace
    board = golden.copy()
    board[5:9, 12:15] = 0  # a 4 x 3 spur off the trace: a real change
    board[14:20, 12] = 0  # the trace one pixel wider down there: misalignment's sliver
    board[1, 1] = 160  # JPEG ringing: under the threshold

    changed = registered_difference(board, golden)

    assert changed.dtype == bool
    # The spur, less its four corners (the opening's cross rounds them off), and nothing else.
    spur = np.zeros_like(changed)
    spur[5:9, 12:15] = True
    spur[[5, 5, 8, 8], [12, 14, 12, 14]] = False
    np.testing.assert_array_equal(changed, spur)
    with pytest.raises(ValueError, match="same shape"):
        registered_difference(board, golden[:10])


def test_min_area_applies_after_merging() -> None:
    # Two 5-px fragments 2 px apart: each is below min_area_px=8, their defect (10 px) is not.
    fg = np.zeros((8, 16), dtype=np.float32)
    cls = np.full((8, 16), 3, dtype=np.uint8)
    fg[3, 1:6] = 0.9
    fg[3, 8:13] = 0.9

    merged = postprocess(stitched(fg, cls), NAMES, config(min_area_px=8))
    unmerged = postprocess(stitched(fg, cls), NAMES, config(min_area_px=8, merge_distance_px=0))

    assert [(d.bbox, d.area_px) for d in merged.defects] == [((1, 3, 13, 4), 10)]
    np.testing.assert_array_equal(merged.class_map, np.where(fg > 0, 3, 0))
    assert unmerged.defects == []
    assert not unmerged.class_map.any()


@pytest.mark.parametrize(("fail_min_count", "verdict"), [(1, "fail"), (2, "fail"), (3, "pass")])
def test_count_rule(fail_min_count: int, verdict: str) -> None:
    fg, cls = two_blob_maps()  # 2 defects
    result = postprocess(stitched(fg, cls), NAMES, config(fail_min_count=fail_min_count))
    assert result.summary.verdict == verdict


@pytest.mark.parametrize(
    ("fail_min_area_mm2", "verdict"), [(0.0, "fail"), (2.7, "fail"), (2.75, "pass"), (10.0, "pass")]
)
def test_area_rule(fail_min_area_mm2: float, verdict: str) -> None:
    fg, cls = two_blob_maps()  # 11 px at 2 px/mm = 2.75 mm²; the rule is strictly greater
    result = postprocess(
        stitched(fg, cls), NAMES, config(fail_rule="area", fail_min_area_mm2=fail_min_area_mm2)
    )
    assert result.summary.verdict == verdict


def test_area_rule_passes_a_clean_board_at_zero_limit() -> None:
    fg = np.zeros((3, 3), dtype=np.float32)
    cls = np.ones((3, 3), dtype=np.uint8)
    result = postprocess(stitched(fg, cls), NAMES, config(fail_rule="area", fail_min_area_mm2=0.0))
    assert result.summary.verdict == "pass"


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("threshold", 1.5, "threshold must be in [0, 1]. Received: threshold=1.5"),
        ("threshold", -0.1, "threshold must be in [0, 1]. Received: threshold=-0.1"),
        ("threshold", float("nan"), "threshold must be in [0, 1]. Received: threshold=nan"),
        ("min_area_px", -1, "min_area_px must be an integer >= 0. Received: min_area_px=-1"),
        ("min_area_px", 2.5, "min_area_px must be an integer >= 0. Received: min_area_px=2.5"),
        ("pixels_per_mm", 0.0, "pixels_per_mm must be a finite number > 0. Received: "),
        ("fail_rule", "size", "fail_rule must be 'count' or 'area'. Received: fail_rule='size'"),
        ("fail_min_count", 0, "fail_min_count must be an integer >= 1. Received: "),
        ("fail_min_area_mm2", -1.0, "fail_min_area_mm2 must be a finite number >= 0. Received:"),
        (
            "merge_distance_px",
            -1,
            "merge_distance_px must be an integer >= 0. Received: merge_distance_px=-1",
        ),
        (
            "merge_distance_px",
            1.5,
            "merge_distance_px must be an integer >= 0. Received: merge_distance_px=1.5",
        ),
    ],
)
def test_config_validation(field: str, value: object, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        config(**{field: value})


def test_postprocess_rejects_cls_p_outside_0_1_on_defect_pixels() -> None:
    fg, cls = two_blob_maps()
    cls_p = np.ones(fg.shape, dtype=np.float16)
    # Values only matter on defect pixels: a 0 on the background is fine, one on a defect not.
    cls_p[0, 0] = 0
    assert len(postprocess(stitched(fg, cls, cls_p), NAMES, config()).defects) == 2
    for bad in (0.0, 1.5, np.nan):
        cls_p[1, 1] = bad
        with pytest.raises(ValueError, match=r"cls_p must be in \(0, 1\] on defect pixels"):
            postprocess(stitched(fg, cls, cls_p), NAMES, config())


def test_cls_p_is_stitched_across_tiles_and_decides_the_class() -> None:
    # A 21x11 blob across the ownership boundaries of four tiles (at 50 on each axis): its
    # left 7 columns are "open", its right 4 "pin_hole", 147 vs 84 pixels of equal fg. By
    # count "open" would win; weighted by cls_p (0.4 vs 0.9) the vote is open 147 * 0.9 * 0.4
    # = 52.9 vs pin_hole 84 * 0.9 * 0.9 = 68.0, so "pin_hole" wins, as it must if every tile's
    # cls_p reached the stitched map.
    height = width = 100
    fg = np.full((height, width), 0.05, dtype=np.float32)
    cls = np.full((height, width), 2, dtype=np.uint8)
    cls_p = np.full((height, width), 0.25, dtype=np.float16)
    fg[40:61, 45:56] = 0.9
    cls[40:61, 45:52], cls_p[40:61, 45:52] = 1, 0.4
    cls[40:61, 52:56], cls_p[40:61, 52:56] = 6, 0.9
    tiles = plan_tiles(height, width, 64, 16)
    stitcher = Stitcher(height, width)
    # The "model" returns, for each tile, the window of the full-size maps it covers.
    for t, f, c, q in zip(
        tiles,
        extract_tiles(fg, tiles, 64)[..., 0],
        extract_tiles(cls, tiles, 64)[..., 0],
        extract_tiles(cls_p, tiles, 64)[..., 0],
        strict=True,
    ):
        stitcher.add(t, f, c, q)

    assert stitcher.cls_p.dtype == np.float16
    np.testing.assert_array_equal(stitcher.cls_p, cls_p)
    result = postprocess(stitcher, NAMES, config(min_area_px=10))
    (defect,) = result.defects
    assert (defect.class_, defect.bbox, defect.area_px) == ("pin_hole", (45, 40, 56, 61), 231)
    vote_open = 147 * 0.9 * float(np.float16(0.4))  # cls_p is float16: 0.4 is 0.39990234
    vote_pin_hole = 84 * 0.9 * float(np.float16(0.9))
    purity = vote_pin_hole / (vote_open + vote_pin_hole)
    assert defect.confidence == round(0.9 * purity, 4)
    np.testing.assert_array_equal(result.class_map, np.where(fg > 0.5, 6, 0))


def test_rle_hand_computed_3x3() -> None:
    class_map = np.array([[0, 1, 0], [0, 1, 2], [0, 0, 0]], dtype=np.uint8)
    # Column-major: col 0 = 0 0 0, col 1 = 1 1 0, col 2 = 0 1 0.
    rle = encode_rle(class_map, NAMES)
    assert rle == {
        "size": [3, 3],
        "counts": [3, 2, 2, 1, 1],
        "order": "F",
        "per_class": {
            "open": {"size": [3, 3], "counts": [3, 2, 4]},
            "short": {"size": [3, 3], "counts": [7, 1, 1]},
        },
    }


def test_rle_starts_with_an_empty_run_when_first_pixel_is_set() -> None:
    class_map = np.array([[3, 0], [0, 0]], dtype=np.uint8)
    rle = encode_rle(class_map)  # no names: keys are the class ids as strings
    assert rle["counts"] == [0, 1, 3]
    assert rle["per_class"] == {"3": {"size": [2, 2], "counts": [0, 1, 3]}}


def test_rle_round_trip() -> None:
    rng = np.random.default_rng(0)
    class_map = rng.choice([0, 0, 0, 1, 4, 6], size=(37, 23)).astype(np.uint8)

    rle = encode_rle(class_map, NAMES)

    assert sum(rle["counts"]) == 37 * 23
    decoded = decode_rle(rle)
    assert decoded.shape == (37, 23)
    assert decoded.dtype == np.uint8
    np.testing.assert_array_equal(decoded, (class_map > 0).astype(np.uint8))
    assert sorted(rle["per_class"]) == ["open", "pin_hole", "spur"]
    for k, name in ((1, "open"), (4, "spur"), (6, "pin_hole")):
        np.testing.assert_array_equal(decode_rle(rle["per_class"][name]), class_map == k)


def test_rle_of_empty_map_decodes_to_zeros() -> None:
    rle = encode_rle(np.zeros((2, 5), dtype=np.uint8), NAMES)
    assert rle["counts"] == [10]
    assert rle["per_class"] == {}
    assert not decode_rle(rle).any()


def test_decode_rle_rejects_counts_that_do_not_fill_the_mask() -> None:
    with pytest.raises(ValueError, match=re.escape("summing to H * W = 9. Received: counts")):
        decode_rle({"size": [3, 3], "counts": [3, 2]})


def test_encode_rle_rejects_ids_without_names() -> None:
    with pytest.raises(ValueError, match="class_map holds class id 3 but only 2 class names"):
        encode_rle(np.array([[3]], dtype=np.uint8), ("a", "b"))


def test_mask_png_decodes_to_the_same_class_map() -> None:
    class_map = np.arange(6 * 7, dtype=np.uint8).reshape(6, 7) % 7

    data = encode_mask_png(class_map)

    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(io.BytesIO(data)) as image:
        assert image.mode == "L"
        np.testing.assert_array_equal(np.asarray(image), class_map)


def test_mask_png_rejects_non_uint8() -> None:
    with pytest.raises(ValueError, match=re.escape("Received: shape (2, 2), dtype int64")):
        encode_mask_png(np.zeros((2, 2), dtype=np.int64))


def test_module_does_not_import_tensorflow() -> None:
    # Post-processing must stay cheap to import (e.g. by clients and the API's schemas).
    code = (
        "import sys, app.inference.postprocess, app.inference.tiling; "
        "sys.exit('tensorflow' in sys.modules or 'model_defs' in sys.modules)"
    )
    repo_root = Path(__file__).resolve().parents[3]
    assert subprocess.run([sys.executable, "-c", code], cwd=repo_root, check=False).returncode == 0


def test_min_confidence_drops_less_confident_defects_after_merging():
    fg = np.zeros((40, 40), np.float32)
    cls = np.zeros((40, 40), np.uint8)
    fg[5:10, 5:10], cls[5:10, 5:10] = 0.9, 1  # confident
    fg[25:30, 25:30], cls[25:30, 25:30] = 0.6, 2  # less so
    base = dict(threshold=0.5, min_area_px=0, pixels_per_mm=48.0)
    names = ("open", "short")
    both = postprocess(stitched(fg, cls), names, PostprocessConfig(**base))
    assert [d.confidence for d in both.defects] == [0.9, 0.6]
    kept = postprocess(stitched(fg, cls), names, PostprocessConfig(**base, min_confidence=0.6))
    assert len(kept.defects) == 2  # equal to the cut: kept
    kept = postprocess(stitched(fg, cls), names, PostprocessConfig(**base, min_confidence=0.7))
    assert [d.class_ for d in kept.defects] == ["open"]
    assert kept.class_map[27, 27] == 0  # dropped defects leave no mask pixels


def test_min_confidence_out_of_range_is_rejected():
    with pytest.raises(ValueError, match=r"min_confidence must be in \[0, 1\]. Received"):
        PostprocessConfig(threshold=0.5, min_area_px=0, pixels_per_mm=48.0, min_confidence=1.5)


@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.7, 1.0])
def test_quantized_p_defect_gives_the_float_maps_defects(threshold: float) -> None:
    # What the inferencer does (the stitcher's uint16 map) against the float map it stands
    # for, gathered by hand: the same defect pixels (0.7 sits exactly on the threshold for 200
    # of them), their P(defect) within half a quantization step, and so the same defects,
    # boxes, classes and confidences to the reported 4 decimals. (At threshold 0 a P(defect)
    # under half a step, 7.6e-6, reads as 0 and is no defect.)
    rng = np.random.default_rng(3)
    fg = rng.random((96, 128), dtype=np.float32) ** 3
    fg[10:20, 10:30] = 0.7  # exactly at one of the thresholds
    fg[40:60, 50:90] = np.float32(0.5) + rng.random((20, 40), dtype=np.float32) / 2
    cls = rng.integers(1, len(NAMES) + 1, fg.shape).astype(np.uint8)
    cls_p = np.full(fg.shape, 0.9, dtype=np.float16)
    (tile,) = plan_tiles(96, 128, 128, 0)
    stitcher = Stitcher(96, 128)
    stitcher.add(tile, np.pad(fg, ((0, 32), (0, 0))), np.pad(cls, ((0, 32), (0, 0))),
                 np.pad(cls_p, ((0, 32), (0, 0)), constant_values=1))
    mask = (fg >= np.float32(threshold)) & (fg > 0)
    exact = DefectPixels(mask, fg[mask], cls[mask], cls_p[mask])
    quantized = gather_defect_pixels(stitcher.fg_quantized, stitcher.cls, stitcher.cls_p,
                                     threshold)
    np.testing.assert_array_equal(quantized.mask, exact.mask)
    np.testing.assert_allclose(quantized.fg, exact.fg, rtol=0, atol=0.5 / FG_SCALE)
    cfg = config(threshold=threshold, min_area_px=4)
    a = describe_defects(exact, NAMES, cfg)
    b = describe_defects(quantized, NAMES, cfg)
    assert [(d.bbox, d.class_, round(d.confidence, 4)) for d in b.defects] == [
        (d.bbox, d.class_, round(d.confidence, 4)) for d in a.defects]
