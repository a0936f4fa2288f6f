"""Tests for model_defs.model.build_model and model_defs.get_custom_objects."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

import pcb_inspect.classes
from model_defs import (
    CLASS_NAMES,
    NUM_OUTPUTS,
    DiceIoULoss,
    EdgeEnhancementLayer,
    build_model,
    get_custom_objects,
)

ROOT = Path(__file__).resolve().parents[2]
TINY = {"encoder_depth": 2, "decoder_filters": (16, 8)}


def tiny_model(**overrides) -> keras.Model:
    keras.utils.set_random_seed(0)
    return build_model(**{**TINY, **overrides})


def edge_layers(model: keras.Model) -> list[EdgeEnhancementLayer]:
    return [layer for layer in model.layers if isinstance(layer, EdgeEnhancementLayer)]


def board(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=shape).astype("float32")


@pytest.fixture(scope="module")
def tiny() -> keras.Model:
    return tiny_model()


@pytest.fixture(scope="module")
def saved_tiny(tmp_path_factory) -> tuple[Path, np.ndarray, np.ndarray]:
    """A tiny model saved to .keras, an input and the model's prediction on it."""
    folder = tmp_path_factory.mktemp("saved_tiny")
    model = tiny_model()
    path = folder / "tiny.keras"
    model.save(path)
    x = board((2, 32, 32, 1), seed=1)
    np.save(folder / "input.npy", x)
    return path, x, keras.ops.convert_to_numpy(model(x, training=False))


def test_class_constants():
    assert len(CLASS_NAMES) == 6
    assert NUM_OUTPUTS == 7
    # The model's list is the shared TensorFlow-free one, not a copy that could drift.
    assert CLASS_NAMES is pcb_inspect.classes.CLASS_NAMES


@pytest.mark.parametrize("shape", [(1, 32, 32, 1), (2, 16, 48, 1), (3, 4, 8, 1)])
def test_tiny_output_shape_and_softmax(tiny, shape):
    probs = keras.ops.convert_to_numpy(tiny(board(shape), training=False))
    assert probs.shape == (*shape[:3], NUM_OUTPUTS)
    assert probs.dtype == np.float32
    assert np.all(probs >= 0)
    np.testing.assert_allclose(probs.sum(axis=-1), 1.0, atol=1e-5)


def test_symbolic_shapes(tiny):
    assert tuple(tiny.input_shape) == (None, None, None, 1)
    assert tuple(tiny.output_shape) == (None, None, None, NUM_OUTPUTS)
    fixed = tiny_model(input_shape=(32, 64, 1))
    assert tuple(fixed.output_shape) == (None, 32, 64, NUM_OUTPUTS)


@pytest.mark.parametrize(
    ("kwargs", "received"),
    [
        ({"encoder_weights": "foo"}, "encoder_weights='foo'"),
        ({"encoder_depth": 6}, "encoder_depth=6"),
        ({"encoder_depth": 1}, "encoder_depth=1"),
        ({"encoder_depth": 2, "decoder_filters": (16, 8, 4)}, "decoder_filters=(16, 8, 4)"),
        ({"encoder_depth": 3, "decoder_filters": (16, 8)}, "decoder_filters=(16, 8)"),
        ({"encoder_depth": 2, "decoder_filters": (16, 0)}, "decoder_filters=(16, 0)"),
        ({"input_shape": (None, None, 3)}, "input_shape=(None, None, 3)"),
    ],
)
def test_invalid_arguments_raise(kwargs, received):
    with pytest.raises(ValueError, match=re.escape(f"Received: {received}")):
        build_model(**kwargs)


def test_edge_enhancement_switch():
    with_edges = edge_layers(tiny_model(edge_enhancement=True))
    assert [layer.name for layer in with_edges] == ["edge_enhancement_s2", "edge_enhancement_s1"]
    without = tiny_model(edge_enhancement=False)
    assert edge_layers(without) == []
    assert not any("edge" in layer.name for layer in without.layers)


def test_default_decoder_filters_for_small_depths():
    model = build_model(encoder_depth=2)  # (32, 16), the last two of the default ladder
    assert model.get_layer("decoder_s2_a_conv").filters == 32
    assert model.get_layer("decoder_s1_a_conv").filters == 16


