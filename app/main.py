"""Builds the FastAPI app: the lifespan that owns the models, middleware and routers.

Importing this module is cheap: TensorFlow and the model load in the lifespan, not here.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI
from starlette.routing import NoMatchFound

from app.api.routes import (
    cfx,
    docs,
    golden,
    health,
    inspections,
    metrics,
    model,
    predict,
    products,
    stats,
    ui,
)
from app.core.config import Settings, get_settings
from app.core.errors import install_error_handlers
from app.core.hosts import AllowedHostsMiddleware
from app.core.metrics import MODEL_INFO, PAIR_MODEL_INFO
from app.core.middleware import BodyLimitMiddleware, RequestContextMiddleware
from app.core.network import is_loopback
from app.inference.batcher import DynamicBatcher
from app.inference.inferencer import Inferencer
from app.inference.loading import ModelLoadError, check_weights_file
from app.services.inspection import InspectionService
from app.services.records_service import running_records
from app.services.state import ServiceState

logger = logging.getLogger("pcb_inspect")


def load_pair_model(settings: Settings) -> tuple[Inferencer | None, str]:
    """Loads the golden-board (pair) model, if one is configured.

    Returns:
        ``(inferencer, "")``, or ``(None, why there is none)`` when it is switched off
        (``PCB_PAIR_WEIGHTS_PATH=""``) or the default file is absent (a warning: the service
        then inspects boards alone).

    Raises:
        ModelLoadError: A configured file is missing or broken, or its card does not fit.
    """
    path = settings.pair_weights
    if path is None:
        return None, "it is switched off (PCB_PAIR_WEIGHTS_PATH is empty)"
    if settings.pair_weights_is_default and not path.exists():
        logger.warning(
            "no golden-board model at %s (the default PCB_PAIR_WEIGHTS_PATH): serving "
            "single-image inspection only; requests with a golden board get 503", path,
        )
        return None, f"its weights file {path} does not exist"
    try:
        # The weights first: a missing file should be named as such, not as a missing card.
        check_weights_file(path)
        pair = Inferencer.load(
            path,
            settings.pair_model_card_path,
            device=settings.device,
            precision=settings.precision,
        )
        pair.max_batch_size = settings.batching.resolve(pair.device).batch_size
    except ModelLoadError as exc:
        raise ModelLoadError(f"golden-board model (PCB_PAIR_WEIGHTS_PATH): {exc}") from None
    if pair.mode != "pair":
        raise ModelLoadError(
            f"golden-board model (PCB_PAIR_WEIGHTS_PATH): weights file {path} is a "
            f"{pair.mode} model with one input; expected a pair model (inputs image and "
            "reference)"
        )
    return pair, ""


def _batcher(inferencer: Inferencer, settings: Settings) -> DynamicBatcher:
    return DynamicBatcher(
        inferencer.forward,
        max_batch_size=inferencer.max_batch_size,
        max_wait_s=settings.batching.max_wait_ms / 1e3,
        max_queue=max(settings.batching.max_queue_tiles, inferencer.max_batch_size),
        concurrency=settings.batching.resolve(inferencer.device).concurrency,
    )


def _model_labels(inferencer: Inferencer, batcher: DynamicBatcher) -> dict[str, str]:
    return {
        "name": inferencer.card.name,
        "version": inferencer.card.version,
        "weights_sha256": inferencer.weights_sha256,
        "device": inferencer.device,
        "precision": inferencer.precision,
        "precision_requested": inferencer.precision_requested,
        "max_batch_size": str(inferencer.max_batch_size),
        "model_concurrency": str(batcher.concurrency),
    }


async def _load_models(state: ServiceState) -> tuple[Inferencer, Inferencer | None, str]:
    """Loads and warms the models: ``(single, pair or None, why there is no pair)``."""
    settings = state.settings
    state.not_ready_reason = "loading model"
    inferencer = await asyncio.to_thread(Inferencer.from_settings, settings)
    state.not_ready_reason = "loading the golden-board model"
    pair, why_no_pair = await asyncio.to_thread(load_pair_model, settings)
    models = [m for m in (inferencer, pair) if m is not None]
    if settings.warmup:
        state.not_ready_reason = "warming up"
        for model in models:
            seconds = await asyncio.to_thread(model.warm_up)
            logger.info("%s model warmed up in %.2f s", model.mode, seconds)
            cap = settings.batching.resolve(model.device).calibrate_up_to
            if cap > 1:
                per_tile = await asyncio.to_thread(model.calibrate_batch_size, cap)
                logger.info(
                    "%s model: batch size %d (PCB_BATCHING_MAX_SIZE=auto; s per tile: %s)",
                    model.mode, model.max_batch_size,
                    ", ".join(f"{n}: {t:.3f}" for n, t in per_tile.items()),
                )
    return inferencer, pair, why_no_pair


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Opens the inspection records, then serves the models; stops in the reverse order, so
    that the boards still in flight at shutdown are recorded."""
    state: ServiceState = app.state.service
    async with running_records(state, app.state.inspections) as records:
        app.state.records = records
        try:
            async with serve_models(app):
                if records is not None:
                    records.use_classes(*(m.inferencer.card.classes
                                          for m in (state.model, state.pair_model) if m))
                yield
        finally:
            app.state.records = None


