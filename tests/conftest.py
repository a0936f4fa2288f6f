"""Shared fixtures: a tiny real model built with ``model_defs``, saved as the service saves.

The tiny model is the production architecture cut after ResNet50's stage 2 (stride 4), with
narrow decoder blocks, so it builds and runs in seconds. It is saved to a ``.keras`` file with a
model card beside it and always loaded back through the service's own loading code.
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402

from pcb_inspect.classes import CLASS_NAMES  # noqa: E402

TINY_TILE = 64


def _save_tiny(model: object, weights: Path, card: Path, card_fields: dict[str, object],
               tile_size: int) -> Path:
    """Saves ``model`` as ``weights`` with its card (the tiny models' common fields)."""
    from app.inference.card import write_card

    weights.parent.mkdir(parents=True, exist_ok=True)
    model.save(weights)  # type: ignore[attr-defined]
    write_card(card, {
        "version": "0.0.1-test",
        "classes": list(CLASS_NAMES),
        "input": {"tile_size": tile_size, "multiple_of": 4, "channels": 1, "dtype": "uint8"},
        "pixels_per_mm": 48.0,
        "thresholds": {"confidence": 0.5, "min_area_px": 0},
        **card_fields,
    })
    return weights


def save_tiny_model(folder: Path, seed: int = 0, tile_size: int = TINY_TILE) -> Path:
    """Builds, saves and carded a tiny model in ``folder``; returns the weights path."""
    import keras

    from model_defs import build_model

    keras.utils.set_random_seed(seed)
    model = build_model(encoder_depth=2, decoder_filters=(16, 8), name="tiny_unet")
    return _save_tiny(model, folder / "model.keras", folder / "model_card.json",
                      {"name": "tiny-test-unet"}, tile_size)


def save_tiny_pair_model(folder: Path, seed: int = 0, tile_size: int = TINY_TILE) -> Path:
    """Builds and saves a tiny golden-board (pair) model as ``pair.keras`` in ``folder``, with
    its card as ``pair.card.json`` (the ``<stem>.card.json`` naming); returns the weights."""
    import keras

    from model_defs import build_model

    keras.utils.set_random_seed(seed)
    model = build_model(
        reference=True, encoder_depth=2, decoder_filters=(8, 4), input_shape=(None, None, 1),
        name="tiny_pair_unet",
    )
    return _save_tiny(model, folder / "pair.keras", folder / "pair.card.json",
                      {"name": "tiny-test-pair-unet", "mode": "pair"}, tile_size)


@pytest.fixture(scope="session")
def tiny_pair_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Path of a tiny pair model's ``.keras`` file, with ``pair.card.json`` beside it."""
    return save_tiny_pair_model(tmp_path_factory.mktemp("tiny_pair_model"))


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Path of a tiny model's ``.keras`` file, with ``model_card.json`` beside it."""
    return save_tiny_model(tmp_path_factory.mktemp("tiny_model"))
