"""Query parameters of the inspection routes (:mod:`app.api.routes.predict`): how the result
comes back, the board metadata kept in its record, and the post-processing rules.

The metadata (``serial``, ``line``, ``station``, ``product``, ``tags``) is checked by
:func:`app.services.board_meta.query_meta`; the same names also work as multipart form fields.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import Depends, Path, Query

from app.core.ids import PRODUCT_RULE, PRODUCT_SCHEMA, check_product
from app.core.rules import MinAreaPx, MinConfidence, PixelsPerMm, Threshold
from app.records import META_MAX_CHARS, META_MAX_TAGS
from app.services.board_meta import MAX_UNIT_SERIALS, BoardMeta, query_meta
from app.services.inspection import RuleParams

MaskParam = Annotated[
    Literal["png", "rle", "none"],
    Query(description="How the mask comes back: base64 PNG, COCO RLE, or not at all."),
]
RenderParam = Annotated[
    Literal["none", "overlay"],
    Query(description="'overlay' returns a PNG of the board with masks, boxes and a legend."),
]
ProductParam = Annotated[
    str | None,
    Query(
        description="Compare with the stored golden board of this product "
        "(PUT /v1/golden-boards/{product}); uses the golden-board (pair) model. Also the "
        f"record's product (the form field 'product' means the same): {PRODUCT_RULE}.",
        json_schema_extra=PRODUCT_SCHEMA,
    ),
]


def _meta_param(what: str) -> Any:
    return Query(
        description=f"The board's {what}, kept in its record (or the form field of this name).",
        min_length=1, max_length=META_MAX_CHARS,
    )


SerialParam = Annotated[str | None, _meta_param("serial number")]
LineParam = Annotated[str | None, _meta_param("production line")]
StationParam = Annotated[str | None, _meta_param("inspection station")]
TagsParam = Annotated[
    list[str] | None,
    Query(description="Tags of the record: repeat the parameter or separate with commas "
          f"(at most {META_MAX_TAGS}, each 1-{META_MAX_CHARS} characters; also the form "
          "field 'tags')."),
]

UnitSerialsParam = Annotated[
    list[str] | None,
    Query(description="One serial per board of the panel, in position order: repeat the "
          f"parameter or separate with commas (at most {MAX_UNIT_SERIALS}; also the form field "
          "'unit_serials'). Without it the boards are named serial-position, e.g. SER123-2. "
          "/predict only: a batch's panels cannot share serials."),
]


def get_meta(
    product: ProductParam = None,
    serial: SerialParam = None,
    line: LineParam = None,
    station: StationParam = None,
    tags: TagsParam = None,
    unit_serials: UnitSerialsParam = None,
) -> BoardMeta:
    """The board metadata of a request's query (422 ``invalid_metadata`` for a bad value)."""
    return query_meta(serial, line, station, product, tags, unit_serials)


MetaDep = Annotated[BoardMeta, Depends(get_meta)]


# The rules' types carry their bounds (app.core.rules): the same for the query, the recipe
# and the card.
PxPerMmParam = Annotated[
    PixelsPerMm | None, Query(description="Scan resolution; default: model card's.")
]
MinAreaParam = Annotated[
    MinAreaPx | None, Query(description="Drop defects smaller than this (pixels).")
]
MinConfidenceParam = Annotated[
    MinConfidence | None,
    Query(description="Drop defects less confident than this; default: card's."),
]
GatingParam = Annotated[
    Literal["on", "off"] | None,
    Query(description="'off': every tile through the model, to compare with the gated answer "
          "(default: PCB_PAIR_GATING, normally 'on': only tiles near a difference from the "
          "golden board; the single model skips blank tiles)."),
]
ThresholdParam = Annotated[
    Threshold | None, Query(description="Confidence cut; default: model card's.")
]


def get_rules(
    threshold: ThresholdParam = None,
    min_area_px: MinAreaParam = None,
    pixels_per_mm: PxPerMmParam = None,
    min_confidence: MinConfidenceParam = None,
    gating: GatingParam = None,
) -> RuleParams:
    """The post-processing parameters of a request's query, and its gating."""
    return RuleParams(threshold=threshold, min_area_px=min_area_px, pixels_per_mm=pixels_per_mm,
                      min_confidence=min_confidence, gating=gating)


RulesDep = Annotated[RuleParams, Depends(get_rules)]


#: A product id in a route's path: its rule in the schema, checked by :func:`product_id`
#: (422 ``invalid_product`` naming the id, as everywhere a product id is taken, rather than
#: the framework's generic validation error).
ProductPath = Annotated[str, Path(description=f"The product id: {PRODUCT_RULE}.",
                                  json_schema_extra=PRODUCT_SCHEMA)]


def product_id(product: str) -> str:
    """``product``, or 422 ``invalid_product`` naming what the rule expects."""
    return check_product(product)