def test_production_config_layers_and_parameters():
    model = build_model()  # encoder_depth=4: stride 16, no conv5
    names = {layer.name for layer in model.layers}
    for stride in (8, 4, 2, 1):
        for part in ("up", "concat", "a_conv", "a_bn", "a_relu", "b_conv", "b_bn", "b_relu"):
            assert f"decoder_s{stride}_{part}" in names
    assert "decoder_s16_up" not in names
    assert {"image", "gray_to_rgb", "preprocess", "full_res_skip", "classifier",
            "probabilities", "conv4_block6_out", "edge_enhancement_s2",
            "edge_enhancement_s1"} <= names
    assert not any(name.startswith("conv5") for name in names)
    assert [layer.name for layer in edge_layers(model)] == [
        "edge_enhancement_s2",
        "edge_enhancement_s1",
    ]
    assert model.get_layer("classifier").filters == NUM_OUTPUTS
    assert model.get_layer("probabilities").dtype_policy.name == "float32"
    assert [model.get_layer(f"decoder_s{s}_a_conv").filters for s in (8, 4, 2, 1)] == [
        128, 64, 32, 16,
    ]
    assert model.count_params() == pytest.approx(10.8e6, rel=0.01)

    probs = keras.ops.convert_to_numpy(model(board((1, 64, 64, 1)), training=False))
    assert probs.shape == (1, 64, 64, NUM_OUTPUTS)
    np.testing.assert_allclose(probs.sum(axis=-1), 1.0, atol=1e-5)


def test_deeper_encoder_has_more_decoder_blocks():
    model = build_model(encoder_depth=3, decoder_filters=(8, 8, 8))
    names = {layer.name for layer in model.layers}
    assert "decoder_s4_up" in names and "decoder_s8_up" not in names
    assert not any(name.startswith("conv4") for name in names)
    assert tuple(model(board((1, 16, 16, 1))).shape) == (1, 16, 16, NUM_OUTPUTS)


def test_save_and_load_give_identical_predictions(saved_tiny):
    path, x, expected = saved_tiny
    loaded = keras.models.load_model(path, custom_objects=get_custom_objects(), compile=False)
    assert len(edge_layers(loaded)) == 2
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(loaded(x, training=False)), expected)


def _run_fresh(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(ROOT),
           "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run(
        [sys.executable, "-c", script, *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=240, check=False,
    )


_LOAD_WITHOUT_MAPPING = """
import sys
import keras
try:
    keras.models.load_model(sys.argv[1], compile=False)
except Exception as exc:
    assert "model_defs" not in sys.modules, "model_defs was imported by the load"
    print("LOAD_FAILED", " ".join(str(exc).split()))
else:
    print("LOADED")
"""

_LOAD_WITH_MAPPING = """
import sys
import keras
import numpy as np
assert "model_defs" not in sys.modules, "model_defs imported before the test wanted it"
from model_defs import get_custom_objects
mapping = get_custom_objects()
model = keras.models.load_model(sys.argv[1], custom_objects=mapping, compile=False)
np.save(sys.argv[3], keras.ops.convert_to_numpy(model(np.load(sys.argv[2]), training=False)))
print("KEYS", sorted(mapping))
"""


@pytest.mark.slow  # a second interpreter importing TensorFlow: 8 s here
def test_fresh_interpreter_needs_and_accepts_exactly_the_mapping(saved_tiny, tmp_path):
    path, _, expected = saved_tiny
    without = _run_fresh(_LOAD_WITHOUT_MAPPING, str(path))
    assert without.returncode == 0, without.stderr[-2000:]
    # Nothing registered the custom classes behind our back: the bare load fails on them.
    assert "LOAD_FAILED" in without.stdout, without.stdout
    assert "EdgeEnhancementLayer" in without.stdout

    out = tmp_path / "pred.npy"
    with_mapping = _run_fresh(
        _LOAD_WITH_MAPPING, str(path), str(path.parent / "input.npy"), str(out)
    )
    assert with_mapping.returncode == 0, with_mapping.stderr[-2000:]
    assert "KEYS ['pcb_inspect>DiceIoULoss', 'pcb_inspect>EdgeEnhancementLayer']" in (
        with_mapping.stdout
    )
    np.testing.assert_allclose(np.load(out), expected, rtol=0, atol=1e-6)


def test_custom_objects_keys_are_the_registered_names():
    mapping = get_custom_objects()
    assert set(mapping) == {"pcb_inspect>EdgeEnhancementLayer", "pcb_inspect>DiceIoULoss"}
    for key, cls in mapping.items():
        assert keras.saving.get_registered_name(cls) == key
        assert keras.saving.get_registered_object(key) is cls
    assert mapping["pcb_inspect>EdgeEnhancementLayer"] is EdgeEnhancementLayer
    assert mapping["pcb_inspect>DiceIoULoss"] is DiceIoULoss
    assert get_custom_objects() is not get_custom_objects()  # a new dict each time


def test_tiny_model_under_mixed_bfloat16(bfloat16_policy):
    model = tiny_model()
    assert all(layer.compute_dtype == "bfloat16" for layer in edge_layers(model))
    assert model.get_layer("classifier").compute_dtype == "bfloat16"
    probs = model(board((1, 32, 32, 1)), training=False)
    assert probs.dtype == "float32"  # the softmax runs in float32 under the mixed policy
    probs = keras.ops.convert_to_numpy(probs)
    assert probs.shape == (1, 32, 32, NUM_OUTPUTS)
    assert np.all(np.isfinite(probs))
    np.testing.assert_allclose(probs.sum(axis=-1), 1.0, atol=1e-5)


def test_policy_restored_after_mixed_test():
    assert keras.mixed_precision.global_policy().name == "float32"


# --------------------------------------------------------------------------- the pair model
def test_pair_model_inputs_and_output():
    model = build_model(reference=True, encoder_depth=2, decoder_filters=(8, 4))
    assert [t.name for t in model.inputs] == ["image", "reference"]
    x = np.random.default_rng(0).integers(0, 256, (2, 32, 48, 1)).astype("float32")
    probs = np.asarray(model([x, x[::-1]]))
    assert probs.shape == (2, 32, 48, NUM_OUTPUTS)
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)


