"""Tiled inference of the shipped models matches whole-image inference.

Large boards are cut into 640 px tiles that overlap by the card's ``input.tile_overlap``
(default 64 px, so 32 px of context a side, and each pixel is taken from the tile where it is
most central). The overlap is enough only if the model's effective receptive field is that
short: this runs both shipped models on a 1280 x 1280 synthetic board tiled (3 x 3 tiles) and
whole, and compares.
Measured: the largest |P(defect)| difference anywhere is 0.007 (single) and 0.0075 (pair) at
64 px; at 192 px it is 0.0003 and 0.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from app.inference.defects import PostprocessConfig
from app.inference.inferencer import Inferencer
from app.inference.postprocess import postprocess
from app.inference.tiling import Stitcher, plan_tiles
from training.synth import make_board

WEIGHTS = Path(__file__).resolve().parents[3] / "weights"


# Slow: loads both full-size models and runs a 1280 px board whole (about a minute here).
@pytest.mark.slow
@pytest.mark.parametrize("name", ["pcb_defect_unet.keras", "pcb_pair_unet.keras"])
def test_tiled_equals_whole_board(name: str) -> None:
    inf = Inferencer.load(WEIGHTS / name)
    assert inf.tile_overlap == 64  # the default under test
    board = make_board(seed=5, size=1280, n_defects=12, jpeg_quality=90)
    golden = board.template if inf.pair else None
    x = board.image[None, ..., None].astype("float32")
    inputs = [x, board.template[None, ..., None].astype("float32")] if inf.pair else x
    whole = np.asarray(inf.model(inputs, training=False))[0]

    tiles = inf.pre_process(board.image)
    assert len(tiles) == 9
    stitcher = Stitcher(1280, 1280)
    for chunk, arrays in inf.tile_chunks(board.image, tiles, golden):
        fg, cls, cls_p = inf.forward(arrays)
        for i, tile in enumerate(chunk):
            stitcher.add(tile, fg[i], cls[i], cls_p[i])

    diff = np.abs(stitcher.fg - (1.0 - whole[..., 0]))
    print(f"{name}: largest |P(defect)| difference, tiled vs whole: {diff.max():.4f}")
    assert diff.max() < 0.02
    config = PostprocessConfig(threshold=0.5, min_area_px=0, pixels_per_mm=48.0)
    tiled = postprocess(stitcher, inf.card.classes, config)
    defect_probs = whole[..., 1:]
    cls_whole = (np.argmax(defect_probs, axis=-1) + 1).astype(np.uint8)
    cls_p_whole = (defect_probs.max(-1) / np.maximum(defect_probs.sum(-1), 1e-12)).astype(
        np.float16)
    # The whole board's maps as one tile: the stitcher keeps them as it keeps the tiles'.
    whole_board = Stitcher(1280, 1280)
    (one_tile,) = plan_tiles(1280, 1280, 1280, 0)
    whole_board.add(one_tile, 1.0 - whole[..., 0], cls_whole,
                    np.clip(cls_p_whole, 1 / 6, 1).astype(np.float16))
    direct = postprocess(whole_board, inf.card.classes, config)
    # The same defects; a box may move by a pixel where a border pixel sits at the threshold
    # and another CPU's kernels round differently.
    assert [d.class_ for d in tiled.defects] == [d.class_ for d in direct.defects]
    for t, w in zip(tiled.defects, direct.defects, strict=True):
        assert np.abs(np.subtract(t.bbox, w.bbox)).max() <= 2, (t, w)