def build_routes(app: FastAPI) -> None:
    """Builds every route's request handling state now, before the server takes requests.

    FastAPI builds a router's routes (their pydantic models and validators) on the first
    request that reaches that router: tens of milliseconds of schema generation on the event
    loop, stalling every other request, ``/livez`` included, the first time a client reviews
    or lists inspections. Looking up a name that no route has walks every route, and so builds
    them all here, where nothing waits on the loop (and before ``gc.freeze`` keeps them out of
    the collector).
    """
    with contextlib.suppress(NoMatchFound):
        app.url_path_for("no route has this name: builds them all")


@contextlib.asynccontextmanager
async def serve_models(app: FastAPI) -> AsyncIterator[None]:
    """Loads and warms the models, starts their batchers; on shutdown drains and stops them."""
    state: ServiceState = app.state.service
    settings = state.settings
    try:
        inferencer, pair, why_no_pair = await _load_models(state)
    except ModelLoadError as exc:
        # Its message names the file and what is wrong: one line, no traceback.
        state.not_ready_reason = f"model failed to load: {exc}"
        state.startup_error = str(exc)
        logger.error("startup failed: %s", exc)
        raise
    except Exception as exc:
        # Not a known bad file: the traceback goes to the log too, for whoever fixes it.
        state.startup_error = f"{type(exc).__name__} while {state.not_ready_reason}: {exc}"
        state.not_ready_reason = f"model failed to load: {exc}"
        logger.exception("startup failed: %s", state.startup_error)
        raise
    # One batcher (and queue) per model: a pair model's tiles carry two channels and run
    # through another graph, so they cannot join the single model's batches.
    batcher = _batcher(inferencer, settings)
    batcher.start()
    pair_batcher = None
    if pair is not None:
        pair_batcher = _batcher(pair, settings)
        pair_batcher.start()
        PAIR_MODEL_INFO.info(_model_labels(pair, pair_batcher))
    MODEL_INFO.info(_model_labels(inferencer, batcher))
    # Temporary files of golden-board and recipe writes killed mid-way (this or another
    # replica).
    with contextlib.suppress(OSError):
        await asyncio.to_thread(state.golden.sweep_partials)
        await asyncio.to_thread(state.recipes.sweep_partials)
    if not settings.auth_enabled and not is_loopback(settings.host):
        logger.warning(
            "AUTH IS OFF (PCB_AUTH=off) and the service listens on %s: anyone who reaches "
            "this address can use it. Set PCB_API_KEYS to require a key.",
            settings.host,
        )
    state.inferencer, state.batcher = inferencer, batcher
    state.pair_inferencer, state.pair_batcher = pair, pair_batcher
    state.pair_unavailable_reason = why_no_pair
    build_routes(app)
    # TensorFlow and the models leave hundreds of thousands of long-lived objects that every
    # full collection walks with the GIL held: a stall of every request (/livez included)
    # whenever a large JSON body tips the collector. Frozen, they are skipped from now on.
    gc.collect()
    gc.freeze()
    state.idle.set()
    logger.info(
        "ready: model %s %s on %s (%s)%s",
        inferencer.card.name, inferencer.card.version, inferencer.device, inferencer.precision,
        f"; golden-board model {pair.card.name} {pair.card.version}" if pair else
        f"; no golden-board model ({why_no_pair})",
    )
    try:
        yield
    finally:
        state.begin_drain()
        if state.in_flight:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(state.idle.wait(), state.drain_remaining())
        await batcher.close()
        if pair_batcher is not None:
            await pair_batcher.close()
        state.batcher = state.pair_batcher = None
        logger.info("stopped")


def create_app(settings: Settings | None = None) -> FastAPI:
    """Builds the app for ``settings`` (default: from the environment)."""
    settings = settings or get_settings()
    app = FastAPI(
        title="pcb-inspect",
        version="0.1.0",
        summary="Finds defects on printed circuit boards: masks, boxes, areas and a verdict.",
        lifespan=lifespan,
        # Served by app.api.routes.docs from local copies (FastAPI's own pages use a CDN).
        docs_url=None,
        redoc_url=None,
    )
    state = ServiceState(settings)
    app.state.service = state
    # Its ``on_result`` hooks see every finished inspection (the records add theirs).
    app.state.inspections = InspectionService(state)
    #: The ``RecordsService`` while the lifespan runs with PCB_RECORDS on; else ``None``.
    app.state.records = None
    install_error_handlers(app)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.limits.max_body_bytes)
    if settings.allowed_hosts:
        # Inside the request context, so a refused Host is logged and counted like any 400.
        app.add_middleware(AllowedHostsMiddleware, allowed_hosts=settings.allowed_hosts)
    app.add_middleware(RequestContextMiddleware)
    for router in (
        health.router, metrics.router, model.router, predict.router, golden.router,
        products.router, inspections.router, stats.router, ui.router, docs.router, cfx.router,
    ):
        app.include_router(router)
    return app


# No module-level app: nothing is built from the environment at import time. `pcb-inspect
# serve` builds the app from its Settings; to run uvicorn by hand, use the factory:
#   uvicorn --factory app.main:create_app
