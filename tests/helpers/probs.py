"""A numpy reference for the model graph's reduction of its softmax to three maps.

The service never needs it (the reduction runs inside the TensorFlow graph), so it lives with
the tests that check the graph against it.
"""

from __future__ import annotations

import numpy as np


def split_probs(probs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Reduces ``(..., K)`` class probabilities (channel 0 = background) as the graph does.

    Returns:
        ``(fg, cls, cls_p)`` of shape ``probs.shape[:-1]``: ``fg = 1 - probs[..., 0]`` as
        float32; ``cls = 1 + argmax(probs[..., 1:])`` as uint8 (ties go to the lower class id,
        as with ``tf.argmax``); ``cls_p = max(probs[..., 1:]) / sum(probs[..., 1:])`` as
        float16, or ``1 / (K - 1)`` (no class preferred) where the defect classes'
        probabilities are all 0.
    """
    # The graph works in float32; doing the subtraction in float32 too gives bit-equal maps.
    p = np.asarray(probs).astype(np.float32, copy=False)
    fg = np.float32(1.0) - p[..., 0]
    defect_p = p[..., 1:]
    cls = (np.argmax(defect_p, axis=-1) + 1).astype(np.uint8)
    total = defect_p.sum(axis=-1)
    cls_p = np.full(total.shape, np.float32(1.0) / np.float32(defect_p.shape[-1]), np.float32)
    np.divide(defect_p.max(axis=-1), total, out=cls_p, where=total > 0)
    return fg, cls, cls_p.astype(np.float16)
