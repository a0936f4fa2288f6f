"""The naive baseline: a minimal FastAPI endpoint calling ``model.predict`` per request.

Same weights, same decoding to grayscale, no batching, no tiling (the 640x640 benchmark boards
fit the model as they are), default threadpool. Run: ``PCB_WEIGHTS_PATH=... uvicorn
bench.naive_server:app --port 8001``.
"""

from __future__ import annotations

import io
import os

import keras
import numpy as np
from fastapi import FastAPI, UploadFile
from PIL import Image

from app.core.config import DEFAULT_WEIGHTS
from model_defs import get_custom_objects

model = keras.models.load_model(
    os.environ.get("PCB_WEIGHTS_PATH", str(DEFAULT_WEIGHTS)),
    custom_objects=get_custom_objects(),
    compile=False,
)
app = FastAPI()


@app.get("/readyz")
def readyz() -> dict[str, str]:
    return {"status": "ready"}


@app.post("/predict")
def predict(file: UploadFile) -> dict[str, int]:
    image = np.asarray(Image.open(io.BytesIO(file.file.read())).convert("L"), dtype=np.float32)
    probs = model.predict(image[None, ..., None], verbose=0)[0]
    classes = probs.argmax(-1)
    return {"defect_pixels": int((classes > 0).sum())}
