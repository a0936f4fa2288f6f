"""Tests for app.inference.tiling: exact ownership, padding, seamless stitching."""

from __future__ import annotations

import re

import numpy as np
import pytest

from app.inference.defects import PostprocessConfig
from app.inference.postprocess import postprocess
from app.inference.tiling import FG_SCALE, Stitcher, Tile, extract_tiles, plan_tiles

NAMES = ("open", "short", "mousebite", "spur", "spurious_copper", "pin_hole")


def assert_plan_is_sound(tiles: list[Tile], height: int, width: int, tile: int, overlap: int):
    """Checks a plan without a full-size array, so it also works for huge boards.

    Cores are products of row and column intervals; the plan partitions the image exactly when
    the distinct row intervals tile [0, H), the column intervals tile [0, W), and every
    (row, column) pair appears exactly once.
    """
    rows = sorted({t.core[:2] for t in tiles})
    cols = sorted({t.core[2:] for t in tiles})
    for intervals, size in ((rows, height), (cols, width)):
        assert intervals[0][0] == 0
        assert intervals[-1][1] == size
        for (_, stop), (start, _) in zip(intervals, intervals[1:], strict=False):
            assert stop == start  # no gap, no overlap
        assert all(start < stop for start, stop in intervals)
    pairs = [(t.core[:2], t.core[2:]) for t in tiles]
    assert len(pairs) == len(set(pairs)) == len(rows) * len(cols)

    padded_h, padded_w = max(height, tile), max(width, tile)
    margin = overlap // 2
    for t in tiles:
        y_start, y_stop, x_start, x_stop = t.core
        # The window fits the (padded) image, the core sits inside the window...
        assert 0 <= t.y0 and t.y0 + tile <= padded_h
        assert 0 <= t.x0 and t.x0 + tile <= padded_w
        assert t.core_in_tile == (y_start - t.y0, y_stop - t.y0, x_start - t.x0, x_stop - t.x0)
        ty_start, ty_stop, tx_start, tx_stop = t.core_in_tile
        assert 0 <= ty_start < ty_stop <= tile and 0 <= tx_start < tx_stop <= tile
        # ...and keeps >= overlap // 2 context on every side that is not the image border.
        if y_start > 0:
            assert ty_start >= margin
        if y_stop < height:
            assert tile - ty_stop >= margin
        if x_start > 0:
            assert tx_start >= margin
        if x_stop < width:
            assert tile - tx_stop >= margin
        # Windows on large dimensions never need padding: the last one is shifted back.
        if height >= tile:
            assert t.y0 + tile <= height
        if width >= tile:
            assert t.x0 + tile <= width


SHAPES = [
    # (height, width, tile, overlap)
    (1, 1, 64, 16),
    (64, 64, 64, 16),
    (65, 65, 64, 16),
    (65, 64, 64, 16),
    (100, 237, 64, 16),
    (37, 200, 64, 8),
    (200, 37, 64, 8),
    (128, 128, 64, 0),
    (130, 70, 64, 0),
    (100, 100, 8, 7),
    (641, 1000, 640, 64),
]


@pytest.mark.parametrize(("height", "width", "tile", "overlap"), SHAPES)
def test_every_pixel_is_owned_exactly_once(height: int, width: int, tile: int, overlap: int):
    tiles = plan_tiles(height, width, tile, overlap)

    assert_plan_is_sound(tiles, height, width, tile, overlap)
    owners = np.zeros((height, width), dtype=np.int32)
    for t in tiles:
        y_start, y_stop, x_start, x_stop = t.core
        owners[y_start:y_stop, x_start:x_stop] += 1
    assert (owners == 1).all()


def test_8000_square_board_plan() -> None:
    tiles = plan_tiles(8000, 8000, 640, 64)

    # Stride 576: ceil((8000 - 640) / 576) + 1 = 14 windows per axis.
    assert len(tiles) == 14 * 14
    assert_plan_is_sound(tiles, 8000, 8000, 640, 64)
    assert tiles[-1].y0 == tiles[-1].x0 == 8000 - 640


def test_plan_hand_computed() -> None:
    # Windows at 0 and 36 (the second shifted back from 48 to end at 100); they overlap on
    # [36, 64), so ownership flips at (36 + 64) // 2 = 50.
    tiles = plan_tiles(100, 100, 64, 16)

    assert tiles == [
        Tile(y0=0, x0=0, core=(0, 50, 0, 50), core_in_tile=(0, 50, 0, 50)),
        Tile(y0=0, x0=36, core=(0, 50, 50, 100), core_in_tile=(0, 50, 14, 64)),
        Tile(y0=36, x0=0, core=(50, 100, 0, 50), core_in_tile=(14, 64, 0, 50)),
        Tile(y0=36, x0=36, core=(50, 100, 50, 100), core_in_tile=(14, 64, 14, 64)),
    ]


