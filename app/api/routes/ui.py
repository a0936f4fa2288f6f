"""The operator's pages and their assets, all served by the app (no CDN).

Two pages: the inspection page at ``/`` and the review page at ``/review`` (the review queue
and the dashboard). Line stations often have no internet, so every byte a page needs comes from
here: its HTML, its own script, the script both pages share (``common.js``, loaded first), the
shared stylesheet, and the class palette as JSON. The palette is generated from
:data:`app.inference.render.CLASS_COLORS_BGR`, so the pages and ``render=overlay`` draw each
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

#: The pages, by path: the file in app/static that is served there.
_PAGES: dict[str, str] = {
    "/": "index.html",  # the inspection page
    "/review": "review.html",  # the review queue and the dashboard
}

#: The static files served under /static/, by URL name: (file in app/static, media type).
_ASSETS: dict[str, str] = {
    "common.js": "text/javascript; charset=utf-8",  # what both pages share, loaded first
    "app.js": "text/javascript; charset=utf-8",  # the inspection page's script
    "review.js": "text/javascript; charset=utf-8",  # the review page's script
    "style.css": "text/css; charset=utf-8",
}


def _file_route(path: str, name: str, media_type: str, headers: dict[str, str]) -> None:
    """``GET path`` serves app/static/``name``: one fixed route per file, nothing else."""

    async def serve() -> Response:
        return FileResponse(STATIC_DIR / name, media_type=media_type, headers=headers)

    router.add_api_route(path, serve, methods=["GET"], include_in_schema=False, name=name)


for _path, _name in _PAGES.items():
    _file_route(_path, _name, "text/html; charset=utf-8", _PAGE_HEADERS)
for _name, _media_type in _ASSETS.items():
    _file_route(f"/static/{_name}", _name, _media_type, _ASSET_HEADERS)


@router.get("/static/palette.json", include_in_schema=False)
async def palette() -> Response:
    """Class colours as ``#rrggbb`` in class-id order (id 1 first), as the overlay draws them."""
    colors = [f"#{r:02x}{g:02x}{b:02x}" for b, g, r in CLASS_COLORS_BGR]
    return JSONResponse({"colors": colors}, headers=_ASSET_HEADERS)
