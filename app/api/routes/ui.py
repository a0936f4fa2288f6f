"""The operator's inspection page and its assets, all served by the app (no CDN).

Line stations often have no internet, so every byte the page needs comes from here: the HTML,
one script, one stylesheet, and the class palette as JSON. The palette is generated from
:data:`app.inference.render.CLASS_COLORS_BGR`, so the page and ``render=overlay`` draw each
class in the same colour by construction.

The assets carry no secrets and need no API key (the page asks the operator for one and
sends it with its API calls).
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, JSONResponse, Response

from app.inference.render import CLASS_COLORS_BGR

STATIC_DIR = Path(__file__).resolve().parents[2] / "static"

router = APIRouter(tags=["ui"])

# Only same-origin scripts, styles and API calls: the page works offline and nothing injected
# into a defect label or error message could load code from elsewhere.
_PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # Revalidate on every load (cheap: ETag), so a station picks up a new page after an update.
    "Cache-Control": "no-cache",
}
_ASSET_HEADERS = {"X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"}

#: The static files served, by URL name: (file in app/static, media type).
_ASSETS: dict[str, str] = {
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}


@router.get("/", include_in_schema=False)
async def index() -> Response:
    """The inspection page."""
    return FileResponse(
        STATIC_DIR / "index.html", media_type="text/html; charset=utf-8", headers=_PAGE_HEADERS
    )


@router.get("/static/app.js", include_in_schema=False)
async def script() -> Response:
    """The page's script."""
    return _asset("app.js")


@router.get("/static/style.css", include_in_schema=False)
async def stylesheet() -> Response:
    """The page's stylesheet."""
    return _asset("style.css")


@router.get("/static/palette.json", include_in_schema=False)
async def palette() -> Response:
    """Class colours as ``#rrggbb`` in class-id order (id 1 first), as the overlay draws them."""
    colors = [f"#{r:02x}{g:02x}{b:02x}" for b, g, r in CLASS_COLORS_BGR]
    return JSONResponse({"colors": colors}, headers=_ASSET_HEADERS)


def _asset(name: str) -> Response:
    return FileResponse(STATIC_DIR / name, media_type=_ASSETS[name], headers=_ASSET_HEADERS)
