"""Typed dependencies of the routes."""

from __future__ import annotations

import dataclasses
import hmac
from typing import Annotated

from fastapi import Depends, Request

from app.core.config import ROLES, Role, Settings
from app.core.errors import ApiError
from app.services.golden_store import GoldenStore
from app.services.inspection import InspectionService
from app.services.records_service import RecordsService
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


def get_records(request: Request) -> RecordsService:
    """The inspection records, or 404 ``records_disabled`` with ``PCB_RECORDS=false``."""
    records: RecordsService | None = request.app.state.records
    if records is None:
        raise ApiError(
            404, "records_disabled",
            "Inspection records are switched off on this service (PCB_RECORDS=false); "
            "set PCB_RECORDS=true to record inspections and review them.",
        )
    return records


RecordsDep = Annotated[RecordsService, Depends(get_records)]


def get_records_if_on(request: Request) -> RecordsService | None:
    """The inspection records, or ``None`` with ``PCB_RECORDS=false`` (for the probes)."""
    records: RecordsService | None = request.app.state.records
    return records


MaybeRecordsDep = Annotated[RecordsService | None, Depends(get_records_if_on)]


def _presented_key(request: Request) -> str | None:
    auth = request.headers.get("authorization", "")
    scheme, _, token = auth.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return request.headers.get("x-api-key")


@dataclasses.dataclass(frozen=True)
class Principal:
    """Who sent the request: the name and role of its API key (the name, never the key, is
    what reviews record). With auth off: ``anonymous``, allowed everything."""

    name: str
    role: Role

    def may(self, role: Role) -> bool:
        """Whether this principal has ``role`` or a role above it."""
        return ROLES.index(self.role) >= ROLES.index(role)


ANONYMOUS = Principal("anonymous", "admin")


def get_principal(request: Request, settings: SettingsDep) -> Principal:
    """The key's holder when auth is on (``PCB_API_KEYS`` set); 401 without a valid key.

    Every configured key is compared in constant time, and all of them every time, so timing
    reveals neither which key nor how much of it matched.
    """
    if not settings.auth_enabled:
        return ANONYMOUS
    presented = _presented_key(request)
    found: Principal | None = None
    if presented is not None:
        given = presented.encode()
        entries = settings.api_keys
        # Every key compared before any is chosen, so the time does not depend on which one.
        matches = [hmac.compare_digest(given, e.key.encode()) for e in entries]
        found = next((Principal(e.name, e.role) for e, m in zip(entries, matches, strict=True)
                      if m), None)
    if found is None:
        raise ApiError(
            401,
            "unauthorized",
            "A valid API key is required: send 'Authorization: Bearer <key>' or 'X-API-Key'.",
            {"WWW-Authenticate": "Bearer"},
            reject_reason="unauthorized",
        )
    return found


PrincipalDep = Annotated[Principal, Depends(get_principal)]


class RequireRole:
    """A dependency: the request's principal, or 403 ``forbidden`` when its key's role is
    below ``role``."""

    def __init__(self, role: Role) -> None:
        self.role = role

    def __call__(self, principal: PrincipalDep) -> Principal:
        if not principal.may(self.role):
            raise ApiError(
                403, "forbidden",
                f"The API key {principal.name!r} has role {principal.role!r}; this needs role "
                f"{self.role!r} or above (roles: {', '.join(ROLES)}; set in PCB_API_KEYS).",
                reject_reason="forbidden",
            )
        return principal


InspectorDep = Annotated[Principal, Depends(RequireRole("inspect"))]
ReviewerDep = Annotated[Principal, Depends(RequireRole("review"))]
AdminDep = Annotated[Principal, Depends(RequireRole("admin"))]


def require_api_key(principal: InspectorDep) -> None:
    """Any valid key (the ``inspect`` role or above); 401 otherwise."""


AuthDep = Depends(require_api_key)
#: For a router or route's ``dependencies``: the ``review`` or ``admin`` role.
ReviewAuth = Depends(RequireRole("review"))
AdminAuth = Depends(RequireRole("admin"))
