"""Response models: the JSON contract of the API.

The routes return these through ``response_model``, so FastAPI checks every answer against
the schema it publishes; :meth:`PredictionOut.of` and :meth:`BatchOut.of` build them from the
inspection service's results.
"""

from __future__ import annotations

import base64
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    model_serializer,
)

from app.core.errors import as_api_error
from app.core.rules import Rules
from app.inference.defects import Defect, Summary
from app.inference.encoding import encode_mask_png, encode_rle
from app.records import IgnoredRecord, RecipeRef, Review, UnitRecord
from app.records import Inspection as InspectionRecordOut
from app.services.inspection import BatchItem, InspectedBoard
from app.services.panel_records import ignored_records, recipe_ref, unit_records
from app.services.recipes import ProductRules, Unit, Zone

MaskEncoding = Literal["png", "rle", "none"]


class ErrorDetail(BaseModel):
    code: str = Field(description="Machine-readable error code, e.g. 'truncated_image'.")
    message: str = Field(description="What went wrong, for the operator.")


class ErrorResponse(BaseModel):
    error: ErrorDetail


class StatusOut(BaseModel):
    status: Literal["alive", "ready"]


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
    dx: float = Field(description="Shift of the golden board relative to the board, x (px).")
    dy: float = Field(description="Shift of the golden board relative to the board, y (px).")
    rotation_deg: float = Field(description="Rotation of the golden board (counter-clockwise).")
    score: float = Field(description="Normalised cross-correlation after alignment (0..1).")


class GoldenBoardRefOut(BaseModel):
    source: Literal["upload", "product"] = Field(
        description="'upload': the request's 'golden' (or 'template') field; 'product': the "
        "stored golden board of ?product=."
    )
    product: str | None
    sha256: str = Field(description="sha256 of the golden board image's bytes.")
    alignment: AlignmentOut
    warnings: int | None = Field(
        None, description="How many warnings the single-image model gave on this stored golden "
        "board when it was stored (GET /v1/golden-boards/{product} lists them): above 0, this "
        "comparison may be wrong where they are. Null when it was never checked, and for an "
        "uploaded golden board."
    )


class ParamsOut(Rules):
    """The rules applied to this board (the request's, else the recipe's, else the model
    card's and the settings' fail rule): every rule of :class:`app.core.rules.Rules`, so a new
    rule is shown without being named here, and the tiles."""

    # Every rule is in every answer, defaulted or not: the published schema says so.
    model_config = ConfigDict(json_schema_serialization_defaults_required=True)

    tiles: int = Field(description="Tiles the board was cut into for the model.")


class TilesOut(BaseModel):
    """How much of the board went through the model (gating: PCB_PAIR_GATING, ?gating=)."""

    computed: int = Field(description="Tiles that went through the model.")
    skipped: int = Field(description="Tiles left background without a forward pass.")
    skipped_px: int = Field(description="Board pixels those skipped tiles own.")
    gating: Literal["on", "off"] = Field(description="Whether the board was gated.")


class MaskOut(BaseModel):
    encoding: Literal["png", "rle"]
    data: Any = Field(
        description="png: base64 of an 8-bit PNG (0 background, k the k-th class); "
        "rle: COCO-style run-length of the defect mask, column-major."
    )


class PredictionOut(BaseModel):
    inspection_id: str | None = Field(
        None,
        description="The board's record (GET /v1/inspections/{id}); null when records are "
        "off (PCB_RECORDS=false) or this board could not be recorded.",
    )
    image: ImageInfo
    model: ModelRef
    defects: list[Defect]
    # The post-processing's own dataclass: pydantic validates it as it is, so the summary is
    # defined once.
    summary: Summary
    mask: MaskOut | None = None
    params: ParamsOut
    tiles: TilesOut
    timings_ms: dict[str, float] = Field(
        description="Where the time went: pre_process, register (with a golden board), "
        "candidates (finding the tiles with work, when gated), queue (waiting for the model), "
        "forward (in the model), post_process."
    )
    reference: GoldenBoardRefOut | None = Field(
        None, description="The golden board the board was compared with ('reference' is the "
        "API's name for it, kept for compatibility); null without one."
    )
    units: list[UnitRecord] = Field(
        default_factory=list,
        description="A verdict per board of the panel, by position (the recipe's units; "
        "without any, one unit: the whole image).",
    )
    ignored: list[IgnoredRecord] = Field(
        default_factory=list,
        description="Defects the recipe's zones set aside: listed for audit, in no verdict.",
    )
    recipe: RecipeRef | None = Field(
        None, description="The recipe revision applied (?product= with a recipe); else null."
    )
    reference_defects: list[Defect] = Field(
        default_factory=list,
        description="Differences that come from the golden board itself (a pin hole or a "
        "speck of copper in it, where the board is right): warnings about the golden board, "
        "not defects of the board, so they are left out of defects, summary and mask.",
    )

    @classmethod
    def of(cls, inspection: InspectedBoard, mask: MaskEncoding) -> PredictionOut:
        """The answer for one inspected board, its mask encoded as asked (takes a while on a
        large board: call it off the event loop)."""
        result, inferencer, config = inspection.result, inspection.inferencer, inspection.config
        mask_out = None
        if mask == "png":
            data = base64.b64encode(encode_mask_png(result.class_map)).decode("ascii")
            mask_out = MaskOut(encoding="png", data=data)
        elif mask == "rle":
            # Keyed by class name, like the defects and by_class (not by bare class ids).
            mask_out = MaskOut(
                encoding="rle", data=encode_rle(result.class_map, inferencer.card.classes)
            )
        golden = inspection.golden
        return cls(
            inspection_id=inspection.record_id,
            image=ImageInfo(width=result.width, height=result.height),
            model=ModelRef(
                name=inferencer.card.name,
                version=inferencer.card.version,
                mode="pair" if inferencer.mode == "pair" else "single",
            ),
            defects=result.defects,
            reference_defects=inspection.golden_defects,
            summary=result.summary,
            mask=mask_out,
            params=ParamsOut(**config.model_dump(), tiles=result.tiles),
            tiles=TilesOut(
                computed=result.tiles - result.skipped_tiles, skipped=result.skipped_tiles,
                skipped_px=result.skipped_px, gating="on" if result.gated else "off",
            ),
            timings_ms=result.timings_ms,
            reference=None if golden is None or result.alignment is None else GoldenBoardRefOut(
                source=golden.source,
                product=golden.product,
                sha256=golden.sha256,
                alignment=AlignmentOut(**result.alignment.as_dict()),
                warnings=golden.warnings,
            ),
            units=unit_records(inspection), ignored=ignored_records(inspection),
            recipe=recipe_ref(inspection),
        )


