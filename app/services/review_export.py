"""``pcb-inspect export-reviews``: the reviewed boards as a DeepPCB-format training folder.

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

import argparse
import dataclasses
import logging
import os
import sys
from pathlib import Path

import cv2
import numpy as np
from sqlalchemy.exc import SQLAlchemyError

from app.inference.imaging import ImageError, decode_image
from app.records import (
    ImageStore,
    RecordsError,
    RecordStore,
    ReviewedInspection,
    check_schema,
    default_url,
    display_url,
)
from app.records.db import sqlite_path
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


def _template(item: ReviewedInspection, images: ImageStore,
              golden: GoldenStore) -> bytes | None:
    """The golden board the board was compared with, if it can still be found: kept beside
    the board, or still the product's current golden board."""
    ref = item.inspection.reference
    if ref is None:
        return None
    for path in sorted(images.root.glob(f"{ref.sha256[:2]}/{ref.sha256[2:]}.*")):
        try:
            return path.read_bytes()
        except FileNotFoundError:
            continue
    if ref.product is None:
        return None
    try:
        board, png = golden.png(ref.product)
    except (GoldenStoreError, UnknownProductError, ValueError):
        return None
    return png if board.sha256 == ref.sha256 else None


def export_reviews(store: RecordStore, images: ImageStore, golden: GoldenStore,
                   out: Path) -> ExportSummary:
    """Writes every reviewed board with a kept image to ``out`` (DeepPCB layout)."""
    base = Path(out) / "PCBData"
    tests = base / f"group{GROUP}" / GROUP
    notes = base / f"group{GROUP}" / f"{GROUP}_not"
    tests.mkdir(parents=True, exist_ok=True)
    notes.mkdir(parents=True, exist_ok=True)
    summary = ExportSummary()
    lines: list[str] = []
    for item in store.reviewed_for_export():
        key = item.inspection.id
        try:
            assert item.inspection.image_path is not None  # reviewed_for_export's filter
            data = images.path_of(item.inspection.image_path).read_bytes()
            (tests / f"{key}_test.jpg").write_bytes(_jpeg(data))
            template = _template(item, images, golden)
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
    summary.list_file.write_text("".join(lines))
    return summary


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """The ``export-reviews`` arguments."""
    p = parser or argparse.ArgumentParser(prog="pcb-inspect export-reviews")
    p.description = ("Write the reviewed boards whose images were kept as a DeepPCB-format "
                     "folder for `pcb-inspect train --data`.")
    p.add_argument("--out", required=True, type=Path, help="the folder to write")
    p.add_argument("--url", help="records database (default: PCB_DATABASE_URL, else "
                                 "sqlite:///$PCB_DATA_DIR/records.db)")
    p.add_argument("--data-dir", type=Path, default=None,
                   help="the service's data folder, holding images/ and golden/ "
                        "(default: PCB_DATA_DIR, else ./data)")
    return p


def run(args: argparse.Namespace) -> int:
    """Runs the export; 0 when done, 2 when the database cannot be used."""
    data_dir = args.data_dir or Path(os.environ.get("PCB_DATA_DIR", "data"))
    url = args.url or os.environ.get("PCB_DATABASE_URL") or default_url(data_dir)
    path = sqlite_path(url)
    if path is not None and not path.exists():
        print(f"pcb-inspect export-reviews: no records database at {path} (--url, "
              "PCB_DATABASE_URL, --data-dir)", file=sys.stderr)
        return 2
    store = RecordStore(url)
    try:
        check_schema(store.engine)
        summary = export_reviews(store, ImageStore(data_dir / "images"),
                                 GoldenStore(data_dir / "golden", 0), args.out)
    except (SQLAlchemyError, RecordsError) as exc:
        print(f"pcb-inspect export-reviews: cannot read {display_url(url)}: {exc}",
              file=sys.stderr)
        return 2
    finally:
        store.close()
    print(f"wrote {summary.boards} reviewed boards ({summary.boxes} boxes, "
          f"{summary.templates} golden boards) to {args.out}; list {summary.list_file}"
          + (f"; {summary.skipped} left out (image gone)" if summary.skipped else ""))
    return 0
