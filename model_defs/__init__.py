"""Model definitions of pcb-inspect: layers, losses, the model builder and its custom objects."""

from __future__ import annotations

from typing import Any

from model_defs.layers import EdgeEnhancementLayer
from model_defs.losses import DiceIoULoss, dice_iou_loss
from model_defs.model import CLASS_NAMES, NUM_OUTPUTS, build_model

#: Package name under which every custom class is registered with Keras.
REGISTRATION_PACKAGE = "pcb_inspect"

__all__ = [
    "CLASS_NAMES",
    "NUM_OUTPUTS",
    "REGISTRATION_PACKAGE",
    "DiceIoULoss",
    "EdgeEnhancementLayer",
    "build_model",
    "dice_iou_loss",
    "get_custom_objects",
]


def get_custom_objects() -> dict[str, Any]:
    """Returns the ``custom_objects`` mapping to pass to ``keras.models.load_model``.

    The keys are the names under which the classes are registered (``"pcb_inspect>Name"``),
    which is what a saved ``.keras`` file refers to them by.

    Returns:
        A new dict from registered name to class.
    """
    return {
        f"{REGISTRATION_PACKAGE}>{cls.__name__}": cls
        for cls in (EdgeEnhancementLayer, DiceIoULoss)
    }