class BatchItemOut(BaseModel):
    index: int
    filename: str | None
    status: int = Field(description="HTTP-style status of this item: 200 or its own error.")
    result: PredictionOut | None = Field(None, description="With status 200 only.")
    error: ErrorDetail | None = Field(None, description="With an error status only.")

    # No return annotation: pydantic would publish the annotation's schema (for ``Any``, an
    # empty one) in place of this model's fields.
    @model_serializer(mode="wrap")
    def _one_of_result_or_error(self, handler: SerializerFunctionWrapHandler):
        # An item carries its result or its error, never the other as null: the shape clients
        # have always read.
        data = handler(self)
        for key in ("result", "error"):
            if data.get(key) is None:
                data.pop(key, None)
        return data


class BatchOut(BaseModel):
    count: int
    succeeded: int
    failed: int
    results: list[BatchItemOut]

    @classmethod
    def of(cls, items: list[BatchItem], mask: MaskEncoding) -> BatchOut:
        """The answer for a batch, in upload order (encodes masks: call it off the event loop)."""
        results = []
        for item in items:
            out = BatchItemOut(index=item.index, filename=item.upload.filename, status=200)
            if item.inspection is not None:
                out.result = PredictionOut.of(item.inspection, mask)
            elif item.error is not None:
                out.status = as_api_error(item.error).status
                out.error = ErrorDetail(code=item.error.code, message=item.error.message)
            results.append(out)
        ok = sum(1 for r in results if r.status == 200)
        return cls(count=len(results), succeeded=ok, failed=len(results) - ok, results=results)


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
    warnings: list[Defect] | None = Field(
        None, description="What the single-image model found on this board when it was stored "
        "(as the PUT answered); null when it was not checked (stored before checks were kept, "
        "or while no model could check it)."
    )
    checked_by: ModelRef | None = Field(
        None, description="The model that checked it; null when it was not checked."
    )


class GoldenBoardPutOut(GoldenBoardOut):
    warnings: list[Defect] = Field(
        description="What the single-image model finds on the golden board itself (a board "
        "with defects makes a bad golden board; it is stored all the same). Empty when it finds "
        "nothing."
    )
    checked_by: ModelRef | None = Field(
        description="The model that checked it; null when none could (warnings then empty)."
    )


class GoldenBoardListOut(BaseModel):
    count: int
    boards: list[GoldenBoardOut]


class InspectionPageOut(BaseModel):
    items: list[InspectionRecordOut] = Field(description="Newest first.")
    next_cursor: str | None = Field(
        description="Pass as ?cursor= for the next page (same filters); null on the last page."
    )


class InspectionDetailOut(InspectionRecordOut):
    reviews: list[Review] = Field(
        description="Every distinct review of the board, oldest first; the last is current."
    )


class RecipeGoldenOut(BaseModel):
    sha256: str = Field(description="sha256 of the golden board's PNG the recipe was drawn on.")
    width: int
    height: int


class RecipeOut(BaseModel):
    """One revision of a product's recipe."""

    product: str
    revision: int = Field(description="1 for the first; every change adds one.")
    sha256: str = Field(description="sha256 of the canonical JSON of the content (product, "
                        "golden_board, units, zones, rules).")
    created: str = Field(description="When this revision was stored (ISO 8601, UTC).")
    author: str = Field(description="The name of the API key that stored it.")
    golden_board: RecipeGoldenOut
    units: list[Unit]
    zones: list[Zone]
    rules: ProductRules


class RecipeRevisionOut(BaseModel):
    revision: int
    sha256: str
    created: str
    author: str


class RecipeRevisionListOut(BaseModel):
    product: str
    count: int
    revisions: list[RecipeRevisionOut] = Field(description="Oldest first; the last is current.")
