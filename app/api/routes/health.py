"""Health probes for orchestrators: liveness never touches the model, readiness does."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from app.api.deps import StateDep
from app.api.schemas import ErrorResponse, StatusOut
from app.core.errors import error_response

router = APIRouter(tags=["health"])


@router.get("/livez", summary="The process is up", response_model=StatusOut)
async def livez() -> StatusOut:
    """Answers as long as the event loop runs; independent of the model and of load."""
    return StatusOut(status="alive")


@router.get(
    "/readyz",
    summary="The model is loaded, warmed, and the service takes work",
    response_model=StatusOut,
    responses={503: {"model": ErrorResponse, "description": "Loading or shutting down."}},
)
async def readyz(state: StateDep) -> StatusOut | JSONResponse:
    """200 once the model is loaded and warmed; 503 with the reason before that or when draining."""
    if not state.ready:
        return error_response(503, "not_ready", state.not_ready_reason, {"Retry-After": "5"})
    return StatusOut(status="ready")
