"""What cutting the encoder costs and saves: parameters, file size and forward time by depth.

    python -m bench.encoder_depth

Builds the model with the ResNet50 encoder cut after stage 4 (shipped) and after stage 5
(the whole encoder), saves each without optimizer, and times a 640 x 640 forward pass
(median of 5) in float32 and bfloat16 in one process.
"""

from __future__ import annotations

import functools
import json
import os
import tempfile
from pathlib import Path

import numpy as np


def main() -> int:
    """Prints a JSON line per depth."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    from app.inference.forward import timed_calls
    from model_defs import build_model

    x = np.full((1, 640, 640, 1), 255, dtype="float32")
    rows = []
    for depth in (4, 5):
        for policy in ("float32", "bfloat16"):
            keras.mixed_precision.set_global_policy(policy)
            model = build_model(encoder_depth=depth)
            times = timed_calls(functools.partial(model, x), 5)
            size = None
            if policy == "float32":
                with tempfile.TemporaryDirectory() as tmp:
                    path = Path(tmp) / "m.keras"
                    model.save(path)
                    size = path.stat().st_size
            rows.append({"encoder_depth": depth, "policy": policy,
                         "parameters": int(model.count_params()),
                         "file_mb": round(size / 1e6, 1) if size else None,
                         "forward_640_s": round(float(np.median(times)), 3)})
            print(json.dumps(rows[-1]), flush=True)
    keras.mixed_precision.set_global_policy("float32")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