def test_small_image_gets_one_padded_tile() -> None:
    assert plan_tiles(3, 2, 4, 1) == [
        Tile(y0=0, x0=0, core=(0, 3, 0, 2), core_in_tile=(0, 3, 0, 2)),
    ]
    image = np.array([[1, 2], [3, 4], [5, 6]], dtype=np.uint8)

    batch = extract_tiles(image, plan_tiles(3, 2, 4, 1), 4)

    assert batch.shape == (1, 4, 4, 1)
    assert batch.dtype == np.uint8
    # Edge replication: the padding repeats the last row/column, it adds no new edge.
    np.testing.assert_array_equal(
        batch[0, :, :, 0],
        [[1, 2, 2, 2], [3, 4, 4, 4], [5, 6, 6, 6], [5, 6, 6, 6]],
    )


def test_extract_a_batch_is_a_slice_of_extracting_all() -> None:
    image = np.random.default_rng(1).integers(0, 256, size=(150, 97), dtype=np.uint8)
    tiles = plan_tiles(150, 97, 64, 16)

    assert np.array_equal(
        extract_tiles(image, tiles[2:4], 64), extract_tiles(image, tiles, 64)[2:4]
    )


@pytest.mark.parametrize(
    ("height", "width", "tile", "overlap"),
    [
        (150, 97, 64, 16),
        (30, 20, 64, 16),
        (64, 64, 64, 16),
        (65, 65, 64, 16),
        (128, 128, 64, 0),
        (130, 70, 64, 0),
    ],
)
def test_identity_model_stitches_back_exactly(height: int, width: int, tile: int, overlap: int):
    image = np.random.default_rng(0).integers(0, 256, size=(height, width), dtype=np.uint8)
    tiles = plan_tiles(height, width, tile, overlap)
    batch = extract_tiles(image, tiles, tile)
    stitcher = Stitcher(height, width)

    for t, x in zip(tiles, batch, strict=True):
        pixel = x[:, :, 0]
        stitcher.add(t, pixel.astype(np.float32) / 255, pixel % 7, pixel.astype(np.float16) / 256)

    assert stitcher.fg.dtype == np.float32 and stitcher.cls.dtype == np.uint8
    assert stitcher.cls_p.dtype == np.float16
    np.testing.assert_array_equal(stitcher.fg, image.astype(np.float32) / 255)
    np.testing.assert_array_equal(stitcher.cls, image % 7)
    np.testing.assert_array_equal(stitcher.cls_p, image.astype(np.float16) / 256)


@pytest.mark.parametrize(
    ("height", "width", "tile", "overlap"), [(150, 97, 64, 16), (300, 300, 64, 20)]
)
def test_tile_margins_never_reach_the_output(height: int, width: int, tile: int, overlap: int):
    """A model that is wrong within overlap // 2 of a tile edge still stitches to the truth.

    Convolutional models are least reliable near a tile's edge; ownership must keep those
    pixels out, except where the tile's edge is the image's own edge.
    """
    image = np.random.default_rng(2).integers(0, 256, size=(height, width), dtype=np.uint8)
    tiles = plan_tiles(height, width, tile, overlap)
    batch = extract_tiles(image, tiles, tile)
    m = overlap // 2
    stitcher = Stitcher(height, width)

    for t, x in zip(tiles, batch, strict=True):
        fg = x[:, :, 0].astype(np.float32) / 255
        if t.y0 > 0:
            fg[:m] = -1
        if t.y0 + tile < height:
            fg[-m:] = -1
        if t.x0 > 0:
            fg[:, :m] = -1
        if t.x0 + tile < width:
            fg[:, -m:] = -1
        stitcher.add(t, fg, np.ones((tile, tile), dtype=np.uint8), np.ones((tile, tile)))

    np.testing.assert_array_equal(stitcher.fg, image.astype(np.float32) / 255)


