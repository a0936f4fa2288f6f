"""Typed dependencies of the routes."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request

from app.core.config import Settings
from app.core.errors import ApiError
from app.services.golden_store import GoldenStore
from app.services.inspection import InspectionService
from app.services.state import ServedModel, ServiceState


def get_state(request: Request) -> ServiceState:
    """The service state of the app serving ``request``."""
    state: ServiceState = request.app.state.service
    return state


StateDep = Annotated[ServiceState, Depends(get_state)]


def get_settings_dep(state: StateDep) -> Settings:
    """The app's settings."""
    return state.settings


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]


def get_ready_model(state: StateDep) -> ServedModel:
    """The single-image model and its batcher, or 503 while loading or shutting down."""
    if state.draining:
        raise ApiError(
            503, "shutting_down", "The service is shutting down; send this board to another "
            "replica or retry shortly.", {"Retry-After": "5"}, reject_reason="shutting_down",
        )
    model = state.model
    if model is None:
        raise ApiError(
            503, "not_ready", f"The service is not ready: {state.not_ready_reason}.",
            {"Retry-After": "5"}, reject_reason="not_ready",
        )
    return model


ModelDep = Annotated[ServedModel, Depends(get_ready_model)]


def get_inspections(request: Request) -> InspectionService:
    """The inspection service of the app serving ``request``."""
    service: InspectionService = request.app.state.inspections
    return service


InspectionsDep = Annotated[InspectionService, Depends(get_inspections)]


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
