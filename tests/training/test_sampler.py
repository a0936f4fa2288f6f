"""Tests for training.sampler.CropSampler: shapes, purity in (seed, index), defect crops,
argument checks and prefetch."""

from __future__ import annotations

import re

import cv2
import keras
import numpy as np
import pytest

from training.pack import PairPack
from training.sampler import CropSampler, prefetch
from training.synth import make_board

SIZE = 160  # make_board cannot fit all six defects on every 128 px board
CROP = 32


def binarised(image: np.ndarray) -> np.ndarray:
    return np.where(image >= 128, 255, 0).astype(np.uint8)


@pytest.fixture(scope="module")
def pack() -> PairPack:
    """Three synthetic boards as a pack would hold them (reference = the clean template)."""
    boards = [make_board(seed=i, size=SIZE) for i in range(3)]
    boxes = np.zeros((3, 6, 5), dtype=np.int32)
    for i, board in enumerate(boards):
        boxes[i] = [[*d.bbox, d.label] for d in board.defects]
    return PairPack(
        keys=[f"00001{i:03d}" for i in range(3)],
        groups=["00001"] * 3,
        boards=np.stack([binarised(b.image) for b in boards]),
        references=np.stack([binarised(b.template) for b in boards]),
        masks=np.stack([b.mask for b in boards]),
        boxes=boxes,
        counts=np.full(3, 6, dtype=np.int32),
    )


def assert_batches_equal(a, b) -> None:
    (xa, ya), (xb, yb) = a, b
    xa = xa if isinstance(xa, list) else [xa]
    xb = xb if isinstance(xb, list) else [xb]
    assert len(xa) == len(xb)
    for u, v in zip(xa, xb, strict=True):
        np.testing.assert_array_equal(u, v)
    np.testing.assert_array_equal(ya, yb)


def batches_equal(a, b) -> bool:
    try:
        assert_batches_equal(a, b)
    except AssertionError:
        return False
    return True


def test_is_a_keras_py_dataset(pack):
    sampler = CropSampler(pack, CROP, 2, pair=False, steps=7)
    assert isinstance(sampler, keras.utils.PyDataset)
    assert len(sampler) == 7


def test_single_shapes_and_dtypes(pack):
    x, y = CropSampler(pack, CROP, 4, pair=False, seed=1).batch(0)
    assert isinstance(x, np.ndarray)
    assert x.shape == (4, CROP, CROP, 1) and x.dtype == np.float32
    assert y.shape == (4, CROP, CROP) and y.dtype == np.int32
    assert 0.0 <= x.min() and x.max() <= 255.0


def test_pair_shapes_and_dtypes(pack):
    (boards, references), y = CropSampler(pack, 64, 3, pair=True, seed=1).batch(0)
    for x in (boards, references):
        assert x.shape == (3, 64, 64, 1) and x.dtype == np.float32
        assert 0.0 <= x.min() and x.max() <= 255.0
    assert y.shape == (3, 64, 64) and y.dtype == np.int32


@pytest.mark.parametrize("pair", [False, True])
def test_a_batch_is_a_pure_function_of_seed_and_index(pack, pair):
    sampler = CropSampler(pack, CROP, 4, pair=pair, seed=3)
    again = CropSampler(pack, CROP, 4, pair=pair, seed=3)
    # Same (seed, index): same batch, from the same sampler, another one, in any order.
    later = sampler.batch(5)
    assert_batches_equal(sampler.batch(2), again.batch(2))
    assert_batches_equal(later, again.batch(5))
    assert_batches_equal(sampler.batch(2), sampler[2])
    # Another index or another seed: another batch.
    assert not batches_equal(sampler.batch(2), sampler.batch(3))
    assert not batches_equal(sampler.batch(2), CropSampler(pack, CROP, 4, pair=pair,
                                                           seed=4).batch(2))


def test_a_resumed_run_draws_new_batches(pack):
    first = CropSampler(pack, CROP, 4, pair=True, seed=0, steps=3)
    resumed = CropSampler(pack, CROP, 4, pair=True, seed=0, steps=3, start=3)
    seen = [first[i] for i in range(len(first))]
    for i in range(len(resumed)):
        # The resumed run's step i is the run's step 3 + i, not a replay of step i.
        assert_batches_equal(resumed[i], first.batch(3 + i))
        assert not any(batches_equal(resumed[i], old) for old in seen)


