"""Tests for model_defs.losses: dice_iou_loss and its Keras wrapper DiceIoULoss."""

from __future__ import annotations

import math
import re

import keras
import numpy as np
import pytest

from model_defs import DiceIoULoss, build_model, dice_iou_loss

# A 1x2x2x3 example: labels and softmax-like probabilities per pixel.
LABELS = np.array([[[0, 1], [2, 1]]])  # (1, 2, 2)
PROBS = np.array(
    [[[[0.8, 0.1, 0.1], [0.2, 0.6, 0.2]], [[0.1, 0.3, 0.6], [0.5, 0.5, 0.0]]]],
    dtype="float32",
)  # (1, 2, 2, 3)


def numpy_of(x) -> np.ndarray:
    return keras.ops.convert_to_numpy(x)


def one_hot(labels: np.ndarray, k: int) -> np.ndarray:
    return np.eye(k, dtype="float32")[labels]


def expected_terms(smooth: float) -> dict[int, tuple[float, float]]:
    """(dice, iou) per class of the example, summed by hand from the table above.

    class 0: truth at (0,0);        I = 0.8;       T = 1;  P = 0.8+0.2+0.1+0.5 = 1.6
    class 1: truth at (0,1), (1,1); I = 0.6+0.5;   T = 2;  P = 0.1+0.6+0.3+0.5 = 1.5
    class 2: truth at (1,0);        I = 0.6;       T = 1;  P = 0.1+0.2+0.6+0.0 = 0.9
    """
    sums = {0: (0.8, 1.0, 1.6), 1: (1.1, 2.0, 1.5), 2: (0.6, 1.0, 0.9)}
    return {
        c: ((2 * i + smooth) / (t + p + smooth), (i + smooth) / (t + p - i + smooth))
        for c, (i, t, p) in sums.items()
    }


def test_hand_computed_example_defaults():
    # smooth 1, weights 0.5/0.5, background excluded:
    # class 1: dice = 3.2/4.5, iou = 2.1/3.4;  class 2: dice = 2.2/2.9, iou = 1.6/2.3
    class1 = 0.5 * (1 - 3.2 / 4.5) + 0.5 * (1 - 2.1 / 3.4)
    class2 = 0.5 * (1 - 2.2 / 2.9) + 0.5 * (1 - 1.6 / 2.3)
    expected = (class1 + class2) / 2
    loss = numpy_of(dice_iou_loss(LABELS, PROBS))
    assert loss.shape == (1,)
    assert loss[0] == pytest.approx(expected, abs=1e-6)
    assert expected == pytest.approx(0.3042, abs=1e-4)  # the hand numbers themselves


@pytest.mark.parametrize("smooth", [1.0, 0.5, 0.0])
@pytest.mark.parametrize("dice_weight, iou_weight", [(0.3, 0.7), (1.0, 0.0), (0.0, 2.0)])
@pytest.mark.parametrize("background_class", [0, None, 2])
def test_hand_computed_example_weights_smooth_background(
    smooth, dice_weight, iou_weight, background_class
):
    terms = expected_terms(smooth)
    kept = [c for c in range(3) if c != background_class]
    expected = sum(
        dice_weight * (1 - terms[c][0]) + iou_weight * (1 - terms[c][1]) for c in kept
    ) / len(kept)
    loss = dice_iou_loss(
        LABELS,
        PROBS,
        smooth=smooth,
        dice_weight=dice_weight,
        iou_weight=iou_weight,
        background_class=background_class,
    )
    assert numpy_of(loss)[0] == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("reduction_mode", ["per_image", "per_batch"])
def test_perfect_prediction_is_exactly_zero(reduction_mode):
    labels = np.array([[[0, 1, 1], [2, 0, 6]], [[3, 3, 0], [0, 4, 5]]])
    loss = numpy_of(dice_iou_loss(labels, one_hot(labels, 7), reduction_mode=reduction_mode))
    assert loss.shape == (2,)
    assert np.all(loss == 0.0)


