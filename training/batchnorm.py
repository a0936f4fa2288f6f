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


def main(argv: list[str] | None = None) -> int:
    """``python -m training.batchnorm --weights W.keras --pack P.npz --out OUT.keras``:
    re-estimates a saved model's BatchNorm statistics on training crops of ``P`` (drawn as
    ``training.jax_train`` draws them) and saves it to ``OUT`` with its card beside it."""
    import argparse
    import json
    import shutil
    from pathlib import Path

    import keras

    from model_defs import get_custom_objects
    from training.pack import load_pack
    from training.sampler import CropSampler

    p = argparse.ArgumentParser(prog="python -m training.batchnorm", description=main.__doc__)
    p.add_argument("--weights", required=True, type=Path)
    p.add_argument("--pack", required=True, type=Path, help="training pack (training.pack)")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--batches", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=24)
    p.add_argument("--crop", type=int, default=384)
    p.add_argument("--seed", type=int, default=42)
    args = p.parse_args(argv)
    model = keras.models.load_model(args.weights, custom_objects=get_custom_objects(),
                                    compile=False)
    pair = len(model.inputs) == 2
    sampler = CropSampler(load_pack(args.pack), args.crop, args.batch_size, pair=pair,
                          seed=args.seed)
    used = recalibrate(model, (sampler.batch(10**9 + k)[0] for k in range(args.batches)))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    model.save(args.out)
    # The service's card names: <stem>.card.json for the pair model, model_card.json else.
    if pair:
        card = args.weights.with_name(args.weights.name.removesuffix(".keras") + ".card.json")
        target = args.out.with_name(args.out.name.removesuffix(".keras") + ".card.json")
    else:
        card, target = (args.weights.with_name("model_card.json"),
                        args.out.with_name("model_card.json"))
    if card.is_file():
        shutil.copyfile(card, target)
    print(json.dumps({"out": str(args.out), "batches": used, "pair": pair}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
