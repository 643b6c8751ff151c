"""/docs and /redoc work offline: every script, style sheet and icon they load is served by
this server from the packaged copies (server/static/vendor), under their own CSP."""

from __future__ import annotations

import base64
import hashlib
import re
from urllib.parse import urlsplit

import pytest
from fastapi.testclient import TestClient
from support import train_tiny

from server.app import create_app
from server.settings import Settings

URL_ATTR = re.compile(r"""(?:src|href|url|spec-url)\s*[=:]\s*['"]([^'"]+)['"]""")
TYPES = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml", ".json": "json"}


@pytest.fixture(scope="module")
def client(tiny_dataset, tmp_path_factory):
    checkpoint = train_tiny(tiny_dataset, tmp_path_factory.mktemp("run"))
    settings = Settings(checkpoint=checkpoint, torch_threads=1, faiss_threads=1)
    with TestClient(create_app(settings)) as c:
        yield c


def loaded_urls(html: str) -> list[str]:
    """Everything the page's HTML would fetch: script/link/icon URLs and the schema URL."""
    return URL_ATTR.findall(html)


@pytest.mark.parametrize(
    ("page", "assets"),
    [
        ("/docs", {"/static/vendor/swagger-ui-bundle.js", "/static/vendor/swagger-ui.css"}),
        ("/redoc", {"/static/vendor/redoc.standalone.js"}),
    ],
)
def test_doc_pages_load_only_local_urls_and_each_one_is_served(client, page, assets):
    r = client.get(page)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    urls = loaded_urls(r.text)
    assert assets <= set(urls) and "/openapi.json" in urls
    for url in urls:
        parts = urlsplit(url)
        assert not parts.scheme and not parts.netloc, f"{page} loads {url} from elsewhere"
        got = client.get(url)
        assert got.status_code == 200, url
        want = next(t for ext, t in TYPES.items() if parts.path.endswith(ext))
        assert want in got.headers["content-type"], (url, got.headers["content-type"])
        assert len(got.content) > 1000 or url.endswith(".svg")
    assert "cdn" not in r.text.lower() and "googleapis" not in r.text


def test_docs_csp_allows_exactly_the_inline_start_script(client):
    r = client.get("/docs")
    csp = r.headers["content-security-policy"]
    scripts = re.findall(r"<script>(.*?)</script>", r.text, flags=re.DOTALL)
    assert len(scripts) == 1 and "SwaggerUIBundle" in scripts[0]
    digest = base64.b64encode(hashlib.sha256(scripts[0].encode()).digest()).decode()
    script_src = next(d for d in csp.split("; ") if d.startswith("script-src"))
    assert script_src == f"script-src 'self' 'sha256-{digest}'"
    assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
    assert "'unsafe-inline'" not in script_src and "'unsafe-eval'" not in script_src
    redoc = client.get("/redoc").headers["content-security-policy"]
    assert "worker-src 'self' blob:" in redoc and "default-src 'none'" in redoc


def test_vendor_assets_are_the_packaged_files_and_nothing_else(client):
    js = client.get("/static/vendor/swagger-ui-bundle.js")
    assert "SwaggerUIBundle" in js.text and js.headers["cache-control"].startswith("public")
    assert "Redoc" in client.get("/static/vendor/redoc.standalone.js").text
    assert ".swagger-ui" in client.get("/static/vendor/swagger-ui.css").text
    for path in ("/static/vendor/README.md", "/static/vendor/redoc.LICENSE", "/static/vendor/x.js"):
        assert client.get(path).status_code == 404


def test_the_wheel_ships_the_vendor_files():
    import tomllib
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    data = tomllib.loads((root / "pyproject.toml").read_text())
    patterns = data["tool"]["setuptools"]["package-data"]["server"]
    shipped = {p.name for pat in patterns for p in (root / "server").glob(pat)}
    assert {"swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js"} <= shipped
