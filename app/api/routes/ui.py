"""The operator's inspection page and its assets, all served by the app (no CDN)."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, Response

STATIC_DIR = Path(__file__).resolve().parents[2] / "static"

router = APIRouter(tags=["ui"])


@router.get("/", include_in_schema=False)
async def index() -> Response:
    """The inspection page."""
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html")
