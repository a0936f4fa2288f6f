"""What the lighter decoder saves: the wide decoder against 1x1 reductions before the concats.

    python -m bench.decoder

Builds the single-image model (encoder_depth=4) with ``decoder_reduction=False`` (the wide
decoder) and ``decoder_reduction=True`` (a 1x1 reduction before each wide concatenation) and
measures, in one run:

* parameters;
* forward GFLOPs per 640 x 640 image: TensorFlow's profiler on the frozen graph of a concrete
  function (``tf.function`` of the model on a ``(1, 640, 640, 1)`` float32 input); it counts a
  multiply-add as 2 FLOPs and ops without registered FLOP statistics as 0;
* forward time per 640 x 640 board, float32, TensorFlow: median of 5 after one warm-up, both
  as an eager Keras call (as ``bench.encoder_depth``) and through a ``tf.function`` (as the
  service's ``Inferencer``);
* training step time under Keras' JAX backend, in a subprocess (``KERAS_BACKEND=jax``): 256 x
  256 crops, batch 4, float32, the step of ``training.jax_train`` (jitted ``value_and_grad``
  of ``DiceIoULoss(cross_entropy_weight=1.0, reduction_mode='per_batch')`` through
  ``model.stateless_call``, ``AdamW.stateless_apply`` with clipnorm 1.0, EMA of the weights);
  median of 5 steps after 2 warm-up steps (the first compiles), hence steps per hour.

Prints a JSON line per decoder and a comparison line, and writes them to
``bench/results/decoder.jsonl``.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import time
from typing import Any

import numpy as np

from app.inference.forward import timed_calls
from bench.common import ROOT, machine, median

RESULTS = ROOT / "bench" / "results" / "decoder.jsonl"
DECODERS = {"wide": False, "reduced": True}
ENCODER_DEPTH = 4
FORWARD_SIZE = 640
FORWARD_REPEATS = 5
TRAIN_CROP = 256
TRAIN_BATCH = 4
TRAIN_WARMUP = 2
TRAIN_STEPS = 5


def _to_numpy(fn: Any, x: Any) -> Any:
    """``fn(x)`` brought to numpy, so the time includes the graph's whole run."""
    return fn(x).numpy()


def forward_gflops(model: Any, size: int) -> float:
    """Forward GFLOPs of one ``size`` x ``size`` image (TF profiler, frozen concrete graph)."""
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2,
    )

    fn = tf.function(lambda x: model(x, training=False))
    concrete = fn.get_concrete_function(tf.TensorSpec([1, size, size, 1], tf.float32))
    frozen = convert_variables_to_constants_v2(concrete)
    builder = tf.compat.v1.profiler.ProfileOptionBuilder
    options = builder(builder.float_operation()).with_empty_output().build()
    info = tf.compat.v1.profiler.profile(graph=frozen.graph,
                                         run_meta=tf.compat.v1.RunMetadata(),
                                         cmd="op", options=options)
    return float(info.total_float_ops) / 1e9


def tf_part() -> list[dict[str, Any]]:
    """Parameters, GFLOPs and forward times under TensorFlow, one row per decoder."""
    import keras
    import tensorflow as tf

    from model_defs import build_model

    keras.mixed_precision.set_global_policy("float32")
    x = np.full((1, FORWARD_SIZE, FORWARD_SIZE, 1), 255, dtype="float32")
    rows = []
    for name, reduction in DECODERS.items():
        keras.utils.set_random_seed(0)
        model = build_model(encoder_depth=ENCODER_DEPTH, decoder_reduction=reduction)
        gflops = forward_gflops(model, FORWARD_SIZE)
        eager = timed_calls(functools.partial(model, x), FORWARD_REPEATS)
        graph_fn = tf.function(lambda t, m=model: m(t, training=False))
        graph = timed_calls(functools.partial(_to_numpy, graph_fn, x), FORWARD_REPEATS)
        rows.append({
            "decoder": name, "decoder_reduction": reduction, "encoder_depth": ENCODER_DEPTH,
            "mode": "single", "parameters": int(model.count_params()),
            "forward_gflops_640": round(gflops, 2),
            "forward_640_s": round(median(eager), 3),
            "forward_640_graph_s": round(median(graph), 3),
        })
        print(json.dumps(rows[-1]), flush=True)
        del model, graph_fn
        keras.backend.clear_session()
    return rows


