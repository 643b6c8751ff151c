"""The search page at `/` and its static files, under a strict Content-Security-Policy.

Only the listed files are served (no directory walking); everything else under /static is
the API's JSON 404. The page calls read-only routes only and needs no API key.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

from server.errors import NotFound

STATIC = Path(__file__).resolve().parent.parent / "static"
FILES = {
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}

router = APIRouter(include_in_schema=False)


@router.get("/")
async def page() -> FileResponse:
    return FileResponse(STATIC / "index.html", media_type="text/html", headers=HEADERS)


@router.get("/static/{name}")
async def static(name: str) -> FileResponse:
    if name not in FILES:
        raise NotFound(f"no static file {name!r}")
    return FileResponse(STATIC / name, media_type=FILES[name], headers=HEADERS)
