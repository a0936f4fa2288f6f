"""The inspection records of the running service: opened at startup, recording every board,
and what the routes ask of them (queries, reviews, stats, export, deletion).

The store is synchronous (SQLAlchemy); every method here that touches it blocks, and the
routes call them through a thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from typing import Literal, ParamSpec, TypeVar

from alembic.util import CommandError
from anyio.to_thread import run_sync
from sqlalchemy import Engine
from sqlalchemy.exc import ArgumentError, DBAPIError, OperationalError

from app.core.config import Settings
from app.core.domain_errors import DomainError
from app.core.metrics import FALSE_CALL_RATE, RECORDS_SPOOLED, REVIEWS
from app.inference.card import ModelCardError, load_card
from app.records import (
    ImageStore,
    Inspection,
    InspectionFilter,
    Page,
    Recorder,
    RecordStore,
    Review,
    ReviewBody,
    SchemaError,
    Stats,
    check_schema,
    csv_lines,
    current_revision,
    default_url,
    display_url,
    head_revision,
    jsonl_lines,
    make_engine,
    upgrade,
)
from app.records.db import sqlite_path
from app.records.errors import UnknownInspectionError
from app.records.ids import INSPECTION_PREFIX, id_pattern
from app.records.outbox import Outbox
from app.records.reviews import check_review
from app.records.units import UnitReview, reviewed_units
from app.services.cfx_publisher import AmqpTarget, CfxPublisher
from app.services.errors import RecordsUnavailableError
from app.services.golden_store import GoldenStore
from app.services.inspection import InspectionService
from app.services.record_hook import RecordingHook
from app.services.state import ServiceState

logger = logging.getLogger("pcb_inspect.records")

P = ParamSpec("P")
T = TypeVar("T")

#: How often kept images are checked against the retention limits (s); the first check runs
#: at startup. Retention is in days and MiB: ten minutes late is nothing.
RETENTION_INTERVAL_S = 600.0
#: How often the spool gauge is refreshed and a degraded recorder retries the database (s).
SPOOL_INTERVAL_S = 5.0
#: The window of the pcb_false_call_rate gauge.
FALSE_CALL_WINDOW = dt.timedelta(days=7)

_MEDIA_TYPES = {
    ".png": "image/png", ".jpg": "image/jpeg", ".bmp": "image/bmp", ".tif": "image/tiff",
    ".webp": "image/webp", ".gif": "image/gif", ".bin": "application/octet-stream",
}


_INSPECTION_ID = id_pattern(INSPECTION_PREFIX)


def _known(inspection_id: str) -> str:
    # Anything that cannot be an id is unknown without asking the database (which, for
    # PostgreSQL, would refuse some strings with an error rather than find nothing).
    if not _INSPECTION_ID.fullmatch(inspection_id):
        raise UnknownInspectionError(inspection_id)
    return inspection_id


class RecordsStartupError(RuntimeError):
    """The records database cannot be used; the message is one line naming it."""


class ImageNotKeptError(DomainError, LookupError):
    """The inspection's image was not kept (policy) or has expired (retention)."""

    code = "image_not_kept"

    def __init__(self, inspection_id: str) -> None:
        super().__init__(f"The image of inspection {inspection_id!r} was not kept "
                         "(PCB_IMAGES_KEEP) or has expired (PCB_IMAGES_RETENTION_DAYS, _MB).")
        self.inspection_id = inspection_id


