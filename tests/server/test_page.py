"""The search page's server side: `/` + static files with a CSP, item lookups, thumbnails.

The page itself runs in a real browser in test_ui_browser.py (`make test-ui`).
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from support import build_index, png_b64, split

from server.app import create_app
from server.routes.page import STATIC
from server.settings import Settings

KEY = "page-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def index_dir(checkpoint, tiny_dataset, tmp_path_factory):
    return build_index(checkpoint, tiny_dataset, tmp_path_factory.mktemp("idx") / "i", limit=50)


def client_for(**values) -> TestClient:
    settings = Settings(max_wait_ms=2, torch_threads=1, faiss_threads=1, api_key=KEY, **values)
    return TestClient(create_app(settings))


@pytest.fixture
def client(checkpoint, index_dir):
    with client_for(checkpoint=checkpoint, index_dir=index_dir, read_only=True) as c:
        yield c


def test_page_and_static_files_carry_a_csp(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    for rule in ("default-src 'none'", "script-src 'self'", "connect-src 'self'"):
        assert rule in csp
    assert "unsafe-inline" not in csp and page.headers["x-content-type-options"] == "nosniff"
    assert '<script src="/static/app.js"' in page.text
    for name, kind in (("app.js", "text/javascript"), ("style.css", "text/css")):
        r = client.get(f"/static/{name}")
        assert r.status_code == 200 and r.headers["content-type"].startswith(kind)
        assert r.headers["content-security-policy"] == csp


@pytest.mark.parametrize(
    "path", ["/static/index.html", "/static/..%2Fapp.py", "/static/nope.js", "/v1/nope", "/v1"]
)
def test_unknown_paths_answer_json_404(client, path):
    r = client.get(path)
    assert r.status_code == 404 and r.headers["content-type"] == "application/json"
    assert set(r.json()) == {"error", "detail"}


def test_page_exposes_no_mutation():
    script = (STATIC / "app.js").read_text()
    assert "/v1/index" not in script and "DELETE" not in script
    assert "innerHTML" not in script  # API text (labels, metadata) is only set as text


def test_sample_and_item_lookup(client, tiny_dataset):
    sample = client.get("/v1/items?sample=5").json()["items"]
    ids = [it["id"] for it in sample]
    assert len(set(ids)) == 5 and all(it["vector"] is None for it in sample)
    labels = split(tiny_dataset)["label"]
    item = client.get(f"/v1/items/{ids[0]}").json()
    assert item["label"] == labels[int(ids[0].split("-")[1])] and len(item["vector"]) == 64
    hits = client.post("/v1/search", json={"vectors": [item["vector"]], "k": 1}).json()
    assert hits["results"][0][0]["id"] == ids[0]
    for path, status in (("/v1/items?sample=0", 422), ("/v1/items", 422)):
        assert client.get(path).status_code == status
    r = client.get("/v1/items/train-999")
    assert r.status_code == 404 and "train-999" in r.json()["detail"]


def test_thumbnail_with_cache_headers_and_revalidation(client, tiny_dataset):
    r = client.get("/v1/items/train-7/thumbnail")
    assert r.status_code == 200 and r.headers["content-type"] == "image/webp"
    assert "max-age" in r.headers["cache-control"]
    thumb = np.asarray(Image.open(io.BytesIO(r.content)).convert("RGB"), np.float32)
    original = np.asarray(split(tiny_dataset)[7]["image"].convert("RGB"), np.float32)
    assert thumb.shape == original.shape and np.abs(thumb - original).mean() < 20
    again = client.get("/v1/items/train-7/thumbnail", headers={"If-None-Match": r.headers["etag"]})
    assert again.status_code == 304 and not again.content
    assert client.get("/v1/items/train-8/thumbnail").headers["etag"] != r.headers["etag"]


def test_search_answers_carry_server_timing(client):
    r = client.post("/v1/search", json={"vectors": [[1.0] * 8], "dim": 8, "k": 3})
    name, _, duration = r.headers["server-timing"].partition(";dur=")
    assert name == "app" and float(duration) >= 0


def test_added_items_get_thumbnails_that_survive_a_restart(checkpoint, tmp_path, tiny_dataset):
    image = split(tiny_dataset)[3]["image"]
    items = [
        {"id": "pic", "image": png_b64(image), "label": "mine"},
        {"id": "vec", "vector": [0.5] * 64},
    ]
    settings = {"checkpoint": checkpoint, "index_dir": tmp_path / "index", "create_index": True}
    with client_for(**settings) as writer:
        added = writer.post("/v1/index/items", json={"items": items}, headers=AUTH)
        assert added.status_code == 200, added.text
        first = writer.get("/v1/items/pic/thumbnail")
        assert first.status_code == 200
        r = writer.get("/v1/items/vec/thumbnail")
        assert r.status_code == 404 and "no thumbnail" in r.json()["detail"]
    with client_for(**settings) as again:
        assert again.get("/v1/items/pic/thumbnail").content == first.content
        assert again.delete("/v1/index/items/pic", headers=AUTH).status_code == 200
        assert again.get("/v1/items/pic/thumbnail").status_code == 404


def test_without_an_index_item_routes_say_so(checkpoint):
    with client_for(checkpoint=checkpoint) as c:
        assert c.get("/").status_code == 200
        r = c.get("/v1/items?sample=1")
        assert r.status_code == 409 and "no index" in r.json()["detail"]


def test_a_deleted_items_thumbnail_is_not_served_for_a_re_added_id(
    checkpoint, tmp_path, tiny_dataset
):
    image = split(tiny_dataset)[5]["image"]
    settings = {"checkpoint": checkpoint, "index_dir": tmp_path / "index", "create_index": True}
    with client_for(**settings) as writer:
        add = {"items": [{"id": "secret-1", "image": png_b64(image)}]}
        assert writer.post("/v1/index/items", json=add, headers=AUTH).status_code == 200
        assert writer.get("/v1/items/secret-1/thumbnail").status_code == 200
        assert writer.delete("/v1/index/items/secret-1", headers=AUTH).status_code == 200
        assert writer.get("/v1/items/secret-1/thumbnail").status_code == 404
        again = {"items": [{"id": "secret-1", "vector": [0.5] * 64}]}
        assert writer.post("/v1/index/items", json=again, headers=AUTH).status_code == 200
        assert writer.get("/v1/items/secret-1/thumbnail").status_code == 404
    with client_for(**settings, read_only=True) as replica:  # after a restart, read-only
        assert replica.get("/v1/items/secret-1/thumbnail").status_code == 404


def test_a_request_larger_than_the_queue_can_ever_hold_is_413_not_503(checkpoint, tiny_dataset):
    image = png_b64(split(tiny_dataset)[0]["image"])
    with client_for(checkpoint=checkpoint, max_queue=1, max_batch_size=1) as c:
        r = c.post("/v1/embed", json={"images": [image, image], "dim": 8})
        assert r.status_code == 413 and "retry-after" not in r.headers
        assert "send at most 1 images per request" in r.json()["detail"]
        assert c.post("/v1/embed", json={"images": [image], "dim": 8}).status_code == 200


@pytest.mark.parametrize("header", ["*", 'W/"{etag}"', '"nope", "{etag}"', ' W/"x" , W/"{etag}" '])
def test_if_none_match_star_weak_and_lists_get_304(client, header):
    item = client.get("/v1/items?sample=1").json()["items"][0]["id"]
    etag = client.get(f"/v1/items/{item}/thumbnail").headers["etag"]
    r = client.get(
        f"/v1/items/{item}/thumbnail",
        headers={"If-None-Match": header.format(etag=etag.strip('"'))},
    )
    assert r.status_code == 304 and r.headers["etag"] == etag
    other = client.get(f"/v1/items/{item}/thumbnail", headers={"If-None-Match": '"other"'})
    assert other.status_code == 200


def test_a_boolean_is_not_a_dim_and_the_fast_path_can_be_switched_off(checkpoint, tiny_dataset):
    image = png_b64(split(tiny_dataset)[0]["image"])
    for fast_path in (True, False):
        with client_for(checkpoint=checkpoint, fast_path=fast_path) as c:
            r = c.post("/v1/embed", json={"images": [image], "dim": True})
            assert r.status_code == 422 and "not true" in r.json()["detail"], r.text
            ok = c.post("/v1/embed", json={"images": [image], "dim": 8})
            assert ok.status_code == 200 and len(ok.json()["embeddings"][0]) == 8
            installed = [m.cls.__name__ for m in c.app.user_middleware]
            assert ("EmbedFastPath" in installed) == fast_path


def test_head_on_get_routes_and_invalid_json_on_the_openai_route(client):
    for path in ("/healthz", "/v1/model", "/"):
        get, head = client.get(path), client.head(path)
        assert head.status_code == get.status_code == 200 and head.content == b""
        assert head.headers["content-type"] == get.headers["content-type"]
    r = client.post(
        "/v1/embeddings", content=b'{"input": ["x"], ', headers={"content-type": "application/json"}
    )
    error = r.json()["error"]
    assert r.status_code == 400 and error["code"] == "malformed_body" and error["param"] is None
