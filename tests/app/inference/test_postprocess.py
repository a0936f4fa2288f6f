"""Tests for app.inference.postprocess, on tiny maps whose answers are worked out by hand."""

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

from app.inference.postprocess import (
    Defect,
    PostprocessConfig,
    Summary,
    decode_rle,
    encode_mask_png,
    encode_rle,
    postprocess,
    split_probs,
)

# The model's order (model_defs.CLASS_NAMES), written out so these tests need no TensorFlow.
NAMES = ("open", "short", "mousebite", "spur", "spurious_copper", "pin_hole")


def two_blob_maps() -> tuple[np.ndarray, np.ndarray]:
    """A 10x10 board with an "open" 2x3 block and an L-shaped "spur" of 5 pixels.

    Background pixels have fg 0.1 and cls 2 ("short"): the graph always emits some class, and
    the thresholding alone must keep it out.
    """
    fg = np.full((10, 10), 0.1, dtype=np.float32)
    cls = np.full((10, 10), 2, dtype=np.uint8)
    # "open": rows 1-2, cols 1-3 -> bbox (1, 1, 4, 3), area 6, centroid (2.0, 1.5), conf 0.75.
    fg[1:3, 1:4] = [[0.5, 1.0, 0.5], [1.0, 0.5, 1.0]]
    cls[1:3, 1:4] = 1
    # "spur": (5,6) (6,6) (7,6) (7,7) (7,8) as (y, x) -> bbox (6, 5, 9, 8), area 5,
    # centroid x = 33/5 = 6.6, y = 32/5 = 6.4, conf mean(0.6..1.0) = 0.8.
    for (y, x), v in zip(
        [(5, 6), (6, 6), (7, 6), (7, 7), (7, 8)], [0.6, 0.7, 0.8, 0.9, 1.0], strict=True
    ):
        fg[y, x] = v
        cls[y, x] = 4
    return fg, cls


def config(**overrides: object) -> PostprocessConfig:
    """threshold 0.5, no area cut, 2 px/mm (so mm² = px / 4), count rule."""
    values: dict[str, object] = {"threshold": 0.5, "min_area_px": 0, "pixels_per_mm": 2.0}
    values.update(overrides)
    return PostprocessConfig(**values)  # type: ignore[arg-type]