def jax_part() -> int:
    """Run in the subprocess: one JSON line per decoder with the training step times."""
    import jax
    import keras

    from model_defs import build_model
    from training.jax_train import make_train_step

    if keras.backend.backend() != "jax":
        raise SystemExit(f"needs KERAS_BACKEND=jax. Received: {keras.backend.backend()}")
    keras.mixed_precision.set_global_policy("float32")
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (TRAIN_BATCH, TRAIN_CROP, TRAIN_CROP, 1)).astype("float32")
    y = np.zeros((TRAIN_BATCH, TRAIN_CROP, TRAIN_CROP), dtype="int32")
    for b in range(TRAIN_BATCH):  # a few defect squares of every class
        for c in range(1, 7):
            r, q = rng.integers(0, TRAIN_CROP - 16, 2)
            y[b, r:r + 16, q:q + 16] = c
    for name, reduction in DECODERS.items():
        keras.utils.set_random_seed(0)
        model = build_model(encoder_depth=ENCODER_DEPTH, decoder_reduction=reduction)
        # The training loop's own step (AdamW, EMA), at a fixed learning rate.
        step, state = make_train_step(model, 1e-4, 1e-4)
        lr, decay = np.float32(1e-4), np.float32(0.999)
        warmup = []
        for _ in range(TRAIN_WARMUP):
            started = time.perf_counter()
            loss, state = step(state, lr, decay, x, y)
            loss.block_until_ready()
            warmup.append(time.perf_counter() - started)
        times = []
        for _ in range(TRAIN_STEPS):
            started = time.perf_counter()
            loss, state = step(state, lr, decay, x, y)
            loss.block_until_ready()
            times.append(time.perf_counter() - started)
        step_s = median(times)
        print(json.dumps({
            "decoder": name, "train_crop": TRAIN_CROP, "train_batch": TRAIN_BATCH,
            "train_backend": f"jax {jax.__version__} ({jax.devices()[0].platform})",
            "train_first_step_s": round(warmup[0], 1),
            "train_step_s": round(step_s, 3),
            "train_step_s_all": [round(t, 3) for t in times],
            "train_steps_per_hour": round(3600 / step_s),
            "final_loss": round(float(loss), 4),
        }), flush=True)
        del model, state, step
        keras.backend.clear_session()
    return 0


def main() -> int:
    """Runs the TensorFlow part here and the JAX part in a subprocess; writes the results."""
    if "--jax-part" in sys.argv:
        return jax_part()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    started = time.time()
    host = machine()
    rows = {r["decoder"]: r for r in tf_part()}
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu",
           "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run([sys.executable, "-m", "bench.decoder", "--jax-part"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=1800, check=False)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"the JAX part failed with {proc.returncode}")
    for line in proc.stdout.splitlines():
        if line.startswith("{"):
            row = json.loads(line)
            rows[row.pop("decoder")].update(row)
    wide, reduced = rows["wide"], rows["reduced"]
    comparison = {
        "comparison": "reduced / wide",
        "parameters": round(reduced["parameters"] / wide["parameters"], 3),
        "forward_gflops_640": round(reduced["forward_gflops_640"] / wide["forward_gflops_640"], 3),
        "forward_640_s": round(reduced["forward_640_s"] / wide["forward_640_s"], 3),
        "forward_640_graph_s": round(reduced["forward_640_graph_s"]
                                     / wide["forward_640_graph_s"], 3),
        "train_step_s": round(reduced["train_step_s"] / wide["train_step_s"], 3),
        "train_steps_per_hour": round(reduced["train_steps_per_hour"]
                                      / wide["train_steps_per_hour"], 3),
        "wall_s": round(time.time() - started, 1),
        "machine": host,
    }
    lines = [wide, reduced, comparison]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text("".join(json.dumps(r) + "\n" for r in lines))
    for row in lines:
        print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