@pytest.mark.parametrize("pair", [False, True])
def test_defect_crops_always_hold_defect_pixels(pack, pair):
    sampler = CropSampler(pack, CROP, 8, pair=pair, seed=0, defect_prob=1.0,
                          hard_negative_prob=0.0)
    labels = set()
    for index in range(4):
        _, masks = sampler.batch(index)
        for mask in masks:
            assert mask.any(), index
            labels |= set(np.unique(mask[mask > 0]).tolist())
    assert labels == {1, 2, 3, 4, 5, 6}  # class-balanced: every class shows up


def test_hard_negatives_sit_on_copper_edges(pack):
    sampler = CropSampler(pack, CROP, 8, pair=False, seed=0, defect_prob=0.0,
                          hard_negative_prob=1.0, jpeg_prob=0.0, blur_prob=0.0)
    for index in range(3):
        x, _ = sampler.batch(index)
        for crop in x[..., 0]:
            assert set(np.unique(crop).tolist()) == {0.0, 255.0}  # copper and substrate


def test_masks_hold_only_the_classes(pack):
    sampler = CropSampler(pack, CROP, 8, pair=False, seed=5)
    for index in range(4):
        _, masks = sampler.batch(index)
        assert set(np.unique(masks).tolist()) <= set(range(7))


def test_without_degradation_a_crop_is_a_turned_window_with_its_own_mask(pack):
    sampler = CropSampler(pack, CROP, 8, pair=False, seed=2, defect_prob=1.0,
                          hard_negative_prob=0.0, jpeg_prob=0.0, blur_prob=0.0)
    x, y = sampler.batch(0)
    turns_seen = set()
    for crop, crop_mask in zip(x[..., 0].astype(np.uint8), y.astype(np.uint8), strict=True):
        found = False
        for k in range(4):
            for flip in (False, True):
                # Undo the augmentation: flip back, then turn back.
                image = crop[:, ::-1] if flip else crop
                mask = crop_mask[:, ::-1] if flip else crop_mask
                image, mask = np.rot90(image, -k), np.rot90(mask, -k)
                for n, board in enumerate(pack.boards):
                    # Squared differences of 0/255 images: about 0 where the window is the
                    # crop, at least 255**2 elsewhere (float rounding aside). Candidates only:
                    # the window and its mask are then compared exactly.
                    scores = cv2.matchTemplate(board.astype(np.float32),
                                               np.ascontiguousarray(image, dtype=np.float32),
                                               cv2.TM_SQDIFF)
                    for row, col in zip(*np.nonzero(scores < 255**2 / 2), strict=True):
                        window = (slice(row, row + CROP), slice(col, col + CROP))
                        if np.array_equal(board[window], image) and np.array_equal(
                            pack.masks[n][window], mask
                        ):
                            found = True
                            turns_seen.add((k, flip))
        assert found, "each crop must be a rotated/flipped window of a board, with its mask"
    assert len(turns_seen) > 1  # the augmentation does turn and flip


@pytest.mark.parametrize("crop", [0, 8, 40, 176])
def test_invalid_crop_raises(pack, crop):
    with pytest.raises(ValueError, match=re.escape(f"Received: crop={crop}")):
        CropSampler(pack, crop, 2, pair=False)


@pytest.mark.parametrize("batch_size", [0, -1])
def test_invalid_batch_size_raises(pack, batch_size):
    with pytest.raises(ValueError, match=re.escape(f"Received: batch_size={batch_size}")):
        CropSampler(pack, CROP, batch_size, pair=False)


