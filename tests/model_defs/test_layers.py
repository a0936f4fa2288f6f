"""Tests for model_defs.layers.EdgeEnhancementLayer: shapes, config, Sobel values, gradients."""

from __future__ import annotations

import re

import keras
import numpy as np
import pytest
import tensorflow as tf

from model_defs import EdgeEnhancementLayer

SOBEL_X = np.array([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]) / 8.0
SOBEL_Y = SOBEL_X.T


def correlate_same(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """3x3 cross-correlation of a 2D image with zero 'same' padding, written out in numpy."""
    padded = np.pad(image.astype(np.float64), 1)
    h, w = image.shape
    out = np.zeros((h, w))
    for dy in range(3):
        for dx in range(3):
            out += kernel[dy, dx] * padded[dy : dy + h, dx : dx + w]
    return out


def step_edge() -> np.ndarray:
    """5x5 image: 0 in columns 0-1, 1 in columns 2-4 (a vertical step edge)."""
    image = np.zeros((5, 5), dtype=np.float32)
    image[:, 2:] = 1.0
    return image


def fused_output(image: np.ndarray, kernel: np.ndarray, bias: np.ndarray, epsilon: float):
    """Runs a fresh layer on ``(1, H, W, C)`` ``image`` with the fusion weights set."""
    layer = EdgeEnhancementLayer(epsilon=epsilon)
    layer.build(image.shape)
    layer.fusion_kernel.assign(kernel.astype("float32"))
    layer.fusion_bias.assign(bias.astype("float32"))
    return keras.ops.convert_to_numpy(layer(image))


@pytest.mark.parametrize("shape", [(1, 5, 5, 1), (2, 8, 12, 3), (3, 16, 4, 8)])
def test_output_shape_equals_input_shape(shape):
    x = np.random.default_rng(0).normal(size=shape).astype("float32")
    layer = EdgeEnhancementLayer()
    y = layer(x)
    assert tuple(y.shape) == shape
    assert layer.compute_output_shape(shape) == shape


def test_symbolic_output_shape_keeps_unknown_spatial_dims():
    inputs = keras.Input(shape=(None, None, 4))
    outputs = EdgeEnhancementLayer()(inputs)
    assert tuple(outputs.shape) == (None, None, None, 4)


@pytest.mark.parametrize(
    ("epsilon", "received"),
    [
        (0, "epsilon=0"),
        (-1e-3, "epsilon=-0.001"),
        ("small", "epsilon='small'"),
        (None, "epsilon=None"),
    ],
)
def test_invalid_epsilon_raises_naming_the_value(epsilon, received):
    with pytest.raises(ValueError, match=re.escape(f"Received: {received}")):
        EdgeEnhancementLayer(epsilon=epsilon)


@pytest.mark.parametrize("shape", [(2, 5, 5), (5, 5), (1, 2, 5, 5, 1)])
def test_non_4d_input_raises(shape):
    with pytest.raises(ValueError, match=re.escape(f"Received: input_shape={shape}")):
        EdgeEnhancementLayer().build(shape)


def test_undefined_channels_raise():
    with pytest.raises(ValueError, match="channel dimension"):
        EdgeEnhancementLayer().build((None, 8, 8, None))


def test_config_round_trip():
    layer = EdgeEnhancementLayer(
        epsilon=1e-3, use_bias=False, fusion_initializer="zeros", name="edges"
    )
    config = layer.get_config()
    assert {"epsilon", "use_bias", "fusion_initializer"} <= set(config)
    assert config["epsilon"] == 1e-3
    assert config["use_bias"] is False
    assert config["name"] == "edges"
    clone = EdgeEnhancementLayer.from_config(config)
    assert clone.get_config() == config
    assert isinstance(clone.fusion_initializer, keras.initializers.Zeros)


def test_serialization_by_registered_name():
    layer = EdgeEnhancementLayer(epsilon=2e-4, fusion_initializer="ones")
    serialized = keras.layers.serialize(layer)
    assert serialized["registered_name"] == "pcb_inspect>EdgeEnhancementLayer"
    clone = keras.layers.deserialize(serialized)
    assert isinstance(clone, EdgeEnhancementLayer)
    assert clone.get_config() == layer.get_config()


def test_weights_sobel_fixed_fusion_trainable():
    layer = EdgeEnhancementLayer()
    layer.build((None, 6, 6, 3))
    assert [w.path.split("/")[-1] for w in layer.non_trainable_weights] == ["sobel_kernel"]
    assert sorted(w.path.split("/")[-1] for w in layer.trainable_weights) == [
        "fusion_bias",
        "fusion_kernel",
    ]
    sobel = keras.ops.convert_to_numpy(layer.sobel_kernel)
    assert sobel.shape == (3, 3, 3, 2)
    for c in range(3):
        np.testing.assert_array_equal(sobel[:, :, c, 0], SOBEL_X.astype("float32"))
        np.testing.assert_array_equal(sobel[:, :, c, 1], SOBEL_Y.astype("float32"))
    assert tuple(layer.fusion_kernel.shape) == (9, 3)
    assert tuple(layer.fusion_bias.shape) == (3,)


def test_without_bias_has_no_bias_weight():
    layer = EdgeEnhancementLayer(use_bias=False)
    layer.build((None, 6, 6, 2))
    assert layer.fusion_bias is None
    assert len(layer.trainable_weights) == 1


def test_sobel_responses_on_a_step_edge_by_hand():
    image = step_edge()
    x = image[None, :, :, None]
    eps = 1e-6
    gx = fused_output(x, np.array([[1.0], [0.0], [0.0]]), np.zeros(1), eps)[0, :, :, 0] - image
    gy = fused_output(x, np.array([[0.0], [1.0], [0.0]]), np.zeros(1), eps)[0, :, :, 0] - image
    mag = fused_output(x, np.array([[0.0], [0.0], [1.0]]), np.zeros(1), eps)[0, :, :, 0] - image

    # Row 2 (interior): the kernel spans columns c-1..c+1, weight (1 + 2 + 1) / 8 = 0.5 on the
    # right-minus-left difference; column 4's right neighbour is zero padding.
    np.testing.assert_allclose(gx[2], [0.0, 0.5, 0.5, 0.0, -0.5], atol=1e-6)
    # Row 0: the top kernel row sees padding, weight (2 + 1) / 8.
    np.testing.assert_allclose(gx[0], [0.0, 3 / 8, 3 / 8, 0.0, -3 / 8], atol=1e-6)
    # gy only sees the top and bottom borders (padding above row 0 and below row 4).
    np.testing.assert_allclose(gy[2], [0.0, 0.0, 0.0, 0.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(gy[0], [0.0, 1 / 8, 3 / 8, 4 / 8, 3 / 8], atol=1e-6)
    np.testing.assert_allclose(gy[4], [0.0, -1 / 8, -3 / 8, -4 / 8, -3 / 8], atol=1e-6)

    expected_gx = correlate_same(image, SOBEL_X)
    expected_gy = correlate_same(image, SOBEL_Y)
    np.testing.assert_allclose(gx, expected_gx, atol=1e-6)
    np.testing.assert_allclose(gy, expected_gy, atol=1e-6)
    np.testing.assert_allclose(mag, np.sqrt(expected_gx**2 + expected_gy**2 + eps), atol=1e-6)
    # On the flat interior the magnitude is sqrt(epsilon), not 0.
    assert mag[2, 0] == pytest.approx(np.sqrt(eps), rel=1e-3)


def test_fusion_matrix_mixes_channels_as_documented():
    rng = np.random.default_rng(1)
    image = np.zeros((6, 7, 2), dtype=np.float32)
    image[:, 3:, 0] = 1.0  # vertical edge in channel 0
    image[2:, :, 1] = 2.0  # horizontal edge in channel 1
    kernel = rng.normal(size=(6, 2))
    bias = np.array([0.25, -0.5])
    eps = 1e-2
    out = fused_output(image[None], kernel, bias, eps)[0]

    gx = np.stack([correlate_same(image[..., c], SOBEL_X) for c in range(2)], axis=-1)
    gy = np.stack([correlate_same(image[..., c], SOBEL_Y) for c in range(2)], axis=-1)
    edges = np.concatenate([gx, gy, np.sqrt(gx**2 + gy**2 + eps)], axis=-1)  # (H, W, 6)
    expected = image + edges @ kernel + bias
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def test_zero_fusion_is_identity():
    x = np.random.default_rng(2).normal(size=(2, 5, 6, 3)).astype("float32")
    layer = EdgeEnhancementLayer(fusion_initializer="zeros")
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer(x)), x)


@pytest.mark.parametrize("flat", [False, True], ids=["textured", "flat"])
def test_gradients_reach_input_and_fusion_kernel(flat):
    rng = np.random.default_rng(3)
    data = np.full((1, 6, 6, 2), 0.5) if flat else rng.normal(size=(1, 6, 6, 2))
    x = tf.Variable(data.astype("float32"))
    layer = EdgeEnhancementLayer()
    weights = tf.constant(rng.normal(size=(1, 6, 6, 2)).astype("float32"))
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(layer(x) * weights)
    grad_x, grad_kernel, grad_bias = tape.gradient(
        loss, [x, layer.fusion_kernel.value, layer.fusion_bias.value]
    )
    for grad in (grad_x, grad_kernel, grad_bias):
        assert grad is not None
        grad = grad.numpy()
        assert np.all(np.isfinite(grad))
        assert np.any(grad != 0)
    # The fixed Sobel kernel is not among what an optimizer updates.
    assert all(w is not layer.sobel_kernel for w in layer.trainable_weights)


def test_runs_under_mixed_bfloat16(bfloat16_policy):
    layer = EdgeEnhancementLayer()
    x = np.random.default_rng(4).normal(size=(2, 8, 8, 3)).astype("float32")
    y = layer(x)
    assert layer.compute_dtype == "bfloat16"
    assert y.dtype == tf.bfloat16
    assert layer.fusion_kernel.dtype == "float32"  # variables stay float32
    assert tuple(y.shape) == x.shape
    assert np.all(np.isfinite(keras.ops.convert_to_numpy(keras.ops.cast(y, "float32"))))


def test_policy_restored_after_mixed_test():
    # Runs after the mixed test in file order: the fixture must have restored float32.
    assert keras.mixed_precision.global_policy().name == "float32"
