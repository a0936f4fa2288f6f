"""Where a model's files sit, decided from paths alone.

Kept in ``core`` (no TensorFlow, no pydantic models) so that the settings can find a pair
model's card without importing :mod:`app.inference`, which sits above ``core``.
"""

from __future__ import annotations

from pathlib import Path


def default_card_path(weights_path: Path) -> Path:
    """The card of a weights file: ``<stem>.card.json`` beside it, else ``model_card.json``.

    Two models can share a folder that way (``pcb_pair_unet.keras`` with
    ``pcb_pair_unet.card.json``), while a folder with one model keeps the plain name.
    """
    own = weights_path.with_name(weights_path.name.removesuffix(".keras") + ".card.json")
    return own if own.is_file() else weights_path.with_name("model_card.json")
