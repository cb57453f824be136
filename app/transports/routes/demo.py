"""GET /: the demo page, static files from app/static that call the public API from the browser.

Never behind the API key: the page carries no secret (the user types the key, the page keeps it in the
tab's sessionStorage and sends it with each API call). A content security policy lets the page load and
call nothing but this server, so it works offline and cannot leak an image elsewhere.
"""

from __future__ import annotations

import json
from pathlib import Path

from fastapi import APIRouter, HTTPException
from starlette.responses import FileResponse, Response

from app.pipeline.colormaps import COLORMAPS

STATIC_DIR = Path(__file__).resolve().parents[2] / "static"
EXAMPLES_DIR = STATIC_DIR / "examples"

_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_HEADERS = {
    "Content-Security-Policy": _CSP,
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",  # revalidated (ETag) on each load, so an upgrade shows at once
}
_MEDIA_TYPES = {".html": "text/html", ".css": "text/css", ".js": "text/javascript", ".png": "image/png"}

router = APIRouter(include_in_schema=False)


def _listing(folder: Path) -> dict[str, Path]:
    """The files a folder holds, by name: only these are served (no path from the URL reaches the disk)."""
    return {path.name: path for path in folder.iterdir() if path.suffix in _MEDIA_TYPES}


_ASSETS = _listing(STATIC_DIR)
_EXAMPLES = _listing(EXAMPLES_DIR)
_COLORMAPS_JSON = json.dumps({name: table.tobytes().hex() for name, table in COLORMAPS.items()})


def _file(files: dict[str, Path], name: str) -> FileResponse:
    path = files.get(name)
    if path is None:
        raise HTTPException(404, f"no demo asset named {name!r}")
    return FileResponse(path, media_type=_MEDIA_TYPES[path.suffix], headers=_HEADERS)


@router.get("/")
async def page() -> FileResponse:
    """The demo page."""
    return _file(_ASSETS, "index.html")


@router.get("/demo/colormaps.json")
async def colormaps() -> Response:
    """The server's overlay colormaps as 256 RGB entries, hex-encoded, so the page draws the same colours."""
    return Response(_COLORMAPS_JSON, media_type="application/json", headers=_HEADERS)


@router.get("/demo/examples/{name}")
async def example(name: str) -> FileResponse:
    """An example image of the gallery (copies of the repository's examples/)."""
    return _file(_EXAMPLES, name)


@router.get("/demo/{name}")
async def asset(name: str) -> FileResponse:
    """The page's script and style sheet."""
    return _file(_ASSETS, name)
