"""Metadata of the served models."""

from __future__ import annotations

from fastapi import APIRouter

from app.api.deps import AuthDep, ModelDep, StateDep
from app.api.openapi import error_responses
from app.api.schemas import ModelEntryOut, ModelInfoOut
from app.inference.inferencer import Inferencer

router = APIRouter(prefix="/v1", tags=["model"], dependencies=[AuthDep])

_SERVES = {
    "single": "boards sent alone (no 'golden' or 'template' field, no ?product=)",
    "pair": "boards sent with a golden board ('golden' or 'template' field, or ?product=)",
}


def _entry(inferencer: Inferencer) -> ModelEntryOut:
    card = inferencer.card
    return ModelEntryOut(
        name=card.name,
        version=card.version,
        mode="pair" if inferencer.mode == "pair" else "single",
        serves=_SERVES[inferencer.mode],
        classes=list(card.classes),
        input={**card.input.model_dump(), "tile_overlap": inferencer.tile_overlap},
        pixels_per_mm=card.pixels_per_mm,
        thresholds=card.thresholds.model_dump(),
        weights_file=inferencer.weights_path.name,
        weights_sha256=inferencer.weights_sha256,
        device=inferencer.device,
        precision=inferencer.precision,
        precision_requested=inferencer.precision_requested,
    )


@router.get(
    "/model",
    response_model=ModelInfoOut,
    responses=error_responses(401, 503),
)
async def model_info(model: ModelDep, state: StateDep) -> ModelInfoOut:
    """Name, version, classes, input spec, weights checksum, device and library versions.

    The top-level fields describe the single-image model (as they always have); ``models``
    lists every model served, the golden-board (pair) one included, with what each serves.
    """
    import keras  # imported here so that importing the app stays cheap
    import tensorflow as tf

    batcher = model.batcher
    single = _entry(model.inferencer)
    models = [single]
    if state.pair_inferencer is not None:
        models.append(_entry(state.pair_inferencer))
    return ModelInfoOut(
        name=single.name,
        version=single.version,
        classes=single.classes,
        input=single.input,
        pixels_per_mm=single.pixels_per_mm,
        thresholds=single.thresholds,
        weights_file=single.weights_file,
        weights_sha256=single.weights_sha256,
        device=single.device,
        precision=single.precision,
        precision_requested=single.precision_requested,
        tensorflow_version=tf.__version__,
        keras_version=keras.__version__,
        batching={
            "max_batch_size": batcher.max_batch_size,
            "max_wait_ms": batcher.max_wait_s * 1e3,
            "model_concurrency": batcher.concurrency,
            "max_queue_tiles": batcher.max_queue,
        },
        models=models,
    )
