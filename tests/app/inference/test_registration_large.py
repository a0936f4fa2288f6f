"""Registration of boards over ``REFINE_MAX_PIXELS``: the starts on a shrunk board, then the
motion refined at full resolution on a few patches, which must agree with ECC over the whole
board at full resolution (what smaller boards get).

The limit is lowered so that a 1400 x 1800 board takes the large boards' path: the same code
as on an 8000 x 8000 panel, at a fraction of the time.
"""

from __future__ import annotations

import math
from typing import Any

import cv2
import numpy as np
import pytest

import app.inference.registration as registration
from app.inference.registration import PATCH_SIDE, SCREEN_SIDE, register
from training.synth import make_board, moved

SIZE = (1400, 1800)
#: A quarter of the board's pixels: it is "large", and the fallback grid is a whole quarter side.
LIMIT = 1400 * 1800 // 16

MOTIONS = [(5.5, -3.25, 0.3), (-17.2, 9.6, -1.2), (0.37, -0.21, 0.0)]


@pytest.fixture(scope="module")
def big() -> Any:
    return make_board(seed=3, size=SIZE, jpeg_quality=90)



@pytest.mark.parametrize(("dx", "dy", "degrees"), MOTIONS)
def test_patches_agree_with_ecc_over_the_whole_board_at_full_resolution(
    monkeypatch: pytest.MonkeyPatch, big: Any, dx: float, dy: float, degrees: float
) -> None:
    golden = moved(big.template, dx, dy, degrees)
    _, whole = register(big.image, golden)  # under the limit: ECC over the whole board
    monkeypatch.setattr(registration, "REFINE_MAX_PIXELS", LIMIT)
    warped, patched = register(big.image, golden)
    assert (patched.dx, patched.dy) == pytest.approx((whole.dx, whole.dy), abs=0.02)
    assert patched.rotation_deg == pytest.approx(whole.rotation_deg, abs=0.002)
    # And with the truth, at least as closely as the whole board's ECC.
    assert (patched.dx, patched.dy) == pytest.approx((dx, dy), abs=0.02)
    assert patched.rotation_deg == pytest.approx(degrees, abs=0.002)
    assert patched.score > 0.9 and patched.overlap > 0.9
    assert warped.shape == big.image.shape
    np.testing.assert_array_equal(warped, registration.warp_golden(golden, patched, SIZE))


def test_the_fine_estimate_runs_on_full_resolution_patches_only(
    monkeypatch: pytest.MonkeyPatch, big: Any, ecc_sizes: list[tuple[int, ...]]
) -> None:
    monkeypatch.setattr(registration, "REFINE_MAX_PIXELS", LIMIT)
    register(big.image, moved(big.template, -17.2, 9.6, -1.2))
    k = math.ceil(max(SIZE) / registration.MAX_SIDE)
    coarse = (SIZE[0] // k, SIZE[1] // k)
    side = min(PATCH_SIDE, min(SIZE) // 4)
    larger = [s for s in ecc_sizes if max(s) > SCREEN_SIDE]
    # The coarse grid once (the first start aligns this pair), then patches: no ECC over the
    # whole board on a finer grid.
    assert larger.count(coarse) == 1, ecc_sizes
    assert larger.count((side, side)) >= 3, ecc_sizes
    assert set(larger) == {coarse, (side, side)}, ecc_sizes


def test_a_board_with_too_few_patches_of_copper_is_refined_on_the_whole_grid(
    monkeypatch: pytest.MonkeyPatch, big: Any, ecc_sizes: list[tuple[int, ...]]
) -> None:
    # Copper only in the top-left quarter: one patch of the grid has any, the others are bare.
    bare = np.zeros(SIZE, bool)
    bare[SIZE[0] // 3 :, :] = True
    bare[:, SIZE[1] // 3 :] = True
    board = np.where(bare, 225, big.image).astype(np.uint8)
    template = np.where(bare, 225, big.template).astype(np.uint8)
    monkeypatch.setattr(registration, "REFINE_MAX_PIXELS", LIMIT)
    _, alignment = register(board, moved(template, 4.3, -2.6, 0.2))
    assert (alignment.dx, alignment.dy) == pytest.approx((4.3, -2.6), abs=0.1)
    assert alignment.rotation_deg == pytest.approx(0.2, abs=0.02)
    k = math.ceil(math.sqrt(SIZE[0] * SIZE[1] / LIMIT))
    assert (SIZE[0] // k, SIZE[1] // k) in ecc_sizes, ecc_sizes


def test_the_grids_map_a_warp_there_and_back() -> None:
    warp = registration._matrix(12.3, -4.5, math.radians(1.7))
    for k in (1, 2, 8):
        there = registration._on_grid(warp, k, to_full=False)
        np.testing.assert_allclose(registration._on_grid(there, k, to_full=True), warp, atol=1e-4)
    # A point at the centre of shrunk pixel (10, 20) lands on the centre of the pixel the warp
    # sends it to, on either grid.
    k = 4
    there = registration._on_grid(warp, k, to_full=False)
    q_small = np.array([10.0, 20.0])
    q_full = k * q_small + (k - 1) / 2
    r_full = warp[:, :2] @ q_full + warp[:, 2]
    r_small = there[:, :2] @ q_small + there[:, 2]
    np.testing.assert_allclose(k * r_small + (k - 1) / 2, r_full, atol=1e-3)


@pytest.mark.parametrize("shape", [(64, 70000), (300, 15000)])
def test_a_long_strip_is_refined_on_the_grid_as_before(
    ecc_sizes: list[tuple[int, ...]], shape: tuple[int, int]
) -> None:
    # Over the real limit (4.5 Mpx each), but too narrow for patches of a useful size, or for
    # the shrunk copy the starts run on (64 rows shrunk by 69 would be none at all).
    strip = make_board(seed=1, size=shape)
    assert shape[0] * shape[1] > registration.REFINE_MAX_PIXELS
    _, alignment = register(strip.image, moved(strip.template, 2.3, -1.4, 0.0))
    assert (alignment.dx, alignment.dy) == pytest.approx((2.3, -1.4), abs=0.05)
    assert not [s for s in ecc_sizes if s[0] == s[1] and s[0] > SCREEN_SIDE], ecc_sizes


def test_a_jpeg_rescan_of_a_full_size_panel_is_aligned_everywhere_within_a_few_hundredths() -> (
    None
):
    # The golden board scanned again: moved by under a pixel, brighter, through JPEG. On this
    # 8000 px panel one patch of the grid slides 0.23 px along its edges; kept, it tilted the
    # fitted motion by 0.1 px at the corners.
    golden = make_board(seed=4, size=8000, n_defects=0).template
    rescan = np.clip(moved(golden, 0.43, -0.31, 0.0).astype(np.int16) + 6, 0, 255)
    _, jpeg = cv2.imencode(".jpg", rescan.astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, 75])
    board = cv2.imdecode(jpeg, cv2.IMREAD_GRAYSCALE)
    del rescan, jpeg
    _, alignment = register(board, golden)
    truth = registration._matrix(-0.43, 0.31, 0.0)
    corners = np.array([[0, 0], [8000, 0], [0, 8000], [8000, 8000], [4000, 4000]], float)
    found = corners @ alignment.matrix[:, :2].T.astype(float) + alignment.matrix[:, 2]
    expected = corners @ truth[:, :2].T.astype(float) + truth[:, 2]
    assert np.abs(found - expected).max() < 0.04
