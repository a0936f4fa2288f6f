"""The model function: tiles in, the per-pixel maps post-processing needs out.

One ``tf.function`` with a fixed input signature (one trace for any batch size), and the
measurement that picks the batch size on the machine at hand.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any

import numpy as np


def build_forward(call_model: Callable[[Any], Any], tile: int, channels: int) -> Any:
    """Wraps ``call_model`` (float32 ``(n, T, T, C)`` -> class probabilities) as a graph.

    The graph takes ``(n, tile, tile, channels)`` uint8 tiles and returns ``(fg, cls, cls_p)``:
    P(defect) (float32), the most likely defect class (uint8, ``1..K``) and P(cls | defect)
    (float16).
    """
    import tensorflow as tf

    signature = [tf.TensorSpec([None, tile, tile, channels], tf.uint8, name="tiles")]

    def forward_graph(tiles: Any) -> tuple[Any, Any, Any]:
        probs = tf.cast(call_model(tf.cast(tiles, tf.float32)), tf.float32)
        fg = 1.0 - probs[..., 0]
        defect_probs = probs[..., 1:]
        cls = tf.cast(tf.argmax(defect_probs, axis=-1) + 1, tf.uint8)
        # P(cls | defect): how sure the model is of the class among the defect classes,
        # for post-processing's class vote. Where all defect classes have probability 0
        # no class is preferred: 1/K. float16 keeps the stitched board map at 2 B/pixel.
        total = tf.reduce_sum(defect_probs, axis=-1)
        top = tf.reduce_max(defect_probs, axis=-1)
        uniform = 1.0 / float(defect_probs.shape[-1])
        cls_p = tf.where(total > 0, tf.math.divide_no_nan(top, total), uniform)
        return fg, cls, tf.cast(cls_p, tf.float16)

    # Fixed signature: one trace for any batch size, so no request retraces the graph.
    return tf.function(forward_graph, input_signature=signature)


def seconds_per_tile(
    forward: Callable[[np.ndarray], Any], tile: int, channels: int, cap: int
) -> dict[int, float]:
    """Seconds per tile of ``forward`` at batch sizes 1, 2, 4, ... up to ``cap``.

    Each candidate runs once untimed (oneDNN plans each new shape) and then twice timed; the
    faster run counts, as the slower one is more likely to have shared the cores.
    """
    if cap < 1:
        raise ValueError(f"cap must be >= 1. Received: cap={cap}")
    per_tile: dict[int, float] = {}
    for n in (1 << k for k in range(cap.bit_length()) if 1 << k <= cap):
        tiles = np.full((n, tile, tile, channels), 255, dtype=np.uint8)
        per_tile[n] = min(timed_calls(functools.partial(forward, tiles), 2)) / n
    return per_tile


def timed_calls(call: Callable[[], object], reps: int) -> list[float]:
    """Seconds of each of ``reps`` calls of ``call``, after one untimed call (which traces the
    graph or lets oneDNN plan the shape), for the warm-up's batch choice and the benchmarks."""
    call()
    times = []
    for _ in range(reps):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return times
