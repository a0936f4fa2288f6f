"""Typed dependencies of the routes."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request

from app.core.config import Settings
from app.core.errors import ApiError
from app.core.state import ServiceState
from app.inference.batcher import DynamicBatcher
from app.inference.inferencer import Inferencer
from app.services.golden_store import GoldenStore


def get_state(request: Request) -> ServiceState:
    """The service state of the app serving ``request``."""
    state: ServiceState = request.app.state.service
    return state


StateDep = Annotated[ServiceState, Depends(get_state)]


def get_settings_dep(state: StateDep) -> Settings:
    """The app's settings."""
    return state.settings


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]


def get_ready_model(state: StateDep) -> tuple[Inferencer, DynamicBatcher]:
    """The inferencer and batcher, or 503 while loading or shutting down."""
    if state.draining:
        raise ApiError(
            503, "shutting_down", "The service is shutting down; send this board to another "
            "replica or retry shortly.", {"Retry-After": "5"}, reject_reason="shutting_down",
        )
    if state.inferencer is None or state.batcher is None:
        raise ApiError(
            503, "not_ready", f"The service is not ready: {state.not_ready_reason}.",
            {"Retry-After": "5"}, reject_reason="not_ready",
        )
    return state.inferencer, state.batcher


ModelDep = Annotated[tuple[Inferencer, DynamicBatcher], Depends(get_ready_model)]


def pair_model(state: ServiceState) -> tuple[Inferencer, DynamicBatcher]:
    """The golden-board (pair) model and its batcher, or 503 ``pair_model_unavailable``.

    Called only once a request has asked for a reference, so the many requests without
    one never depend on the pair model.
    """
    if state.pair_inferencer is None or state.pair_batcher is None:
        raise ApiError(
            503, "pair_model_unavailable",
            "This request has a reference board (the 'template' field or ?product=), but the "
            f"service has no golden-board model: {state.pair_unavailable_reason}. Send the "
            "board alone for a single-image inspection, or install the pair model "
            "(PCB_PAIR_WEIGHTS_PATH).",
        )
    return state.pair_inferencer, state.pair_batcher


def get_golden_store(state: StateDep) -> GoldenStore:
    """The golden-board store."""
    return state.golden


StoreDep = Annotated[GoldenStore, Depends(get_golden_store)]


def _presented_key(request: Request) -> str | None:
    auth = request.headers.get("authorization", "")
    scheme, _, token = auth.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return request.headers.get("x-api-key")


def require_api_key(request: Request, settings: SettingsDep) -> None:
    """Checks the API key when auth is on (``PCB_API_KEYS`` set); 401 otherwise.

    Every configured key is compared in constant time, so timing reveals neither which key
    nor how much of it matched.
    """
    if not settings.auth_enabled:
        return
    presented = _presented_key(request)
    valid = False
    if presented is not None:
        given = presented.encode()
        for key in settings.api_keys:
            valid |= hmac.compare_digest(given, key.encode())
    if not valid:
        raise ApiError(
            401,
            "unauthorized",
            "A valid API key is required: send 'Authorization: Bearer <key>' or 'X-API-Key'.",
            {"WWW-Authenticate": "Bearer"},
            reject_reason="unauthorized",
        )


AuthDep = Depends(require_api_key)
