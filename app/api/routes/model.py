"""Metadata of the served model."""

from __future__ import annotations

from fastapi import APIRouter

from app.api.deps import AuthDep, ModelDep, SettingsDep
from app.api.schemas import ErrorResponse, ModelInfoOut

router = APIRouter(prefix="/v1", tags=["model"], dependencies=[AuthDep])


@router.get(
    "/model",
    response_model=ModelInfoOut,
    responses={503: {"model": ErrorResponse}, 401: {"model": ErrorResponse}},
)
async def model_info(model: ModelDep, settings: SettingsDep) -> ModelInfoOut:
    """Name, version, classes, input spec, weights checksum, device and library versions."""
    import keras  # imported here so that importing the app stays cheap
    import tensorflow as tf

    inferencer, batcher = model
    card = inferencer.card
    return ModelInfoOut(
        name=card.name,
        version=card.version,
        classes=list(card.classes),
        input={**card.input.model_dump(), "tile_overlap": inferencer.tile_overlap},
        pixels_per_mm=card.pixels_per_mm,
        thresholds=card.thresholds.model_dump(),
        weights_file=inferencer.weights_path.name,
        weights_sha256=inferencer.weights_sha256,
        device=inferencer.device,
        precision=inferencer.precision,
        tensorflow_version=tf.__version__,
        keras_version=keras.__version__,
        batching={
            "max_batch_size": batcher.max_batch_size,
            "max_wait_ms": batcher.max_wait_s * 1e3,
            "max_queue_tiles": batcher.max_queue,
        },
    )