@pytest.mark.parametrize("reduction_mode", ["per_image", "per_batch"])
def test_empty_mask_and_empty_prediction_is_zero(reduction_mode):
    labels = np.zeros((2, 4, 4), dtype="int32")
    loss = numpy_of(dice_iou_loss(labels, one_hot(labels, 7), reduction_mode=reduction_mode))
    assert np.all(np.isfinite(loss))
    assert np.all(loss == 0.0)


def test_empty_mask_with_foreground_prediction_is_finite_and_positive():
    labels = np.zeros((1, 4, 4), dtype="int32")
    probs = np.full((1, 4, 4, 7), 0.1, dtype="float32")
    probs[..., 0] = 0.4  # 0.4 + 6 * 0.1 = 1
    loss = numpy_of(dice_iou_loss(labels, probs))
    assert np.all(np.isfinite(loss))
    # Each foreground class: I = 0, T = 0, P = 16 * 0.1 = 1.6, so dice = iou = 1 / 2.6.
    assert loss[0] == pytest.approx(1 - 1 / 2.6, abs=1e-6)
    assert loss[0] > 0


def test_sparse_sparse_with_channel_and_one_hot_truth_agree():
    sparse = numpy_of(dice_iou_loss(LABELS, PROBS))
    with_channel = numpy_of(dice_iou_loss(LABELS[..., None], PROBS))
    dense = numpy_of(dice_iou_loss(one_hot(LABELS, 3), PROBS))
    np.testing.assert_allclose(with_channel, sparse, atol=1e-7)
    np.testing.assert_allclose(dense, sparse, atol=1e-7)


def test_per_image_and_per_batch_differ_and_per_batch_pools_pixels():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, size=(2, 3, 4))
    labels[1] = 0  # second image: background only
    logits = rng.normal(size=(2, 3, 4, 3))
    probs = (np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)).astype("float32")

    per_image = numpy_of(dice_iou_loss(labels, probs, reduction_mode="per_image"))
    per_batch = numpy_of(dice_iou_loss(labels, probs, reduction_mode="per_batch"))
    assert per_image.shape == per_batch.shape == (2,)
    assert per_batch[0] == per_batch[1]  # the batch value, broadcast
    assert per_image[0] != pytest.approx(per_image[1])

    # Pooling the batch equals one image holding both side by side.
    side_by_side = numpy_of(
        dice_iou_loss(np.concatenate(list(labels), axis=1)[None],
                      np.concatenate(list(probs), axis=1)[None])
    )
    assert per_batch[0] == pytest.approx(side_by_side[0], abs=1e-6)
    assert per_batch[0] != pytest.approx(per_image.mean(), abs=1e-4)


def test_cross_entropy_weight_adds_mean_pixel_cross_entropy():
    base = numpy_of(dice_iou_loss(LABELS, PROBS))[0]
    with_ce = numpy_of(dice_iou_loss(LABELS, PROBS, cross_entropy_weight=0.5))[0]
    # True-class probabilities of the four pixels: 0.8, 0.6, 0.6, 0.5.
    ce = -(math.log(0.8) + math.log(0.6) + math.log(0.6) + math.log(0.5)) / 4
    assert with_ce - base == pytest.approx(0.5 * ce, abs=1e-5)


def test_cross_entropy_only_is_plain_cross_entropy():
    loss = numpy_of(
        dice_iou_loss(LABELS, PROBS, dice_weight=0.0, iou_weight=0.0, cross_entropy_weight=1.0)
    )[0]
    ce = -(math.log(0.8) + math.log(0.6) + math.log(0.6) + math.log(0.5)) / 4
    assert loss == pytest.approx(ce, abs=1e-5)


