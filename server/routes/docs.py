"""`/docs` (Swagger UI) and `/redoc` from the packaged copies in server/static/vendor/.

FastAPI's defaults load their JavaScript and CSS from a CDN, so the pages are blank on an
air-gapped cluster; here every URL the pages load is this server's own. Each page has its own
Content-Security-Policy: the search page's policy is stricter than these UIs can run under
(Swagger UI starts from one inline script, allowed by its hash; both UIs set inline styles;
Redoc's schema validator compiles functions and runs its search in a blob: worker).
"""

from __future__ import annotations

import base64
import hashlib
import re
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse

from server.errors import NotFound

VENDOR = Path(__file__).resolve().parent.parent / "static" / "vendor"
ASSETS = {
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui.css": "text/css; charset=utf-8",
    "redoc.standalone.js": "text/javascript; charset=utf-8",
}
FAVICON = "/static/favicon.svg"
TITLE = "MoCo-Matryoshka embedding server"
ASSET_CACHE = "public, max-age=86400"
COMMON = (
    "default-src 'none'; style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; "
    "font-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)

router = APIRouter(include_in_schema=False)


def inline_script_hashes(html: str) -> str:
    """CSP sources for the page's inline scripts: exactly these may run, nothing injected."""
    bodies = re.findall(r"<script>(.*?)</script>", html, flags=re.DOTALL)
    return " ".join(
        f"'sha256-{base64.b64encode(hashlib.sha256(b.encode()).digest()).decode()}'" for b in bodies
    )


def with_policy(page: HTMLResponse, script_src: str, extra: str = "") -> HTMLResponse:
    html = bytes(page.body).decode()
    policy = f"{COMMON}; script-src {script_src} {inline_script_hashes(html)}".rstrip()
    page.headers["Content-Security-Policy"] = policy + extra
    page.headers["X-Content-Type-Options"] = "nosniff"
    page.headers["Referrer-Policy"] = "no-referrer"
    return page


@router.get("/docs")
async def swagger_ui(request: Request) -> HTMLResponse:
    page = get_swagger_ui_html(
        openapi_url=request.app.openapi_url,
        title=f"{TITLE} - Swagger UI",
        swagger_js_url="/static/vendor/swagger-ui-bundle.js",
        swagger_css_url="/static/vendor/swagger-ui.css",
        swagger_favicon_url=FAVICON,
        swagger_ui_parameters={"validatorUrl": None},  # no call to validator.swagger.io
    )
    return with_policy(page, "'self'")


@router.get("/redoc")
async def redoc(request: Request) -> HTMLResponse:
    page = get_redoc_html(
        openapi_url=request.app.openapi_url,
        title=f"{TITLE} - ReDoc",
        redoc_js_url="/static/vendor/redoc.standalone.js",
        redoc_favicon_url=FAVICON,
        with_google_fonts=False,
    )
    return with_policy(page, "'self' 'unsafe-eval'", "; worker-src 'self' blob:")


@router.get("/static/vendor/{name}")
async def vendor_asset(name: str) -> FileResponse:
    if name not in ASSETS:
        raise NotFound(f"no vendor file {name!r}")
    headers = {"Cache-Control": ASSET_CACHE, "X-Content-Type-Options": "nosniff"}
    return FileResponse(VENDOR / name, media_type=ASSETS[name], headers=headers)
