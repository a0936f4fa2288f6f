"""training.batchnorm.recalibrate: each BatchNorm layer's statistics become the mean of the
batches' statistics, for the weights as they are; nothing else moves."""

from __future__ import annotations

import keras
import numpy as np

from model_defs import build_model
from training.batchnorm import batchnorm_layers, recalibrate


def test_statistics_are_the_mean_over_the_batches():
    keras.utils.set_random_seed(0)
    model = build_model(encoder_depth=2, decoder_filters=(8, 4))
    rng = np.random.default_rng(0)
    batches = [rng.integers(0, 256, (2, 32, 32, 1)).astype("float32") for _ in range(2)]
    norms = batchnorm_layers(model)
    assert norms and all(layer.momentum == 0.99 for layer in norms)
    weights = [np.array(w.numpy()) for w in model.trainable_weights]
    first = norms[0]  # conv1_bn: its input is the first convolution's output
    conv = keras.Model(model.input, model.get_layer("conv1_conv").output)
    stats = [np.asarray(conv(x)) for x in batches]
    means = [s.mean(axis=(0, 1, 2)) for s in stats]
    variances = [s.var(axis=(0, 1, 2)) for s in stats]

    assert recalibrate(model, iter(batches)) == 2
    np.testing.assert_allclose(first.moving_mean.numpy(), np.mean(means, axis=0),
                               rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(first.moving_variance.numpy(),
                               np.mean(variances, axis=0), rtol=1e-3, atol=1e-5)
    assert all(layer.momentum == 0.99 for layer in norms)  # restored
    for before, after in zip(weights, model.trainable_weights, strict=True):
        np.testing.assert_array_equal(before, after.numpy())


def test_no_batches_change_nothing():
    model = build_model(encoder_depth=2, decoder_filters=(8, 4))
    before = [np.array(w.numpy()) for w in model.weights]
    assert recalibrate(model, iter([])) == 0
    for b, a in zip(before, model.weights, strict=True):
        np.testing.assert_array_equal(b, a.numpy())