def test_two_blobs_give_hand_computed_defects_and_summary() -> None:
    fg, cls = two_blob_maps()

    result = postprocess(fg, cls, NAMES, config())

    assert result.defects == [
        Defect(
            id=1,
            class_name="open",
            confidence=0.75,
            bbox=(1, 1, 4, 3),
            area_px=6,
            area_mm2=1.5,
            centroid=(2.0, 1.5),
        ),
        Defect(
            id=2,
            class_name="spur",
            confidence=0.8,
            bbox=(6, 5, 9, 8),
            area_px=5,
            area_mm2=1.25,
            centroid=(6.6, 6.4),
        ),
    ]
    assert result.summary == Summary(
        defect_count=2,
        defect_area_px=11,
        defect_area_mm2=2.75,
        defect_area_ratio=0.11,
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
    expected_map = np.zeros((10, 10), dtype=np.uint8)
    expected_map[1:3, 1:4] = 1
    expected_map[[5, 6, 7, 7, 7], [6, 6, 6, 7, 8]] = 4
    assert result.class_map.dtype == np.uint8
    np.testing.assert_array_equal(result.class_map, expected_map)


def test_defect_fields_are_plain_python_types() -> None:
    # The API serialises these to JSON; numpy scalars would not survive json.dumps.
    fg, cls = two_blob_maps()
    defect = postprocess(fg, cls, NAMES, config()).defects[0]
    assert type(defect.confidence) is float
    assert type(defect.area_px) is int
    assert all(type(v) is int for v in defect.bbox)
    assert all(type(v) is float for v in defect.centroid)


def test_ids_follow_bbox_top_then_left() -> None:
    fg = np.zeros((6, 10), dtype=np.float32)
    cls = np.ones((6, 10), dtype=np.uint8)
    fg[3, 0] = fg[0, 8] = fg[3, 5] = 0.9  # top-most first, then left-most on the same row
    cls[0, 8] = 6

    defects = postprocess(fg, cls, NAMES, config()).defects

    assert [(d.id, d.bbox, d.class_name) for d in defects] == [
        (1, (8, 0, 9, 1), "pin_hole"),
        (2, (0, 3, 1, 4), "open"),
        (3, (5, 3, 6, 4), "open"),
    ]


def test_confidence_equal_to_threshold_counts() -> None:
    # 0.7 is not exact in float32; the cut must still treat float32(0.7) as "equal".
    fg = np.zeros((3, 4), dtype=np.float32)
    cls = np.ones((3, 4), dtype=np.uint8)
    fg[1, 0] = np.float32(0.7)
    fg[1, 3] = np.nextafter(np.float32(0.7), np.float32(0))

    result = postprocess(fg, cls, NAMES, config(threshold=0.7))

    assert [d.bbox for d in result.defects] == [(0, 1, 1, 2)]
    assert result.defects[0].confidence == 0.7


def test_threshold_zero_never_flags_zero_confidence() -> None:
    fg = np.zeros((4, 4), dtype=np.float32)
    cls = np.full((4, 4), 3, dtype=np.uint8)
    assert postprocess(fg, cls, NAMES, config(threshold=0.0)).defects == []

    fg[2, 2] = 1e-6
    result = postprocess(fg, cls, NAMES, config(threshold=0.0))
    assert [(d.class_name, d.bbox) for d in result.defects] == [("mousebite", (2, 2, 3, 3))]


def test_min_area_drops_small_components_and_zeroes_them_in_class_map() -> None:
    fg = np.zeros((8, 8), dtype=np.float32)
    cls = np.full((8, 8), 2, dtype=np.uint8)
    fg[0, 0:3] = 0.9  # 3 px: dropped at min_area_px=4
    fg[5:7, 5:7] = 0.9  # 4 px: kept (the rule drops only components with FEWER pixels)

    result = postprocess(fg, cls, NAMES, config(min_area_px=4))

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

    result = postprocess(fg, cls, NAMES, config())

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

    defects = postprocess(fg, cls, NAMES, config()).defects

    assert [(d.bbox, d.area_px, d.centroid) for d in defects] == [((1, 1, 4, 4), 3, (2.0, 2.0))]


def test_touching_blobs_of_different_classes_are_separate_defects() -> None:
    fg = np.zeros((4, 6), dtype=np.float32)
    cls = np.ones((4, 6), dtype=np.uint8)
    fg[1:3, 1:5] = 0.9
    cls[1:3, 3:5] = 5  # right half is spurious copper

    defects = postprocess(fg, cls, NAMES, config()).defects

    assert [(d.class_name, d.bbox, d.area_px) for d in defects] == [
        ("open", (1, 1, 3, 3), 4),
        ("spurious_copper", (3, 1, 5, 3), 4),
    ]


@pytest.mark.parametrize(("fail_min_count", "verdict"), [(1, "fail"), (2, "fail"), (3, "pass")])
def test_count_rule(fail_min_count: int, verdict: str) -> None:
    fg, cls = two_blob_maps()  # 2 defects
    result = postprocess(fg, cls, NAMES, config(fail_min_count=fail_min_count))
    assert result.summary.verdict == verdict


@pytest.mark.parametrize(
    ("fail_min_area_mm2", "verdict"), [(0.0, "fail"), (2.7, "fail"), (2.75, "pass"), (10.0, "pass")]
)
def test_area_rule(fail_min_area_mm2: float, verdict: str) -> None:
    fg, cls = two_blob_maps()  # 11 px at 2 px/mm = 2.75 mm²; the rule is strictly greater
    result = postprocess(
        fg, cls, NAMES, config(fail_rule="area", fail_min_area_mm2=fail_min_area_mm2)
    )
    assert result.summary.verdict == verdict


def test_area_rule_passes_a_clean_board_at_zero_limit() -> None:
    fg = np.zeros((3, 3), dtype=np.float32)
    cls = np.ones((3, 3), dtype=np.uint8)
    result = postprocess(fg, cls, NAMES, config(fail_rule="area", fail_min_area_mm2=0.0))
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
    ],
)
def test_config_validation(field: str, value: object, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        config(**{field: value})


def test_postprocess_rejects_bad_maps() -> None:
    fg, cls = two_blob_maps()
    with pytest.raises(ValueError, match=re.escape("cls must have the shape of fg (10, 10)")):
        postprocess(fg, cls[:5], NAMES, config())
    with pytest.raises(ValueError, match=re.escape("Received: cls values in [1, 7]")):
        postprocess(fg, np.where(cls == 4, 7, cls).astype(np.uint8), NAMES, config())
    with pytest.raises(ValueError, match=re.escape("fg must be a non-empty (H, W) array")):
        postprocess(fg[None], cls[None], NAMES, config())
    with pytest.raises(ValueError, match="class_names must be unique"):
        postprocess(fg, cls, ("a", "a", "b", "c"), config())


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


def test_split_probs_hand_made_pixel() -> None:
    # Classes 2 and 3 tie: the lower id wins, as with tf.argmax.
    probs = np.array([[[0.1, 0.05, 0.3, 0.3, 0.1, 0.1, 0.05]]], dtype=np.float32)

    fg, cls = split_probs(probs)

    assert fg.shape == cls.shape == (1, 1)
    assert fg.dtype == np.float32
    assert cls.dtype == np.uint8
    assert fg[0, 0] == np.float32(1) - np.float32(0.1)
    assert cls[0, 0] == 2


def test_split_probs_batch() -> None:
    probs = np.zeros((2, 1, 2, 7), dtype=np.float32)
    probs[0, 0, 0, 0] = 1.0  # sure background: fg 0
    probs[0, 0, 1, 6] = 1.0  # sure pin_hole
    probs[1, 0, :, 3] = 1.0  # sure mousebite

    fg, cls = split_probs(probs)

    np.testing.assert_array_equal(fg, [[[0.0, 1.0]], [[1.0, 1.0]]])
    np.testing.assert_array_equal(cls, [[[1, 6]], [[3, 3]]])


def test_split_probs_rejects_bad_shape() -> None:
    with pytest.raises(ValueError, match=re.escape("Received: probs with shape (7,)")):
        split_probs(np.zeros(7, dtype=np.float32))


def test_module_does_not_import_tensorflow() -> None:
    # Post-processing must stay cheap to import (e.g. by clients and the API's schemas).
    code = (
        "import sys, app.inference.postprocess, app.inference.tiling; "
        "sys.exit('tensorflow' in sys.modules or 'model_defs' in sys.modules)"
    )
    repo_root = Path(__file__).resolve().parents[3]
    assert subprocess.run([sys.executable, "-c", code], cwd=repo_root, check=False).returncode == 0
