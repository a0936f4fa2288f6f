"""The recording hook: every finished board becomes an inspection record, durable before its
answer is sent (an ``on_result`` hook of :class:`app.services.inspection.InspectionService`).

A record the database cannot take goes to the spool (:class:`app.records.Recorder`). Every
200 has its record: a board that neither could take is answered 503 ``records_unavailable``
(its result is not sent, so no client acts on an unrecorded board), and ``/readyz`` is unready
until a record can be written again.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging

from app.core.metrics import RECORDS, RECORDS_SPOOLED
from app.records import (
    GoldenBoardRef,
    ImageStore,
    InspectionRecord,
    RecordedRules,
    Recorder,
)
from app.services.errors import RecordsUnavailableError
from app.services.golden_store import GoldenStore, GoldenStoreError, UnknownProductError
from app.services.inspection import InspectedBoard
from app.services.panel_records import ignored_records, recipe_ref, unit_records

logger = logging.getLogger("pcb_inspect.records")


def build_record(inspection: InspectedBoard, image_path: str | None) -> InspectionRecord:
    """The record of one finished board (its image kept at ``image_path``, or not kept)."""
    result, inferencer, config = inspection.result, inspection.inferencer, inspection.config
    meta, data = inspection.meta, inspection.upload.data
    golden = inspection.golden
    return InspectionRecord(
        serial=meta.serial, line=meta.line, station=meta.station, product=meta.product,
        tags=list(meta.tags),
        image_sha256=hashlib.sha256(data).hexdigest(), image_bytes=len(data),
        width=result.width, height=result.height, image_path=image_path,
        model_name=inferencer.card.name, model_version=inferencer.card.version,
        model_mode=inferencer.mode, weights_sha256=inferencer.weights_sha256,
        rules=RecordedRules(**config.model_dump(exclude={"merge_distance_px"})),
        verdict=result.summary.verdict,
        defects=list(result.defects),
        reference=None if golden is None else GoldenBoardRef(
            source=golden.source, product=golden.product, sha256=golden.sha256,
            alignment=None if result.alignment is None else result.alignment.as_dict(),
        ),
        recipe=recipe_ref(inspection), units=unit_records(inspection),
        ignored=ignored_records(inspection),
    )


#: Seconds a client waits before retrying a board that could not be recorded: the recorder
#: checks every few seconds whether records can be written again.
RETRY_AFTER_S = 5


def records_unavailable() -> RecordsUnavailableError:
    """The error of a board whose record neither the database nor the spool could take."""
    return RecordsUnavailableError(
        "The board was inspected but its record could not be written: neither the records "
        "database nor the local spool (PCB_DATA_DIR/spool) takes records now. Nothing was "
        f"recorded; send the board again after {RETRY_AFTER_S} s, or to another replica.",
        retry_after_s=RETRY_AFTER_S,
    )


class RecordingHook:
    """Keeps the board's image by policy and records the board; returns the inspection with
    its ``record_id``.

    Args:
        recorder: Where records go (database, else spool).
        images: The kept images (``PCB_IMAGES_KEEP``).
        golden: The golden boards, whose compared version is kept beside a kept board.
    """

    def __init__(self, recorder: Recorder, images: ImageStore, golden: GoldenStore) -> None:
        self.recorder = recorder
        self.images = images
        self.golden = golden

    async def __call__(self, inspection: InspectedBoard) -> InspectedBoard:
        # A commit or an fsync: off the event loop, and awaited, so the record is durable
        # before the answer that carries its id.
        record_id = await asyncio.to_thread(self.record, inspection)
        if record_id is None:
            raise records_unavailable()
        return dataclasses.replace(inspection, record_id=record_id)

    def record(self, inspection: InspectedBoard) -> str | None:
        """Records ``inspection`` (blocking); its id, or ``None`` when neither the database
        nor the spool took it. A record that cannot be built is a bug, and raises."""
        try:
            record = build_record(inspection, self._keep(inspection))
        except Exception:
            RECORDS.labels(sink="lost").inc()
            raise
        stored = self.recorder.record(record)
        RECORDS.labels(sink=stored.stored).inc()
        if stored.stored == "spool":
            RECORDS_SPOOLED.inc()
        return None if stored.stored == "lost" else stored.inspection_id

    def _keep(self, inspection: InspectedBoard) -> str | None:
        """Keeps the image if the policy says so (and the golden board it was compared with,
        for the training export); its path, or ``None``. A full disk loses the image, not the
        record."""
        verdict = inspection.result.summary.verdict
        if not self.images.should_keep(verdict):
            return None
        try:
            kept = self.images.put(inspection.upload.data)
            self._keep_golden(inspection)
        except OSError as exc:
            logger.error("board image not kept (%s): recording the board without it", exc)
            return None
        return kept.path

    def _keep_golden(self, inspection: InspectedBoard) -> None:
        golden = inspection.golden
        if golden is None:
            return
        if golden.data is not None:
            self.images.put(golden.data)
            return
        if golden.product is None:
            return
        try:
            board, png = self.golden.png(golden.product)
        except (GoldenStoreError, UnknownProductError) as exc:
            logger.warning("golden board of %r not kept with its board: %s",
                           golden.product, exc)
            return
        # Only the version the board was compared with: it may have been replaced meanwhile.
        if board.sha256 == golden.sha256:
            self.images.put(png)
