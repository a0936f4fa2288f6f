"""The reviewed boards as a DeepPCB-format training folder (``pcb-inspect export-reviews``,
whose command line is :mod:`app.export_reviews`).

What an operator's review says a board holds becomes its annotation: confirmed defects with
the model's class, reclassified ones with the operator's class, and the missed defects drawn
by hand; false calls are dropped (the board is background there), and defects the review left
without an outcome too (nobody vouched for them). Only boards whose image was kept can be
exported.

The layout is DeepPCB's, which ``pcb-inspect train --data`` reads (:mod:`training.data`)::

    OUT/PCBData/trainval.txt                           groupreviews/reviews/<id>.jpg groupreviews/reviews_not/<id>.txt
    OUT/PCBData/groupreviews/reviews/<id>_test.jpg     the board
    OUT/PCBData/groupreviews/reviews/<id>_temp.jpg     its golden board, where one was used
    OUT/PCBData/groupreviews/reviews_not/<id>.txt      x1 y1 x2 y2 type (1-based DeepPCB type)
"""  # noqa: E501

from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import cv2
import httpx
import numpy as np
from pydantic import BaseModel

from app.inference.imaging import ImageError, decode_image
from app.records import (
    ImageStore,
    Inspection,
    RecordStore,
    Review,
    ReviewedInspection,
    UnitRecord,
)
from app.services.golden_store import GoldenStore, GoldenStoreError, UnknownProductError
from pcb_inspect.classes import CLASS_NAMES

logger = logging.getLogger("pcb_inspect.records")

GROUP = "reviews"
LIST_NAME = "trainval.txt"
_JPEG_MAGIC = b"\xff\xd8\xff"


@dataclasses.dataclass
class ExportSummary:
    """What :func:`export_reviews` wrote."""

    boards: int = 0
    boxes: int = 0
    templates: int = 0
    skipped: int = 0
    list_file: Path | None = None


def boxes_of(item: ReviewedInspection) -> list[tuple[int, int, int, int, int]]:
    """The board's defects as the review has them: ``(x1, y1, x2, y2, type)``, x2 and y2
    exclusive (as DeepPCB's and the service's boxes), type 1-based in :data:`CLASS_NAMES`."""
    defects = {d.id: d for d in item.inspection.defects}
    out: list[tuple[int, int, int, int, int]] = []
    found: list[tuple[tuple[int, int, int, int], str]] = []
    for o in item.review.body.defects:
        d = defects.get(o.defect_id)
        if d is None or o.outcome == "false_call":
            continue
        found.append((d.bbox, o.class_ if o.outcome == "reclassified" and o.class_ else d.class_))
    found += [(m.bbox, m.class_) for m in item.review.body.missed]
    for box, name in found:
        if name not in CLASS_NAMES:
            logger.warning("%s: class %r is not a DeepPCB class: box left out",
                           item.inspection.id, name)
            continue
        out.append((*box, CLASS_NAMES.index(name) + 1))
    return out


def _jpeg(data: bytes) -> bytes:
    """The image as an 8-bit grayscale JPEG with the pixels the service inspected.

    A JPEG is copied as it came (OpenCV, which training reads with, applies its orientation
    tag as the service did); anything else is decoded as the service decodes and written at
    quality 100.
    """
    if data.startswith(_JPEG_MAGIC):
        return data
    pixels = decode_image(data, max_pixels=2**31, min_side=1).pixels
    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(pixels), [cv2.IMWRITE_JPEG_QUALITY, 100])
    if not ok:
        raise ValueError("OpenCV could not encode the image as JPEG")
    return bytes(buf)


class ExportSource(Protocol):
    """Where the reviewed boards come from: the records database and data folder, or a
    running service over its API."""

    def reviewed(self) -> Iterator[ReviewedInspection]:
        """Every reviewed board whose image is kept, with its current review."""
        ...

    def image(self, item: ReviewedInspection) -> bytes:
        """The kept image; :class:`OSError` or :class:`ValueError` when it is gone."""
        ...

    def template(self, item: ReviewedInspection) -> bytes | None:
        """The golden board the board was compared with, if it can still be found."""
        ...


class LocalSource:
    """The records database and the service's data folder (images/ and golden/)."""

    def __init__(self, store: RecordStore, images: ImageStore, golden: GoldenStore) -> None:
        self.store, self.images, self.golden = store, images, golden

    def reviewed(self) -> Iterator[ReviewedInspection]:
        return self.store.reviewed_for_export()

    def image(self, item: ReviewedInspection) -> bytes:
        assert item.inspection.image_path is not None  # reviewed_for_export's filter
        return self.images.path_of(item.inspection.image_path).read_bytes()

    def template(self, item: ReviewedInspection) -> bytes | None:
        """Kept beside the board, or still the product's current golden board."""
        golden = item.inspection.reference
        if golden is None:
            return None
        for path in sorted(self.images.root.glob(f"{golden.sha256[:2]}/{golden.sha256[2:]}.*")):
            try:
                return path.read_bytes()
            except FileNotFoundError:
                continue
        if golden.product is None:
            return None
        try:
            board, png = self.golden.png(golden.product)
        except (GoldenStoreError, UnknownProductError, ValueError):
            return None
        return png if board.sha256 == golden.sha256 else None