@pytest.mark.parametrize(("tile", "overlap"), [(64, 16), (50, 0)])
def test_defect_across_tile_edge_comes_back_as_one_defect(tile: int, overlap: int) -> None:
    # On 100x100, both plans put the ownership boundary at 50 on each axis; the blob spans
    # rows 40-60 and columns 45-55, so four tiles each own a piece of it.
    height = width = 100
    fg = np.full((height, width), 0.05, dtype=np.float32)
    cls = np.full((height, width), 1, dtype=np.uint8)
    fg[40:61, 45:56] = 0.9
    cls[40:61, 45:56] = 3
    tiles = plan_tiles(height, width, tile, overlap)
    owners = {
        t for t in tiles if t.core[0] < 61 and t.core[1] > 40 and t.core[2] < 56 and t.core[3] > 45
    }
    assert len(owners) == 4

    # The "model" returns, for each tile, the window of the full-size maps it covers.
    fg_tiles = extract_tiles(fg, tiles, tile)[..., 0]
    cls_tiles = extract_tiles(cls, tiles, tile)[..., 0]
    stitcher = Stitcher(height, width)
    for t, f, c in zip(tiles, fg_tiles, cls_tiles, strict=True):
        stitcher.add(t, f, c, np.ones(f.shape, dtype=np.float16))
    config = PostprocessConfig(threshold=0.5, min_area_px=10, pixels_per_mm=1)
    result = postprocess(stitcher, NAMES, config)

    assert [(d.id, d.class_, d.bbox, d.area_px) for d in result.defects] == [
        (1, "mousebite", (45, 40, 56, 61), 21 * 11)
    ]
    assert result.defects[0].centroid == (50.0, 50.0)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((10, 10, 0, 0), "tile must be an integer >= 1. Received: tile=0"),
        ((10, 10, 8, 8), "0 <= overlap < tile. Received: overlap=8, tile=8"),
        ((10, 10, 8, -1), "0 <= overlap < tile. Received: overlap=-1, tile=8"),
        ((0, 10, 8, 2), "height must be an integer >= 1. Received: height=0"),
        ((10, 2.5, 8, 2), "width must be an integer >= 1. Received: width=2.5"),
    ],
)
def test_plan_validation(args: tuple, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        plan_tiles(*args)


def test_extract_rejects_a_plan_for_another_image() -> None:
    tiles = plan_tiles(200, 200, 64, 16)
    with pytest.raises(ValueError, match="does not fit an image of shape"):
        extract_tiles(np.zeros((100, 100), dtype=np.uint8), tiles, 64)


def test_stitcher_rejects_bad_tiles() -> None:
    tiles = plan_tiles(100, 100, 64, 16)
    stitcher = Stitcher(100, 100)
    ones = np.ones((64, 64), dtype=np.float32)
    with pytest.raises(
        ValueError, match=re.escape("Received: fg_tile (64, 64), cls_tile (64, 63), cls_p_tile")
    ):
        stitcher.add(tiles[0], ones, np.ones((64, 63), dtype=np.uint8), ones)
    with pytest.raises(ValueError, match=re.escape("cls_tile (64, 64), cls_p_tile (64, 1)")):
        stitcher.add(tiles[0], ones, ones, ones[:, :1])
    with pytest.raises(ValueError, match="does not fit tile outputs of shape"):
        stitcher.add(tiles[3], ones[:32, :32], ones[:32, :32], ones[:32, :32])
    with pytest.raises(ValueError, match="is not inside the image"):
        Stitcher(50, 50).add(tiles[3], ones, ones, ones)

    stitcher.add(tiles[0], ones, ones, ones)
    with pytest.raises(ValueError, match="was already added"):
        stitcher.add(tiles[0], ones, ones, ones)


def test_release_frees_the_maps() -> None:
    stitcher = Stitcher(300, 200)
    kept = stitcher.fg_quantized.nbytes + stitcher.cls.nbytes + stitcher.cls_p.nbytes
    assert kept == 5 * 300 * 200
    stitcher.release()
    assert stitcher.fg_quantized.size == stitcher.cls.size == stitcher.cls_p.size == 0


def test_p_defect_is_kept_in_steps_of_one_over_fg_scale() -> None:
    # One 4 x 4 tile owning the whole image: what goes in comes back within half a step.
    (tile,) = plan_tiles(4, 4, 4, 0)
    values = np.array([[0.0, 1e-6, 0.25, 1 / 3], [0.5, 0.7, 0.999999, 1.0],
                       [np.nan, -0.5, 1.5, 2 / 255], [0.1, 0.2, 0.3, 0.4]], dtype=np.float32)
    stitcher = Stitcher(4, 4)
    stitcher.add(tile, values, np.ones((4, 4), np.uint8), np.ones((4, 4), np.float16))
    assert stitcher.fg_quantized.dtype == np.uint16
    want = np.nan_to_num(np.clip(values, 0, 1), nan=0.0)  # NaN reads as 0; outside [0, 1] clips
    np.testing.assert_allclose(stitcher.fg, want, rtol=0, atol=0.5 / FG_SCALE)
    assert stitcher.fg[2, 3] == np.float32(2 / 255)  # k / 255 exactly: 65535 = 255 x 257