@pytest.mark.parametrize(
    ("kwargs", "shown"),
    [
        ({"defect_prob": 0.7, "hard_negative_prob": 0.5}, "0.7 + 0.5"),
        ({"defect_prob": -0.5, "hard_negative_prob": 0.6}, "defect_prob=-0.5"),
        ({"defect_prob": 1.5, "hard_negative_prob": 0.0}, "defect_prob=1.5"),
        ({"hard_negative_prob": -0.1}, "hard_negative_prob=-0.1"),
        ({"jpeg_prob": 1.2}, "jpeg_prob=1.2"),
        ({"blur_prob": -0.2}, "blur_prob=-0.2"),
        ({"reference_shift_px": -1.0}, "reference_shift_px=-1.0"),
    ],
)
def test_invalid_probabilities_raise(pack, kwargs, shown):
    with pytest.raises(ValueError, match=re.escape(shown)):
        CropSampler(pack, CROP, 2, pair=True, **kwargs)


def test_prefetch_yields_the_batches_in_order(pack):
    sampler = CropSampler(pack, CROP, 2, pair=True, seed=9)
    stream = prefetch(sampler, start=4, workers=2, depth=3)
    try:
        got = [next(stream) for _ in range(5)]
    finally:
        stream.close()
    for k, batch in enumerate(got):
        assert_batches_equal(batch, sampler.batch(4 + k))


def _window_of(crop: np.ndarray, images: np.ndarray) -> bool:
    """Whether ``crop`` is a turned/flipped window of one of ``images`` (0/255 uint8)."""
    for k in range(4):
        for flip in (False, True):
            image = np.ascontiguousarray(np.rot90(crop[:, ::-1] if flip else crop, -k))
            for board in images:
                scores = cv2.matchTemplate(board.astype(np.float32), image.astype(np.float32),
                                           cv2.TM_SQDIFF)
                # Candidates only (float rounding): each is then compared exactly.
                for row, col in zip(*np.nonzero(scores < 255**2 / 2), strict=True):
                    window = board[row : row + image.shape[0], col : col + image.shape[1]]
                    if np.array_equal(window, image):
                        return True
    return False


def test_template_negatives_are_template_windows_with_empty_masks(pack):
    sampler = CropSampler(pack, CROP, 8, pair=False, seed=4, defect_prob=1.0,
                          hard_negative_prob=0.0, jpeg_prob=0.0, blur_prob=0.0,
                          template_negative_prob=1.0)
    x, y = sampler.batch(0)
    assert not y.any()  # no defect pixel in a crop of the defect-free template
    crops = x[..., 0].astype(np.uint8)
    assert all(_window_of(c, pack.references) for c in crops)
    # Centred on the defects' places: the same window of the board would hold a defect.
    assert not all(_window_of(c, pack.boards) for c in crops)


def test_template_negatives_are_refused_for_the_pair_model(pack):
    with pytest.raises(ValueError, match="template_negative_prob=0.5 with pair=True"):
        CropSampler(pack, CROP, 2, pair=True, template_negative_prob=0.5)


def test_synthetic_crops_come_from_synthetic_boards_with_their_masks(pack):
    sampler = CropSampler(pack, CROP, 8, pair=True, seed=1, defect_prob=1.0,
                          hard_negative_prob=0.0, jpeg_prob=0.0, blur_prob=0.0,
                          reference_shift_px=0.0, synthetic_prob=1.0, synthetic_boards=2)
    boards, refs, masks = sampler._synthetic
    assert boards.shape == (2, SIZE, SIZE) and set(np.unique(boards)) <= {0, 255}
    (x, _), y = sampler.batch(0)
    crops = x[..., 0].astype(np.uint8)
    assert all(_window_of(c, boards) for c in crops)
    assert not any(_window_of(c, pack.boards) for c in crops)
    assert y.any()  # defect-centred crops of boards that carry defects
    # Pure in (seed, index), like every other crop.
    assert_batches_equal(sampler.batch(3), CropSampler(
        pack, CROP, 8, pair=True, seed=1, defect_prob=1.0, hard_negative_prob=0.0, jpeg_prob=0.0,
        blur_prob=0.0,
        reference_shift_px=0.0, synthetic_prob=1.0, synthetic_boards=2).batch(3))


def test_synthetic_crops_need_boards(pack):
    with pytest.raises(ValueError, match="synthetic_boards=0"):
        CropSampler(pack, CROP, 2, pair=False, synthetic_prob=0.1)
