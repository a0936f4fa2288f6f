"""Prometheus scrape endpoint."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.api.deps import SettingsDep, require_api_key
from app.core.errors import ApiError

router = APIRouter(tags=["observability"])


def _served_here(settings: SettingsDep) -> None:
    # With a port of its own the API's port keeps nothing of it: one place to protect.
    if settings.metrics.port is not None:
        raise ApiError(
            404, "not_found",
            f"The metrics are served on their own port {settings.metrics.port} "
            "(PCB_METRICS_PORT), not here.",
        )


@router.get(
    "/metrics", summary="Prometheus metrics", response_class=Response,
    dependencies=[Depends(_served_here), Depends(require_api_key)],
)
async def metrics() -> Response:
    """The metrics in Prometheus' text format. With auth on, they need a key (any role): they
    tell verdict counts and false-call rates. With ``PCB_METRICS_PORT`` set they are served
    there, without a key, and this route answers 404."""
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
