"""Loading a model: TensorFlow's device and thread settings, the ``.keras`` file, precision.

Everything here fails with a one-line :class:`ModelLoadError` naming the file and what is
wrong, so a bad weights file stops startup with one line, not a traceback.
"""

from __future__ import annotations

import hashlib
import logging
import zipfile
from pathlib import Path
from typing import Any

from app.inference.card import ModelCard, ModelCardError, default_card_path, load_card

logger = logging.getLogger("pcb_inspect.inferencer")

#: Keras dtype policy of each precision (``None``: the model as saved, float32).
POLICIES = {"float32": None, "bfloat16": "bfloat16", "float16": "mixed_float16"}


class ModelLoadError(RuntimeError):
    """The weights or the model card cannot be used. The message is one line."""


def sha256_of(path: Path) -> str:
    """Returns the hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def configure_tensorflow(device: str, intra_op: int, inter_op: int) -> str:
    """Applies device, memory-growth and thread settings; returns the device in use.

    Must run before TensorFlow executes its first op; later calls keep the settings that
    are already in force (TensorFlow cannot change them at run time) and say so in the log.

    Args:
        device: ``"auto"``, ``"cpu"`` or ``"gpu"``.
        intra_op: Intra-op threads (0: TF's default).
        inter_op: Inter-op threads (0: TF's default).

    Returns:
        ``"gpu"`` or ``"cpu"``.

    Raises:
        ModelLoadError: ``device="gpu"`` but TensorFlow sees no GPU.
    """
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    try:
        if device == "cpu":
            tf.config.set_visible_devices([], "GPU")
        for gpu in gpus if device != "cpu" else []:
            tf.config.experimental.set_memory_growth(gpu, True)
        if intra_op:
            tf.config.threading.set_intra_op_parallelism_threads(intra_op)
        if inter_op:
            tf.config.threading.set_inter_op_parallelism_threads(inter_op)
    except RuntimeError as exc:  # TF already initialised in this process (tests, reloads)
        logger.warning("TensorFlow runtime already initialised; keeping its settings: %s", exc)
    if device == "gpu" and not gpus:
        raise ModelLoadError("PCB_DEVICE=gpu, but TensorFlow sees no GPU")
    return "gpu" if gpus and device != "cpu" else "cpu"


def with_policy(model: Any, policy: str) -> Any:
    """Clones ``model`` under a dtype policy, keeping its weights and a float32 softmax."""
    import keras

    def clone_layer(layer: Any) -> Any:
        config = layer.get_config()
        if layer.name != "probabilities":
            config["dtype"] = policy
        return layer.__class__.from_config(config)

    clone = keras.models.clone_model(model, clone_function=clone_layer)
    clone.set_weights(model.get_weights())
    return clone


def check_weights_file(weights_path: Path) -> None:
    """Cheap check that the weights file exists and is a ``.keras`` archive.

    Raises:
        ModelLoadError: One line naming the file and what is wrong.
    """
    path = Path(weights_path)
    if not path.is_file():
        raise ModelLoadError(f"weights file {path} does not exist")
    if not zipfile.is_zipfile(path):
        raise ModelLoadError(
            f"weights file {path} is not a Keras .keras archive (truncated or wrong format)"
        )
    with zipfile.ZipFile(path) as archive:
        names = set(archive.namelist())
    if "config.json" not in names:
        raise ModelLoadError(f"weights file {path} is a zip archive but not a Keras model")


def load_keras_model(weights_path: Path) -> Any:
    """Loads the ``.keras`` file exactly as the service does.

    Uses ``keras.models.load_model(path, custom_objects=model_defs.get_custom_objects(),
    compile=False)``; every failure becomes a one-line ``ModelLoadError`` naming the file.
    """
    import keras

    from model_defs import get_custom_objects

    path = Path(weights_path)
    check_weights_file(path)
    try:
        return keras.models.load_model(path, custom_objects=get_custom_objects(), compile=False)
    except Exception as exc:  # Keras raises many types for a bad archive
        reason = " ".join(str(exc).split())[:300]
        raise ModelLoadError(f"weights file {path} could not be loaded: {reason}") from None


def load_model_and_card(weights_path: Path, card_path: Path | None = None) -> tuple[Any, ModelCard]:
    """Loads a model and its card and checks that they describe the same model.

    Args:
        weights_path: The ``.keras`` file.
        card_path: Its model card; ``None``: :func:`default_card_path`.

    Raises:
        ModelLoadError: One line naming the file and what is wrong: a bad card, bad weights,
            a class count or a mode (single/pair) that the card and the weights disagree on.
    """
    weights_path = Path(weights_path)
    card_path = Path(card_path) if card_path is not None else default_card_path(weights_path)
    try:
        card = load_card(card_path)
    except ModelCardError as exc:
        raise ModelLoadError(str(exc)) from None
    model = load_keras_model(weights_path)
    outputs = model.output_shape[-1]
    if outputs != len(card.classes) + 1:
        raise ModelLoadError(
            f"weights file {weights_path} outputs {outputs} channels, but its card "
            f"{card_path} lists {len(card.classes)} classes (expected classes + background)"
        )
    mode = "pair" if len(model.inputs) == 2 else "single"
    if mode != card.mode:
        raise ModelLoadError(
            f"weights file {weights_path} is a {mode} model, but its card {card_path} says "
            f"mode={card.mode!r}"
        )
    return model, card
