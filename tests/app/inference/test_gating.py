"""Gated inference (``app.inference.gating``): only tiles with work go through the model, and
what they give is exactly what the full path gives there; the rest is background.

The tiny models are random, so they flag pixels everywhere: the tests compare the stitched
maps tile by tile (computed tiles bit-equal to the full path, skipped tiles all background),
which holds for any weights. The shipped pair model (slow) must report the same defects both
ways on synthetic panels.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import cv2
import numpy as np
import pytest

from app.inference.batcher import DynamicBatcher
from app.inference.defects import PostprocessConfig
from app.inference.gating import blank_tiles, candidate_cells, gate_tiles
from app.inference.inferencer import Inferencer
from app.inference.pipeline import InferenceResult
from app.inference.registration import register
from app.inference.tiling import Stitcher, plan_tiles
from training.synth import encode, make_board, moved

CONFIG = PostprocessConfig(threshold=0.0, min_area_px=0, pixels_per_mm=48.0)
PAIR_WEIGHTS = Path(__file__).resolve().parents[3] / "weights" / "pcb_pair_unet.keras"


def defect_free_pair(size: int, seed: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """A golden board and the same board scanned again: moved by under a pixel, brighter by a
    few gray levels, through JPEG."""
    golden = make_board(seed=seed, size=size, n_defects=0).template
    board = np.clip(moved(golden, 0.43, -0.31, 0.0).astype(np.int16) + 6, 0, 255)
    jpeg = encode(board.astype(np.uint8), "JPEG", quality=75)
    return cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_GRAYSCALE), golden


def stitched(inf: Inferencer, board: np.ndarray, golden: np.ndarray | None,
             gating: bool) -> tuple[Stitcher, list, list]:
    """The board's stitched maps, its tiles and the computed ones (the inferencer's stages)."""
    run = inf._begin(board, golden, gating)
    for chunk, arrays in inf.board_chunks(board, run):
        run.stitch(chunk, inf.forward(arrays))
    return run.stitcher, run.tiles, run.to_compute


@pytest.fixture(scope="module")
def pair(tiny_pair_weights: Path) -> Inferencer:
    return Inferencer.load(tiny_pair_weights, device="cpu", max_batch_size=4)


@pytest.fixture(scope="module")
def single(tiny_weights: Path) -> Inferencer:
    return Inferencer.load(tiny_weights, device="cpu", max_batch_size=4)


# --- the candidate map ----------------------------------------------------------------------


@pytest.mark.parametrize("size", [640, 1500])
def test_a_defect_free_rescan_wakes_no_tile(size: int) -> None:
    board, golden = defect_free_pair(size)
    warped, _ = register(board, golden)
    cells = candidate_cells(board, warped)
    assert not cells.any()
    for tile in (64, 640):
        gate = gate_tiles(plan_tiles(size, size, tile, tile // 10), cells)
        assert gate.computed == []


def test_a_one_pixel_edge_shift_is_no_candidate() -> None:
    golden = make_board(seed=2, size=640, n_defects=0).template
    shifted = np.roll(golden, 1, axis=1)
    assert np.count_nonzero(shifted != golden) > 1000  # the shift moves many edges
    assert not candidate_cells(shifted[:, 1:], golden[:, 1:]).any()


def test_every_defect_is_a_candidate_and_its_tiles_are_computed() -> None:
    synth = make_board(seed=7, size=1500, n_defects=12)
    warped, _ = register(synth.image, synth.template)
    cells = candidate_cells(synth.image, warped)
    for tile in (64, 640):
        gate = gate_tiles(plan_tiles(1500, 1500, tile, tile // 10), cells)
        assert 0 < len(gate.computed) < len(gate.computed) + len(gate.skipped)
        covered = np.zeros(synth.mask.shape, bool)
        for t in gate.computed:
            covered[t.core[0]:t.core[1], t.core[2]:t.core[3]] = True
        assert covered[synth.mask > 0].all()


def test_strips_change_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    import app.inference.gating as gating

    synth = make_board(seed=8, size=700, n_defects=10)
    whole = candidate_cells(synth.image, synth.template)
    monkeypatch.setattr(gating, "STRIP_ROWS", 48)
    np.testing.assert_array_equal(candidate_cells(synth.image, synth.template), whole)
    assert whole.any()


@pytest.mark.parametrize(("delta", "found"), [(60, False), (61, True)])
def test_a_difference_just_over_the_threshold_is_found_in_a_strip_of_otherwise_equal_pixels(
    monkeypatch: pytest.MonkeyPatch, delta: int, found: bool
) -> None:
    import app.inference.gating as gating

    # A 3x3 spot of copper (darker) on bare substrate, by exactly ``delta`` gray levels, in one
    # strip of many: every other strip is skipped as identical, and this one is not.
    golden = make_board(seed=2, size=640, n_defects=0).template
    square = np.ones((5, 5), np.uint8)
    flat = (cv2.dilate(golden, square) == cv2.erode(golden, square)) & (golden >= 100)
    ys, xs = np.nonzero(flat)
    pick = np.flatnonzero((ys % 16 >= 2) & (ys % 16 <= 13) & (xs % 16 >= 2) & (xs % 16 <= 13)
                          & (ys > 200))[0]
    y, x = int(ys[pick]), int(xs[pick])
    board = golden.copy()
    board[y - 1 : y + 2, x - 1 : x + 2] = golden[y, x] - delta
    assert int(cv2.absdiff(board, golden).max()) == delta
    monkeypatch.setattr(gating, "STRIP_ROWS", 64)
    cells = candidate_cells(board, golden)
    if found:
        assert list(zip(*np.nonzero(cells), strict=True)) == [(y // 16, x // 16)]
    else:
        assert not cells.any()


def test_rejects_images_of_different_shapes() -> None:
    with pytest.raises(ValueError, match="one shape"):
        candidate_cells(np.zeros((64, 64), np.uint8), np.zeros((64, 65), np.uint8))


# --- gated vs full, tiny models -------------------------------------------------------------


def test_pair_gated_maps_equal_the_full_path_where_computed_and_background_elsewhere(
    pair: Inferencer,
) -> None:
    synth = make_board(seed=5, size=(400, 500), n_defects=4)
    full, tiles, _ = stitched(pair, synth.image, synth.template, gating=False)
    gated, _, computed = stitched(pair, synth.image, synth.template, gating=True)
    assert 0 < len(computed) < len(tiles)
    done = {(t.y0, t.x0) for t in computed}
    for t in tiles:
        region = np.s_[t.core[0]:t.core[1], t.core[2]:t.core[3]]
        if (t.y0, t.x0) in done:
            np.testing.assert_array_equal(gated.fg_quantized[region], full.fg_quantized[region])
            np.testing.assert_array_equal(gated.cls[region], full.cls[region])
            np.testing.assert_array_equal(gated.cls_p[region], full.cls_p[region])
        else:
            assert not gated.fg_quantized[region].any() and not gated.cls[region].any()


def test_pair_result_reports_what_was_computed(pair: Inferencer) -> None:
    synth = make_board(seed=5, size=(400, 500), n_defects=4)
    full = pair.predict(synth.image, CONFIG, golden=synth.template)
    gated = pair.predict(synth.image, CONFIG, golden=synth.template, gating=True)
    assert (full.gated, full.skipped_tiles, full.skipped_px) == (False, 0, 0)
    assert gated.gated and gated.tiles == full.tiles
    assert 0 < gated.skipped_tiles < gated.tiles
    assert 0 < gated.skipped_px < 400 * 500
    assert "candidates" in gated.timings_ms and "candidates" not in full.timings_ms
    # The random model flags pixels everywhere; the skipped area is background.
    assert np.count_nonzero(gated.class_map) < np.count_nonzero(full.class_map)


def test_pair_defect_free_board_runs_no_tile(pair: Inferencer) -> None:
    board, golden = defect_free_pair(640)
    result = pair.predict(board, CONFIG, golden=golden, gating=True)
    assert result.skipped_tiles == result.tiles > 1
    assert result.defects == [] and not result.class_map.any()


def test_async_path_skips_the_same_tiles_and_reports_the_plan(pair: Inferencer) -> None:
    synth = make_board(seed=5, size=(400, 500), n_defects=4)
    sync = pair.predict(synth.image, CONFIG, golden=synth.template, gating=True)
    plans: list[tuple[int, int]] = []
    submitted: list[int] = []

    async def run() -> InferenceResult:
        batcher = DynamicBatcher(pair.forward, 4, 0.005, 256)
        batcher.start()

        async def counted(tiles: np.ndarray, *, admit: bool = True) -> tuple[np.ndarray, ...]:
            submitted.append(len(tiles))
            return await batcher.submit(tiles, admit=admit)

        try:
            return await pair.predict_async(synth.image, CONFIG, counted,
                                            golden=synth.template, gating=True,
                                            on_plan=lambda *plan: plans.append(plan))
        finally:
            await batcher.close()

    result = asyncio.run(run())
    computed = sync.tiles - sync.skipped_tiles
    assert [p[0] for p in plans] == [sum(submitted)] == [computed]
    # The registered golden board was freed but for the windows of the computed tiles.
    assert plans[0][1] == 400 * 500 - computed * 64 * 64 > 0
    np.testing.assert_array_equal(result.class_map, sync.class_map)
    assert result.defects == sync.defects


# --- single mode: blank tiles ---------------------------------------------------------------


def test_single_blank_region_is_exactly_background_and_the_rest_equals_full(
    single: Inferencer,
) -> None:
    board = make_board(seed=6, size=(320, 400), n_defects=0).template.copy()
    board[:, 200:] = 243  # bare substrate: no copper edge at all
    full, tiles, _ = stitched(single, board, None, gating=False)
    gated, _, computed = stitched(single, board, None, gating=True)
    done = {(t.y0, t.x0) for t in computed}
    assert 0 < len(done) < len(tiles)
    for t in tiles:
        region = np.s_[t.core[0]:t.core[1], t.core[2]:t.core[3]]
        window = board[t.y0:t.y0 + 64, t.x0:t.x0 + 64]
        if t.x0 >= 200:
            assert (t.y0, t.x0) not in done
        if (t.y0, t.x0) not in done:
            assert int(window.max()) - int(window.min()) < 64  # no copper edge there
            assert not gated.fg_quantized[region].any() and not gated.cls[region].any()
        else:
            np.testing.assert_array_equal(gated.fg_quantized[region], full.fg_quantized[region])
    result = single.predict(board, CONFIG, gating=True)
    assert not result.class_map[:, 264:].any()


def test_blank_tiles_keep_every_tile_with_copper() -> None:
    board = make_board(seed=6, size=640, n_defects=0).template
    tiles = plan_tiles(640, 640, 64, 6)
    gate = blank_tiles(board, tiles, 64)
    for t in gate.skipped:
        window = board[t.y0:t.y0 + 64, t.x0:t.x0 + 64]
        assert int(window.max()) - int(window.min()) < 64
    flat = np.full((640, 640), 20, np.uint8)
    assert len(blank_tiles(flat, tiles, 64).skipped) == len(tiles)


# --- the shipped pair model -----------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(not PAIR_WEIGHTS.is_file(), reason=f"no shipped weights at {PAIR_WEIGHTS}")
def test_shipped_pair_model_finds_the_same_defects_gated() -> None:
    inf = Inferencer.load(PAIR_WEIGHTS, device="cpu", max_batch_size=1)
    config = PostprocessConfig(
        threshold=inf.card.thresholds.confidence, min_area_px=inf.card.thresholds.min_area_px,
        pixels_per_mm=inf.card.pixels_per_mm, min_confidence=inf.card.thresholds.min_confidence,
    )
    synth = make_board(seed=11, size=1400, n_defects=8, jpeg_quality=85)
    full = inf.predict(synth.image, config, golden=synth.template)
    gated = inf.predict(synth.image, config, golden=synth.template, gating=True)
    assert gated.skipped_tiles > 0
    assert [(d.class_, d.bbox) for d in gated.defects] == [
        (d.class_, d.bbox) for d in full.defects
    ]
    assert gated.defects == full.defects
    assert len(full.defects) >= 4  # the model does find the synthetic defects
    board, golden = defect_free_pair(1400)
    clean = inf.predict(board, config, golden=golden, gating=True)
    assert clean.skipped_tiles == clean.tiles and clean.defects == []