def test_function_rejects_unknown_reduction_mode():
    with pytest.raises(ValueError, match=re.escape("Received: reduction_mode='mean'")):
        dice_iou_loss(LABELS, PROBS, reduction_mode="mean")


@pytest.mark.parametrize(
    ("kwargs", "received"),
    [
        ({"smooth": -1.0}, "smooth=-1.0"),
        ({"dice_weight": -0.5}, "dice_weight=-0.5"),
        ({"iou_weight": "high"}, "iou_weight='high'"),
        ({"cross_entropy_weight": -2}, "cross_entropy_weight=-2"),
        ({"reduction_mode": "sum"}, "reduction_mode='sum'"),
        ({"background_class": -1}, "background_class=-1"),
        ({"background_class": 1.5}, "background_class=1.5"),
        ({"dice_weight": 0, "iou_weight": 0}, "dice_weight=0, iou_weight=0"),
    ],
)
def test_class_rejects_invalid_arguments_naming_the_value(kwargs, received):
    with pytest.raises(ValueError, match=re.escape(f"Received: {received}")):
        DiceIoULoss(**kwargs)


def test_class_matches_function_and_reduces_to_mean():
    labels = np.concatenate([LABELS, np.zeros_like(LABELS)])
    probs = np.concatenate([PROBS, PROBS])
    loss = DiceIoULoss(smooth=0.5, dice_weight=0.2, iou_weight=0.8, background_class=None)
    per_image = numpy_of(
        dice_iou_loss(labels, probs, smooth=0.5, dice_weight=0.2, iou_weight=0.8,
                      background_class=None)
    )
    assert float(numpy_of(loss(labels, probs))) == pytest.approx(per_image.mean(), abs=1e-6)


def test_get_config_lists_every_argument_and_round_trips():
    loss = DiceIoULoss(
        smooth=0.25,
        dice_weight=0.1,
        iou_weight=0.9,
        cross_entropy_weight=2.0,
        reduction_mode="per_batch",
        background_class=None,
        reduction="sum",
        name="my_loss",
    )
    config = loss.get_config()
    assert config == {
        "name": "my_loss",
        "reduction": "sum",
        "dtype": "float32",
        "smooth": 0.25,
        "dice_weight": 0.1,
        "iou_weight": 0.9,
        "cross_entropy_weight": 2.0,
        "reduction_mode": "per_batch",
        "background_class": None,
    }
    clone = DiceIoULoss.from_config(config)
    assert clone.get_config() == config

    serialized = keras.losses.serialize(loss)
    assert serialized["registered_name"] == "pcb_inspect>DiceIoULoss"
    restored = keras.losses.deserialize(serialized)
    assert isinstance(restored, DiceIoULoss)
    assert restored.get_config() == config
    assert float(numpy_of(restored(LABELS, PROBS))) == pytest.approx(
        float(numpy_of(loss(LABELS, PROBS))), abs=1e-7
    )


def test_dtype_round_trips():
    loss = DiceIoULoss(dtype="bfloat16")
    assert DiceIoULoss.from_config(loss.get_config()).dtype == "bfloat16"


@pytest.mark.slow  # trains: 8 s here
def test_trains_a_tiny_model_as_its_loss():
    keras.utils.set_random_seed(0)
    model = build_model(encoder_depth=2, decoder_filters=(8, 4))
    model.compile(optimizer=keras.optimizers.Adam(1e-2),
                  loss=DiceIoULoss(cross_entropy_weight=1.0))
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(2, 16, 16, 1)).astype("float32")
    masks = rng.integers(0, 7, size=(2, 16, 16)).astype("int32")
    before = [w.copy() for w in model.get_weights()]
    first = float(model.train_on_batch(images, masks))
    second = float(model.train_on_batch(images, masks))
    assert math.isfinite(first) and math.isfinite(second)
    assert first > 0
    changed = [not np.array_equal(a, b) for a, b in zip(before, model.get_weights(), strict=True)]
    assert any(changed)
