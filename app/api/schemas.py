"""Response models: the JSON contract of the API."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class ErrorDetail(BaseModel):
    code: str = Field(description="Machine-readable error code, e.g. 'truncated_image'.")
    message: str = Field(description="What went wrong, for the operator.")


class ErrorResponse(BaseModel):
    error: ErrorDetail


class ImageInfo(BaseModel):
    width: int
    height: int


class ModelRef(BaseModel):
    name: str
    version: str
    mode: Literal["single", "pair"] = Field(
        description="'single': the board alone; 'pair': the board against its golden board."
    )


class AlignmentOut(BaseModel):
    dx: float = Field(description="Shift of the reference relative to the board, x (px).")
    dy: float = Field(description="Shift of the reference relative to the board, y (px).")
    rotation_deg: float = Field(description="Rotation of the reference (counter-clockwise).")
    score: float = Field(description="Normalised cross-correlation after alignment (0..1).")


class ReferenceOut(BaseModel):
    source: Literal["upload", "product"] = Field(
        description="'upload': the request's 'template' field; 'product': the stored golden "
        "board of ?product=."
    )
    product: str | None
    sha256: str = Field(description="sha256 of the reference image's bytes.")
    alignment: AlignmentOut


class DefectOut(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    id: int = Field(description="1-based, ordered by position (top to bottom, left to right).")
    class_: str = Field(alias="class", description="Defect class, e.g. 'short'.")
    confidence: float = Field(description="Mean defect probability over the defect's pixels.")
    bbox: list[int] = Field(description="[x_min, y_min, x_max, y_max], max exclusive, pixels.")
    area_px: int
    area_mm2: float
    centroid: list[float] = Field(description="[x, y] in pixels.")


class SummaryOut(BaseModel):
    defect_count: int
    defect_area_px: int
    defect_area_mm2: float
    defect_area_ratio: float
    by_class: dict[str, int]
    verdict: Literal["pass", "fail"]


class MaskOut(BaseModel):
    encoding: Literal["png", "rle"]
    data: Any = Field(
        description="png: base64 of an 8-bit PNG (0 background, k the k-th class); "
        "rle: COCO-style run-length of the defect mask, column-major."
    )


class PredictionOut(BaseModel):
    image: ImageInfo
    model: ModelRef
    defects: list[DefectOut]
    summary: SummaryOut
    mask: MaskOut | None = None
    params: dict[str, Any] = Field(description="The rules applied (threshold, min_area_px, ...).")
    timings_ms: dict[str, float]
    reference: ReferenceOut | None = Field(
        None, description="The golden board the board was compared with; null without one."
    )


class BatchItemOut(BaseModel):
    index: int
    filename: str | None
    status: int = Field(description="HTTP-style status of this item: 200 or its own error.")
    result: PredictionOut | None = None
    error: ErrorDetail | None = None


class BatchOut(BaseModel):
    count: int
    succeeded: int
    failed: int
    results: list[BatchItemOut]


class _ModelFieldsOut(BaseModel):
    """What every served model reports (its card, weights, device and precision)."""

    model_config = ConfigDict(protected_namespaces=())

    name: str
    version: str
    classes: list[str]
    input: dict[str, Any]
    pixels_per_mm: float
    thresholds: dict[str, Any]
    weights_file: str
    weights_sha256: str
    device: str
    precision: str = Field(description="The precision the model runs in.")
    precision_requested: str = Field(description="PCB_PRECISION: auto or a precision.")


class ModelEntryOut(_ModelFieldsOut):
    mode: Literal["single", "pair"]
    serves: str = Field(description="Which requests this model inspects.")


class ModelInfoOut(_ModelFieldsOut):
    """The single-image model's fields at the top level (as before), and every model."""

    tensorflow_version: str
    keras_version: str
    batching: dict[str, Any]
    models: list[ModelEntryOut] = Field(
        description="Every model served: the single-image one first, then the golden-board "
        "(pair) one if loaded."
    )


class GoldenBoardOut(BaseModel):
    product: str
    width: int
    height: int
    sha256: str = Field(description="sha256 of the stored PNG (what Accept: image/png returns).")
    created: str = Field(description="When this version was stored (ISO 8601, UTC).")


class GoldenBoardListOut(BaseModel):
    count: int
    boards: list[GoldenBoardOut]