class RemoteServiceError(Exception):
    """The service answered with an error (its code and message) or could not be reached."""


class ApiSource:
    """A running service, through its API with an ``admin`` key (or with auth off): the
    records (``GET /v1/inspections``), kept images and stored golden boards. A golden board
    that was uploaded with the board (not stored for a product) is not served by the API, so
    such a board is exported without its template."""

    def __init__(self, http: httpx.Client, api_key: str | None = None,
                 page_size: int = 200) -> None:
        self.http = http
        self.headers = {"X-API-Key": api_key} if api_key else {}
        self.page_size = page_size

    def _get(self, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self.http.get(path, headers={**self.headers, **kwargs.pop("headers", {})},
                                     **kwargs)
        except httpx.HTTPError as exc:
            raise RemoteServiceError(f"cannot reach the service: {exc}") from None
        if response.status_code >= 400 and response.status_code != 404:
            raise RemoteServiceError(_api_error(response))
        return response

    def reviewed(self) -> Iterator[ReviewedInspection]:
        cursor: str | None = None
        while True:
            params: dict[str, Any] = {"reviewed": "true", "limit": self.page_size}
            if cursor:
                params["cursor"] = cursor
            response = self._get("/v1/inspections", params=params)
            if response.status_code == 404:
                raise RemoteServiceError(_api_error(response))
            page = response.json()
            for raw in page["items"]:
                if raw.get("image_path") is None:
                    continue
                detail = self._get(f"/v1/inspections/{raw['id']}")
                if detail.status_code == 404 or not detail.json().get("reviews"):
                    continue  # deleted since the page was read
                body = detail.json()
                review = Review.model_validate(_fields_of(Review, body.pop("reviews")[-1]))
                if body.get("units"):
                    body["units"] = [_fields_of(UnitRecord, u) for u in body["units"]]
                yield ReviewedInspection(
                    Inspection.model_validate(_fields_of(Inspection, body)), review)
            cursor = page.get("next_cursor")
            if not cursor:
                return

    def image(self, item: ReviewedInspection) -> bytes:
        response = self._get(f"/v1/inspections/{item.inspection.id}/image")
        if response.status_code == 404:
            raise FileNotFoundError(f"image of {item.inspection.id} is no longer kept")
        return response.content

    def template(self, item: ReviewedInspection) -> bytes | None:
        golden = item.inspection.reference
        if golden is None or golden.product is None:
            return None
        response = self._get(f"/v1/golden-boards/{golden.product}",
                             headers={"Accept": "image/png"})
        if response.status_code == 404:
            return None
        # Only the very board it was compared with: the product's board may have changed.
        return response.content if hashlib.sha256(response.content).hexdigest() == golden.sha256 \
            else None


def _fields_of(model: type[BaseModel], data: dict[str, Any]) -> dict[str, Any]:
    """``data`` without the fields ``model`` does not have: the API may answer with more than
    the records' models (e.g. each unit's reviewed verdict), and they refuse extra fields."""
    return {k: v for k, v in data.items() if k in model.model_fields}


def _api_error(response: httpx.Response) -> str:
    try:
        error = response.json()["error"]
        return f"the service answered {response.status_code} {error['code']}: {error['message']}"
    except (ValueError, KeyError, TypeError):
        return f"the service answered {response.status_code}: {response.text[:200]!r}"


def export_reviews(store: RecordStore, images: ImageStore, golden: GoldenStore,
                   out: Path) -> ExportSummary:
    """Writes every reviewed board with a kept image to ``out`` (DeepPCB layout)."""
    return write_export(LocalSource(store, images, golden), out)


def write_export(source: ExportSource, out: Path) -> ExportSummary:
    """Writes every reviewed board of ``source`` with a kept image to ``out`` (DeepPCB
    layout)."""
    base = Path(out) / "PCBData"
    tests = base / f"group{GROUP}" / GROUP
    notes = base / f"group{GROUP}" / f"{GROUP}_not"
    tests.mkdir(parents=True, exist_ok=True)
    notes.mkdir(parents=True, exist_ok=True)
    summary = ExportSummary()
    lines: list[str] = []
    for item in source.reviewed():
        key = item.inspection.id
        try:
            data = source.image(item)
            (tests / f"{key}_test.jpg").write_bytes(_jpeg(data))
            template = source.template(item)
            if template is not None:
                (tests / f"{key}_temp.jpg").write_bytes(_jpeg(template))
                summary.templates += 1
        except (OSError, ValueError, ImageError) as exc:
            # Retention may remove an image after the query saw it: that board is left out.
            logger.warning("%s: image not exported (%s)", key, exc)
            summary.skipped += 1
            continue
        boxes = boxes_of(item)
        (notes / f"{key}.txt").write_text("".join(f"{x1} {y1} {x2} {y2} {t}\n"
                                                  for x1, y1, x2, y2, t in boxes))
        lines.append(f"group{GROUP}/{GROUP}/{key}.jpg group{GROUP}/{GROUP}_not/{key}.txt\n")
        summary.boards += 1
        summary.boxes += len(boxes)
    summary.list_file = base / LIST_NAME
    summary.list_file.write_text("".join(sorted(lines)))
    return summary
