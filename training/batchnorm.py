"""BatchNorm statistics re-estimated for the weights that are exported.

Training checkpoints the EMA of the weights, but the BatchNorm moving statistics beside them
were accumulated by the *live* weights, which the EMA lags: each layer's inputs under the
EMA weights have another mean and variance than the ones stored. Running the EMA model in
training mode (no gradient step) over a few batches, with a momentum that makes each moving
statistic the plain mean over those batches, stores the statistics of the weights that are
actually exported ("precise BN").
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def batchnorm_layers(model: Any) -> list[Any]:
    """Every ``BatchNormalization`` layer of ``model``, nested models included."""
    import keras

    return [layer for layer in model._flatten_layers(include_self=False)
            if isinstance(layer, keras.layers.BatchNormalization)]


def recalibrate(model: Any, batches: Iterable[Any]) -> int:
    """Re-estimates every BatchNorm layer's moving mean and variance on ``batches``.

    Args:
        model: The model; its BatchNorm statistics are replaced in place, nothing else moves.
        batches: Model inputs (an array, or a list of arrays for the pair model), one forward
            pass each.

    Returns:
        The number of batches used (0 leaves the statistics as they were).
    """
    norms = batchnorm_layers(model)
    momenta = [layer.momentum for layer in norms]
    used = 0
    try:
        for x in batches:
            for layer in norms:
                # Cumulative mean: the i-th batch (0-based) gets weight 1 / (i + 1).
                layer.momentum = used / (used + 1)
            model(x, training=True)
            used += 1
    finally:
        for layer, momentum in zip(norms, momenta, strict=True):
            layer.momentum = momentum
    return used
