"""Health probes for orchestrators: liveness never touches the model, readiness does."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from app.api.deps import MaybeRecordsDep, StateDep
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
    responses={503: {"model": ErrorResponse,
                     "description": "Loading, shutting down, or records cannot be written."}},
)
async def readyz(state: StateDep, records: MaybeRecordsDep) -> StatusOut | JSONResponse:
    """200 once the model is loaded and warmed; 503 with the reason before that, when
    draining, or while no inspection can be recorded (every 200 has its record)."""
    if not state.ready:
        return error_response(503, "not_ready", state.not_ready_reason, {"Retry-After": "5"})
    if records is not None and not records.recorder.writable:
        return error_response(
            503, "not_ready",
            "inspections cannot be recorded: neither the records database nor the spool "
            "(PCB_DATA_DIR/spool) takes a record", {"Retry-After": "5"})
    return StatusOut(status="ready")