async def read_records(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Runs a blocking records call in a worker thread; a database that does not answer is
    :class:`RecordsUnavailableError` (the records' own errors are domain errors already)."""
    try:
        return await run_sync(lambda: fn(*args, **kwargs))
    except DBAPIError:
        # Inspections keep being recorded (to the spool); only reading waits for the database.
        raise RecordsUnavailableError(
            "The records database does not answer; inspections are still recorded (spooled). "
            "Retry shortly.", retry_after_s=5,
        ) from None


class RecordsService:
    """The records of one app: store, recorder (with its spool), kept images and the hook.

    Build it with :meth:`open`; :meth:`start` starts the spool replay, :meth:`close` stops.
    """

    def __init__(self, settings: Settings, golden: GoldenStore, store: RecordStore,
                 recorder: Recorder, images: ImageStore) -> None:
        self.settings = settings
        self.golden = golden
        self.store = store
        self.recorder = recorder
        self.images = images
        self.hook = RecordingHook(recorder, images, golden)
        #: The outbox's publisher with PCB_CFX_BROKER_URL set (started by :meth:`start`).
        self.cfx: CfxPublisher | None = None
        #: The classes a review may name: the served models' (set once they are loaded; from
        #: the model card until then).
        self.class_names: list[str] = _card_classes(settings)

    # --- life cycle --------------------------------------------------------------------------
    @classmethod
    def open(cls, settings: Settings, golden: GoldenStore) -> RecordsService:
        """Opens the records database and checks its schema (blocking).

        The embedded default (SQLite in ``PCB_DATA_DIR``) is migrated here, so a new install
        needs no step; any other database must be migrated with ``pcb-inspect db upgrade``,
        which an operator runs once for all replicas. A PostgreSQL that does not answer yet
        is not fatal: records go to the spool until it does.

        Raises:
            RecordsStartupError: The schema is not this version's, or SQLite cannot be opened.
        """
        url = settings.database_url or default_url(settings.data_dir)
        try:
            engine = make_engine(url)
        except (ValueError, ImportError, ArgumentError) as exc:
            # An unsupported URL, or PostgreSQL without its driver (the postgres extra).
            raise RecordsStartupError(f"invalid setting PCB_DATABASE_URL: {exc}") from None
        try:
            _check(engine, url, migrate=settings.database_url is None)
        except SchemaError as exc:
            engine.dispose()
            raise RecordsStartupError(str(exc)) from None
        except OSError as exc:
            engine.dispose()
            raise RecordsStartupError(
                f"records database {display_url(url)} cannot be created: {exc} "
                "(PCB_DATA_DIR)") from None
        except DBAPIError as exc:
            shown = display_url(url)
            if sqlite_path(url) is not None or not isinstance(exc, OperationalError):
                engine.dispose()
                raise RecordsStartupError(
                    f"records database {shown} cannot be opened: {_first_line(exc)} "
                    "(PCB_DATABASE_URL, PCB_DATA_DIR)") from None
            logger.warning("records database %s does not answer (%s): recording to the local "
                           "spool until it does; its schema is checked then by the replay",
                           shown, _first_line(exc))
        store = RecordStore(engine, cfx_source=settings.cfx.handle if settings.cfx_enabled
                            else None)
        recorder = Recorder(store, settings.data_dir / "spool")
        images = ImageStore(
            settings.data_dir / "images", settings.images.keep,
            max_age_days=settings.images.retention_days or None,
            max_total_mb=settings.images.retention_mb or None,
        )
        service = cls(settings, golden, store, recorder, images)
        if settings.cfx_enabled:
            try:
                target = AmqpTarget.from_settings(settings)
            except ValueError as exc:
                engine.dispose()
                raise RecordsStartupError(str(exc)) from None
            service.cfx = CfxPublisher(Outbox(engine), target)
        return service

    def start(self) -> None:
        """Starts replaying the spool in the background (at once, then every few seconds),
        and publishing the CFX outbox when a broker is configured."""
        self.recorder.start(SPOOL_INTERVAL_S)
        if self.cfx is not None:
            self.cfx.start()

    async def maintain(self) -> None:
        """Runs until cancelled: the spool gauge, image retention, the false-call gauge."""
        next_retention = 0.0
        loop = asyncio.get_running_loop()
        with contextlib.suppress(Exception):
            await asyncio.to_thread(self.update_false_call_rate)
        while True:
            try:
                RECORDS_SPOOLED.set(await asyncio.to_thread(self.recorder.pending))
                if loop.time() >= next_retention:
                    next_retention = loop.time() + RETENTION_INTERVAL_S
                    await asyncio.to_thread(self.images.enforce_retention, self.store)
            except Exception:  # the loop outlives a bad moment of the disk or the database
                logger.exception("records maintenance failed; trying again")
            await asyncio.sleep(SPOOL_INTERVAL_S)

    def close(self) -> None:
        """Stops the replay and closes the database's connections. Records still spooled
        stay in the spool, which the next start replays first."""
        if self.cfx is not None:
            self.cfx.close()
        self.recorder.close()
        self.store.engine.dispose()

    # --- queries -----------------------------------------------------------------------------
    def page(self, filters: InspectionFilter, limit: int, cursor: str | None) -> Page:
        return self.store.query(filters, limit=limit, cursor=cursor)

    def detail(self, inspection_id: str) -> tuple[Inspection, list[Review]]:
        """The inspection and its review history (oldest first)."""
        _known(inspection_id)
        return self.store.get(inspection_id), self.store.reviews(inspection_id)

    def image(self, inspection_id: str) -> tuple[bytes, str]:
        """The kept image's bytes and media type.

        Raises:
            UnknownInspectionError, ImageNotKeptError.
        """
        path = self.store.get(_known(inspection_id)).image_path
        if path is None:
            raise ImageNotKeptError(inspection_id)
        try:
            return self.images.path_of(path).read_bytes(), _MEDIA_TYPES.get(
                Path(path).suffix, "application/octet-stream")
        except (FileNotFoundError, ValueError):
            raise ImageNotKeptError(inspection_id) from None

    def export(self, filters: InspectionFilter, fmt: Literal["csv", "jsonl"]) -> Iterator[str]:
        """The matching inspections as CSV or JSON lines, newest first, read page by page."""
        items = self.store.iter_export(filters)
        return csv_lines(items, self.store.reviews_by_id) if fmt == "csv" else jsonl_lines(items)

    def stats(self, since: dt.datetime, until: dt.datetime | None,
              bucket: Literal["hour", "day"]) -> Stats:
        return self.store.stats(since, until=until, bucket=bucket,
                                class_names=self.class_names)

    # --- changes -----------------------------------------------------------------------------
    def review(self, inspection_id: str, reviewer: str, body: ReviewBody) -> tuple[Review, bool]:
        """Records a review (see :meth:`RecordStore.add_review`); a new one moves the metrics.

        Raises:
            UnknownInspectionError, ReviewValidationError (its subclasses).
        """
        review, created = self.store.add_review(_known(inspection_id), reviewer, body,
                                                class_names=self.class_names)
        if created:
            called = {d.id: d.class_ for d in self.store.get(inspection_id).defects}
            for o in body.defects:
                REVIEWS.labels(outcome=o.outcome, **{"class": called[o.defect_id]}).inc()
            for m in body.missed:
                REVIEWS.labels(outcome="missed", **{"class": m.class_}).inc()
            self.update_false_call_rate()
        return review, created

    def review_by_unit(self, inspection_id: str, reviewer: str,
                       body: ReviewBody) -> tuple[Review, bool, UnitReview]:
        """:meth:`review`, and the stored review board by board."""
        review, created = self.review(inspection_id, reviewer, body)
        return review, created, reviewed_units(self.store.get(inspection_id), review.body)

    def detail_by_unit(
        self, inspection_id: str,
    ) -> tuple[Inspection, list[tuple[Review, UnitReview]]]:
        """:meth:`detail`, each review with its verdicts board by board (the last is the
        current one)."""
        inspection, reviews = self.detail(inspection_id)
        return inspection, [(r, reviewed_units(inspection, r.body)) for r in reviews]

    def preview(self, inspection_id: str, body: ReviewBody) -> UnitReview:
        """What the review would give, board by board, without recording it (the review page
        shows each board's verdict as the operator works). Refused as :meth:`review` refuses.

        Raises:
            UnknownInspectionError, ReviewValidationError (its subclasses).
        """
        inspection = self.store.get(_known(inspection_id))
        check_review(body, inspection.id, {d.id: d.class_ for d in inspection.defects},
                     inspection.width, inspection.height, self.class_names)
        return reviewed_units(inspection, body)

    def delete(self, inspection_id: str) -> None:
        """Deletes the inspection, its reviews, and its kept image unless another record (of
        the same bytes) still names it."""
        path = self.store.delete(_known(inspection_id))
        if path is not None and not self.store.image_path_in_use(path):
            with contextlib.suppress(ValueError):
                self.images.remove(path)
        self.update_false_call_rate()

    def update_false_call_rate(self) -> None:
        """Sets ``pcb_false_call_rate{class}`` from the last 7 days' current reviews."""
        stats = self.store.stats(dt.datetime.now(dt.UTC) - FALSE_CALL_WINDOW, bucket="day",
                                 class_names=self.class_names)
        FALSE_CALL_RATE.clear()
        for c in stats.classes:
            if c.false_call_rate is not None:
                FALSE_CALL_RATE.labels(**{"class": c.class_}).set(c.false_call_rate)

    def use_classes(self, *class_lists: Sequence[str]) -> None:
        """The classes reviews may name: those of the models now served, in order."""
        self.class_names = list(dict.fromkeys(c for classes in class_lists for c in classes))


@contextlib.asynccontextmanager
async def running_records(
    state: ServiceState, inspections: InspectionService
) -> AsyncIterator[RecordsService | None]:
    """The records for the life of the app (``None`` with ``PCB_RECORDS=false``): opened,
    hooked into every inspection, maintained in the background, closed at the end.

    Raises:
        RecordsStartupError: As :meth:`RecordsService.open`, after setting the state's
            ``startup_error`` (the one line ``pcb-inspect serve`` prints).
    """
    if not state.settings.records:
        if state.settings.cfx_enabled:
            logger.warning("PCB_CFX_BROKER_URL is set but PCB_RECORDS=false: CFX messages are "
                           "written with the records, so none will be published")
        yield None
        return
    try:
        records = await asyncio.to_thread(RecordsService.open, state.settings, state.golden)
    except RecordsStartupError as exc:
        state.startup_error = str(exc)
        state.not_ready_reason = f"records database unusable: {exc}"
        logger.error("startup failed: %s", exc)
        raise
    records.start()
    inspections.on_result.append(records.hook)
    task = asyncio.create_task(records.maintain(), name="pcb-records-maintenance")
    try:
        yield records
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        inspections.on_result.remove(records.hook)
        await asyncio.to_thread(records.close)


def _check(engine: Engine, url: str, *, migrate: bool) -> None:
    # Alembic announces each of its plugins at INFO on every start: noise in the service log.
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
    path = sqlite_path(url)
    if migrate and path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)  # a fresh PCB_DATA_DIR
    if migrate and current_revision(engine) != head_revision():
        try:
            upgrade(url)
        except CommandError:
            # A revision this version does not know (a newer pcb-inspect migrated the file):
            # check_schema says so, in its own words.
            pass
    check_schema(engine)


def _card_classes(settings: Settings) -> list[str]:
    try:
        return list(load_card(settings.model_card_path).classes) if settings.model_card_path \
            else []
    except (ModelCardError, OSError):
        return []


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
