"""Builds the FastAPI app: the lifespan that owns the model, middleware and routers.

Importing this module is cheap: TensorFlow and the model load in the lifespan, not here.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI

from app.api.routes import health, metrics, model, predict, ui
from app.core.config import Settings, get_settings
from app.core.errors import install_error_handlers
from app.core.metrics import MODEL_INFO
from app.core.middleware import BodyLimitMiddleware, RequestContextMiddleware
from app.core.state import ServiceState
from app.inference.batcher import DynamicBatcher
from app.inference.inferencer import Inferencer, ModelLoadError

logger = logging.getLogger("pcb_inspect")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Loads and warms the model, starts the batcher; on shutdown drains and stops them."""
    state: ServiceState = app.state.service
    settings = state.settings
    state.not_ready_reason = "loading model"
    try:
        inferencer = await asyncio.to_thread(Inferencer.from_settings, settings)
    except ModelLoadError as exc:
        state.not_ready_reason = f"model failed to load: {exc}"
        logger.error("startup failed: %s", exc)
        raise
    if settings.warmup:
        state.not_ready_reason = "warming up"
        seconds = await asyncio.to_thread(inferencer.warm_up)
        logger.info("model warmed up in %.2f s", seconds)
    batcher = DynamicBatcher(
        inferencer.forward,
        max_batch_size=settings.max_batch_size,
        max_wait_s=settings.max_wait_ms / 1e3,
        max_queue=max(settings.max_queue_tiles, settings.max_batch_size),
    )
    batcher.start()
    MODEL_INFO.info(
        {
            "name": inferencer.card.name,
            "version": inferencer.card.version,
            "weights_sha256": inferencer.weights_sha256,
            "device": inferencer.device,
            "precision": inferencer.precision,
        }
    )
    if not settings.auth_enabled and not _is_loopback(settings.host):
        logger.warning(
            "AUTH IS OFF and the service listens on %s: anyone who reaches this address can "
            "use it. Set PCB_API_KEYS to require a key.",
            settings.host,
        )
    state.inferencer, state.batcher = inferencer, batcher
    state.idle.set()
    logger.info(
        "ready: model %s %s on %s (%s)",
        inferencer.card.name, inferencer.card.version, inferencer.device, inferencer.precision,
    )
    try:
        yield
    finally:
        state.begin_drain()
        if state.in_flight:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(state.idle.wait(), settings.shutdown_grace_s)
        await batcher.close()
        state.batcher = None
        logger.info("stopped")


def create_app(settings: Settings | None = None) -> FastAPI:
    """Builds the app for ``settings`` (default: from the environment)."""
    settings = settings or get_settings()
    app = FastAPI(
        title="pcb-inspect",
        version="0.1.0",
        summary="Finds defects on printed circuit boards: masks, boxes, areas and a verdict.",
        lifespan=lifespan,
    )
    app.state.service = ServiceState(settings)
    install_error_handlers(app)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(RequestContextMiddleware)
    for router in (health.router, metrics.router, model.router, predict.router, ui.router):
        app.include_router(router)
    return app


app = create_app()
