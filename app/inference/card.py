"""The model card: the JSON file beside the weights that tells the service how to use them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

# Re-exported: the inferencer and the tests find the card of a weights file here, beside the
# card's reader; it lives in core so that the settings need not import inference.
from app.core.model_files import default_card_path as default_card_path
from app.core.rules import (
    MergeDistancePx,
    MinAreaPx,
    MinConfidence,
    PixelsPerMm,
    RuleOverrides,
    Rules,
    Threshold,
)


class InputSpec(BaseModel):
    """What the model takes."""

    tile_size: int = Field(640, gt=0, description="Side of the square tiles the model sees.")
    multiple_of: int = Field(16, gt=0, description="H and W must be multiples of this.")
    channels: int = Field(1, description="1: grayscale.")
    dtype: str = Field("uint8", description="Raw pixel dtype; preprocessing is in the model.")
    tile_overlap: int | None = Field(
        None, ge=0,
        description="Overlap of neighbouring tiles in pixels; default: a tenth of the tile, "
        "enough context that the owned core of each tile is unaffected by its border.",
    )

    @field_validator("tile_size")
    @classmethod
    def _tile_fits(cls, v: int) -> int:
        if v % 16 and v % 4:
            raise ValueError(f"tile_size must be a multiple of 4 or 16, got {v}")
        return v

    @model_validator(mode="after")
    def _overlap_below_tile(self) -> InputSpec:
        if self.tile_overlap is not None and self.tile_overlap >= self.tile_size:
            raise ValueError(
                f"tile_overlap must be less than tile_size {self.tile_size}, got "
                f"{self.tile_overlap}"
            )
        return self


class Thresholds(BaseModel):
    """Default post-processing rules (the bounds of :mod:`app.core.rules`); ``confidence`` is
    the rules' ``threshold``."""

    confidence: Threshold = 0.5
    min_area_px: MinAreaPx = 10
    min_confidence: MinConfidence = Field(
        0.0, description="Operating point: defects less confident than this are not reported.",
    )
    merge_distance_px: MergeDistancePx = Field(
        3,
        description="Fragments at most this many pixels apart are one defect: a property of "
                    "the model (how it breaks a defect up), measured with the operating point.",
    )


class PrecisionParity(BaseModel):
    """Accuracy of the model in one precision against float32, measured on held-out boards.

    ``PCB_PRECISION=auto`` runs a precision only where ``|delta_map|`` is within tolerance.
    """

    model_config = ConfigDict(extra="allow")

    map_float32: float = Field(description="mAP in float32.")
    map: float = Field(description="mAP in this precision.")
    delta_map: float = Field(description="map - map_float32.")
    boards: int = Field(gt=0, description="Boards evaluated.")
    protocol: str = Field("", description="How it was measured (split, operating point).")


class ModelCard(BaseModel):
    """Machine-readable model card (``model_card.json``)."""

    model_config = ConfigDict(extra="allow", protected_namespaces=())

    name: str
    version: str
    classes: list[str] = Field(min_length=1)
    input: InputSpec = Field(default_factory=InputSpec)
    pixels_per_mm: PixelsPerMm = 48.0
    thresholds: Thresholds = Field(default_factory=Thresholds)
    mode: Literal["single", "pair"] = Field(
        "single",
        description="'single': the board alone; 'pair': the board and its golden board.",
    )
    precision_parity: dict[str, PrecisionParity] = Field(
        default_factory=dict,
        description="Measured accuracy per reduced precision; what PCB_PRECISION=auto may run.",
    )

    def rules(self, fail: RuleOverrides) -> Rules:
        """The card's operating point with the verdict rule of ``fail`` (the settings'): what
        a board is judged by when neither its recipe nor its request says otherwise."""
        t = self.thresholds
        return Rules(
            threshold=t.confidence, min_area_px=t.min_area_px, min_confidence=t.min_confidence,
            pixels_per_mm=self.pixels_per_mm, merge_distance_px=t.merge_distance_px,
            **fail.model_dump(include={"fail_rule", "fail_min_count", "fail_min_area_mm2"},
                              exclude_none=True),
        )


class ModelCardError(ValueError):
    """The model card is missing or invalid."""


def load_card(path: Path) -> ModelCard:
    """Reads and validates a model card.

    Args:
        path: The ``model_card.json`` file.

    Returns:
        The validated card.

    Raises:
        ModelCardError: With a one-line message naming the file and what is wrong.
    """
    try:
        raw = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ModelCardError(f"model card {path} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelCardError(f"model card {path} is not readable JSON: {exc}") from None
    try:
        return ModelCard.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(root)"
        raise ModelCardError(f"model card {path} is invalid at {where}: {first['msg']}") from None


def write_card(path: Path, card: ModelCard | dict[str, Any]) -> None:
    """Writes a model card as indented JSON (validated first)."""
    model = card if isinstance(card, ModelCard) else ModelCard.model_validate(card)
    Path(path).write_text(json.dumps(model.model_dump(mode="json"), indent=2) + "\n")
