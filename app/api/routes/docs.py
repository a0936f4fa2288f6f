"""The API's documentation pages, ``/docs`` (Swagger UI) and ``/redoc`` (ReDoc), served with
their scripts and styles from this app, not a CDN.

A factory network often has no internet, and a CDN script would run with the API's origin:
the assets come from the ``fastapi-offline`` package (it ships Swagger UI's and ReDoc's
builds), each at one fixed route, and the pages' own start-up code is a file of ours
(``app/static/docs.js``), so the Content-Security-Policy needs no inline script and names no
other origin.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, HTMLResponse, Response

router = APIRouter(tags=["docs"])

_VENDOR = Path(str(files("fastapi_offline") / "static"))
_OWN = Path(__file__).resolve().parents[2] / "static"

#: Swagger UI and ReDoc set styles inline (style attributes, injected <style>), ReDoc runs its
#: search in a worker made from a blob, and both draw icons from data: URIs. Scripts: this
#: origin only, no inline code, no eval.
DOCS_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: blob:; font-src 'self' data:; connect-src 'self'; "
    "worker-src 'self' blob:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_PAGE_HEADERS = {
    "Content-Security-Policy": DOCS_CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
# Versioned with the installed package: revalidated, not refetched (ETag).
_ASSET_HEADERS = {"X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"}

_JS = "text/javascript; charset=utf-8"
#: URL name under /static/docs/ -> (folder, file, media type).
DOCS_ASSETS: dict[str, tuple[Path, str, str]] = {
    "swagger-ui-bundle.js": (_VENDOR, "swagger-ui-bundle.js", _JS),
    "swagger-ui.css": (_VENDOR, "swagger-ui.css", "text/css; charset=utf-8"),
    "redoc.standalone.js": (_VENDOR, "redoc.standalone.js", _JS),
    "favicon.png": (_VENDOR, "favicon.png", "image/png"),
    "docs.js": (_OWN, "docs.js", _JS),
}


def _page(title: str, head: str, body: str) -> str:
    """A docs page: its own ``<head>`` and ``<body>`` lines in the frame both pages share.

    Relative URLs: behind a proxy that mounts the API under a prefix they still resolve.
    """
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>pcb-inspect - {title}</title>
<link rel="icon" href="static/docs/favicon.png">
{head}</head>
<body>
{body}</body>
</html>
"""


_SWAGGER_HTML = _page(
    "API docs",
    '<link rel="stylesheet" href="static/docs/swagger-ui.css">\n',
    '<div id="swagger-ui"></div>\n'
    '<script src="static/docs/swagger-ui-bundle.js"></script>\n'
    '<script src="static/docs/docs.js"></script>\n',
)
_REDOC_HTML = _page(
    "API reference",
    "",
    '<redoc spec-url="openapi.json"></redoc>\n'
    '<script src="static/docs/redoc.standalone.js"></script>\n',
)


@router.get("/docs", include_in_schema=False)
async def swagger_ui() -> Response:
    """Swagger UI, from this app's own copy."""
    return HTMLResponse(_SWAGGER_HTML, headers=_PAGE_HEADERS)


@router.get("/redoc", include_in_schema=False)
async def redoc() -> Response:
    """ReDoc, from this app's own copy."""
    return HTMLResponse(_REDOC_HTML, headers=_PAGE_HEADERS)


def _asset_route(name: str, folder: Path, file: str, media_type: str) -> None:
    async def serve() -> Response:
        return FileResponse(folder / file, media_type=media_type, headers=_ASSET_HEADERS)

    router.add_api_route(f"/static/docs/{name}", serve, methods=["GET"],
                         include_in_schema=False, name=f"docs-{name}")


for _name, (_folder, _file, _media) in DOCS_ASSETS.items():
    _asset_route(_name, _folder, _file, _media)