def test_pair_difference_channel_hand_values():
    # The encoder's third channel is (board - reference) / 2 + 127.5: 127.5 means "no change",
    # copper added (dark on light) goes below, copper lost goes above.
    model = build_model(reference=True, encoder_depth=2, decoder_filters=(8, 4))
    probe = keras.Model(model.inputs, model.get_layer("pair_to_rgb").output)
    board = np.array([0.0, 255.0, 100.0, 30.0]).reshape(1, 2, 2, 1)
    ref = np.array([255.0, 0.0, 100.0, 50.0]).reshape(1, 2, 2, 1)
    rgb = np.asarray(probe([board, ref]))
    np.testing.assert_allclose(rgb[..., 0], board[..., 0])
    np.testing.assert_allclose(rgb[..., 1], ref[..., 0])
    np.testing.assert_allclose(rgb[0, ..., 2], [[0.0, 255.0], [127.5, 117.5]])


def test_decoder_reduction_is_lighter_and_saves_its_config(tmp_path):
    wide = build_model(encoder_depth=3, decoder_filters=(32, 16, 8))
    light = build_model(encoder_depth=3, decoder_filters=(32, 16, 8), decoder_reduction=True)
    assert light.count_params() < wide.count_params()
    assert any(layer.name.endswith("_reduce_skip_conv") for layer in light.layers)
    path = tmp_path / "light.keras"
    light.save(path)
    loaded = keras.models.load_model(path, custom_objects=get_custom_objects(), compile=False)
    x = np.random.default_rng(1).integers(0, 256, (1, 32, 32, 1)).astype("float32")
    np.testing.assert_allclose(np.asarray(loaded(x)), np.asarray(light(x)), atol=1e-6)


@pytest.mark.parametrize("mode", ["pair", "single"])
def test_lighter_encoder_variant_round_trips_as_the_burst_configures_it(mode, tmp_path):
    from app.inference.loading import load_keras_model
    from model_defs.model import LIGHT_ENCODER_DEPTH
    from training.jax_train import model_kwargs

    # What training.jax_train writes into state.json, and what convert and the card read.
    config = {"mode": mode, "encoder_depth": LIGHT_ENCODER_DEPTH, "decoder_filters": [],
              "decoder_reduction": True}
    keras.utils.set_random_seed(0)
    light = build_model(**model_kwargs(config))
    shipped = build_model(**model_kwargs({**config, "encoder_depth": 4}))
    names = {layer.name for layer in light.layers}
    assert not any(n.startswith("conv4_") for n in names)  # cut after stage 3
    assert "conv3_block4_out" in names
    assert light.count_params() < shipped.count_params() / 3
    # Any side that is a multiple of 8 (its stride), not only of 16.
    shape = (1, 40, 56, 1)
    x = board(shape, seed=2)
    inputs = [x, board(shape, seed=3)] if mode == "pair" else x
    y = np.asarray(light(inputs, training=False))
    assert y.shape == (1, 40, 56, NUM_OUTPUTS)
    path = tmp_path / f"{light.name}.keras"
    light.save(path)
    loaded = load_keras_model(path)  # the service's loader
    np.testing.assert_allclose(np.asarray(loaded(inputs, training=False)), y, atol=1e-5)
