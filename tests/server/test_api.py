"""The API through FastAPI's TestClient: embeddings, search, limits, auth, metrics, reload."""

from __future__ import annotations

import base64
import io
import struct
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families
from support import (
    NESTING,
    build_index,
    evaluator_embeddings,
    matryoshka_vectors,
    png_b64,
    split,
    train_tiny,
)

from core.cli import UsageError
from core.nesting import truncate_normalize_np
from server.app import create_app
from server.settings import Settings
from trainer.build_index import IndexBuildConfig, build_index_folder

KEY = "test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def index_dir(checkpoint, tiny_dataset, tmp_path_factory):
    return build_index(checkpoint, tiny_dataset, tmp_path_factory.mktemp("idx") / "index")


@pytest.fixture
def make_client(checkpoint, index_dir, tmp_path):
    clients = []

    def make(**overrides) -> TestClient:
        values = dict(
            checkpoint=checkpoint,
            index_dir=index_dir,
            api_key=KEY,
            max_wait_ms=2,
            torch_threads=1,
            faiss_threads=1,
        )
        values.update(overrides)
        client = TestClient(create_app(Settings(**values)))
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for c in clients:
        c.__exit__(None, None, None)


@pytest.fixture
def client(make_client):
    return make_client(read_only=True)


@pytest.fixture
def writer(make_client, checkpoint, tmp_path):
    return make_client(
        index_dir=tmp_path / "fresh-index", create_index=True, max_images=4000, max_k=50
    )


def test_health_ready_model(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").status_code == 200
    info = client.get("/v1/model").json()
    assert info["nesting_list"] == NESTING and info["full_dim"] == 64
    assert info["index_size"] == 320 and info["read_only"] is True and info["rotation"] == "pca"
    assert client.get("/docs").status_code == 200


def test_embed_matches_evaluator_extraction_at_every_dim(client, checkpoint, tiny_dataset):
    ds = split(tiny_dataset, "test").select(range(5))
    ref = evaluator_embeddings(checkpoint, ds)
    images = [png_b64(row["image"]) for row in ds]
    for dim in (8, 32, 64, None):
        r = client.post("/v1/embed", json={"images": images, "dim": dim})
        assert r.status_code == 200, r.text
        got = np.array(r.json()["embeddings"], dtype=np.float32)
        d = dim or 64
        assert r.json()["dim"] == d and got.shape == (5, d)
        np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
        np.testing.assert_allclose(got, truncate_normalize_np(ref, d), atol=1e-5)


def test_embed_multipart(client, tiny_dataset):
    image = split(tiny_dataset)[0]["image"]
    png = base64.b64decode(png_b64(image))
    files = [("files", ("a.png", png, "image/png")), ("files", ("b.png", png, "image/png"))]
    r = client.post("/v1/embed/files", files=files, data={"dim": "16"})
    assert r.status_code == 200, r.text
    emb = np.array(r.json()["embeddings"])
    assert emb.shape == (2, 16)
    js = client.post("/v1/embed", json={"images": [png_b64(image)], "dim": 16}).json()
    np.testing.assert_allclose(emb[0], js["embeddings"][0], atol=1e-6)


def test_encoding_formats_decode_to_the_float_embeddings(client, tiny_dataset):
    images = [png_b64(row["image"]) for row in split(tiny_dataset, "test").select(range(4))]
    for dim in (16, None):
        bodies = {
            fmt: client.post(
                "/v1/embed", json={"images": images, "dim": dim, "encoding_format": fmt}
            )
            for fmt in ("float", "base64", "base64_float16")
        }
        assert all(r.status_code == 200 for r in bodies.values())
        d = dim or NESTING[-1]
        ref = np.array(bodies["float"].json()["embeddings"], dtype=np.float32)
        # the documented layout: d little-endian float32 (or float16) values per string
        f32 = bodies["base64"].json()
        assert f32["encoding_format"] == "base64" and f32["dim"] == d
        raw = [base64.b64decode(text) for text in f32["embeddings"]]
        assert all(len(b) == 4 * d for b in raw)
        assert np.array_equal(np.array([struct.unpack(f"<{d}f", b) for b in raw], "f4"), ref)
        f16 = [base64.b64decode(t) for t in bodies["base64_float16"].json()["embeddings"]]
        half = np.array([struct.unpack(f"<{d}e", b) for b in f16], dtype=np.float32)
        assert np.array_equal(half, ref.astype(np.float16).astype(np.float32))
        np.testing.assert_allclose(half, ref, atol=1e-3)
    sizes = {fmt: len(r.content) for fmt, r in bodies.items()}  # at the full dim
    assert sizes["float"] >= 2 * sizes["base64"] and sizes["float"] >= 3.5 * sizes["base64_float16"]
    files = [("files", ("a.png", base64.b64decode(images[0]), "image/png"))]
    r = client.post("/v1/embed/files", files=files, data={"encoding_format": "base64"})
    upload = np.frombuffer(base64.b64decode(r.json()["embeddings"][0]), dtype="<f4")
    np.testing.assert_allclose(upload, ref[0], atol=1e-6)  # batch of 1 vs 4: float order
    r = client.post("/v1/embed", json={"images": images[:1], "encoding_format": "base32"})
    assert r.status_code == 422 and "encoding_format" in r.json()["detail"]


def test_timing_headers_and_histograms(client, tiny_dataset):
    image = png_b64(split(tiny_dataset)[0]["image"])
    stages = ("x-queue-time", "x-preprocess-time", "x-inference-time")
    for path, body in (
        ("/v1/embed", {"images": [image]}),
        ("/v1/search", {"images": [image], "k": 2}),
    ):
        r = client.post(path, json=body)
        assert r.status_code == 200, r.text
        split_ms = [float(r.headers[h]) for h in stages]
        assert all(v >= 0 for v in split_ms) and float(r.headers["x-inference-time"]) > 0
        assert sum(split_ms) <= float(r.headers["x-total-time"]) + 0.01
    assert float(r.headers["x-search-time"]) > 0
    r = client.post("/v1/search", json={"vectors": [[0.1] * 64], "k": 2})
    assert float(r.headers["x-inference-time"]) == 0 and "x-search-time" in r.headers
    r = client.post("/v1/embed", json={"images": [image], "dim": 12})
    assert r.status_code == 422 and "x-total-time" in r.headers and "x-queue-time" not in r.headers
    families = {f.name: f for f in text_string_to_metric_families(client.get("/metrics").text)}
    for stage in ("queue", "preprocess", "inference"):
        count = [s for s in families[f"moco_{stage}_seconds"].samples if s.name.endswith("_count")]
        assert count[0].value == 2, stage  # the two embedding requests, not the vector search


def test_search_with_database_image_returns_it_first(client, tiny_dataset):
    ds = split(tiny_dataset)
    images = [png_b64(ds[i]["image"]) for i in (0, 7, 123)]
    for body in ({"dim": 64}, {"dim": 8, "rerank_dim": 64}, {"dim": 16, "rerank_dim": 32}):
        r = client.post("/v1/search", json={"images": images, "k": 5, **body})
        assert r.status_code == 200, r.text
        results = r.json()["results"]
        for i, hits in zip((0, 7, 123), results, strict=True):
            assert len(hits) == 5
            assert hits[0]["id"] == f"train-{i}"
            assert hits[0]["score"] == pytest.approx(1.0, abs=1e-4)
            assert hits[0]["label"] == ds[i]["label"]
            assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)


def test_adaptive_recall_against_exact_full_dim(writer):
    bank = matryoshka_vectors(3000, 64, seed=0)
    items = [{"id": f"v{i}", "vector": v.tolist(), "label": i % 7} for i, v in enumerate(bank)]
    r = writer.post("/v1/index/items", json={"items": items}, headers=AUTH)
    assert r.status_code == 200, r.text
    assert r.json() == {"added": 3000, "size": 3000}
    queries = matryoshka_vectors(50, 64, seed=1)
    exact = truncate_normalize_np(queries, 64) @ truncate_normalize_np(bank, 64).T
    truth = np.argsort(-exact, axis=1)[:, :10]
    body = {"vectors": queries.tolist(), "k": 10}
    full = writer.post("/v1/search", json={**body, "dim": 64}).json()["results"]
    adaptive = writer.post("/v1/search", json={**body, "dim": 16, "rerank_dim": 64}).json()
    cheap = writer.post("/v1/search", json={**body, "dim": 16}).json()["results"]

    def recall(results) -> float:
        found = [{int(h["id"][1:]) for h in hits} for hits in results]
        return float(
            np.mean([len(f & set(t.tolist())) / 10 for f, t in zip(found, truth, strict=True)])
        )

    assert recall(full) == 1.0
    assert adaptive["rerank_dim"] == 64
    assert recall(adaptive["results"]) >= 0.95
    assert recall(adaptive["results"]) > recall(cheap)


def test_add_search_delete_with_auth(writer):
    vec = matryoshka_vectors(2, 64, seed=3)
    item = {"id": "a-1", "vector": vec[0].tolist(), "label": "cat", "metadata": {"src": "t"}}
    assert writer.post("/v1/index/items", json={"items": [item]}).status_code == 401
    wrong = {"Authorization": "Bearer nope"}
    assert writer.post("/v1/index/items", json={"items": [item]}, headers=wrong).status_code == 401
    r = writer.post("/v1/index/items", json={"items": [item]}, headers={"X-API-Key": KEY})
    assert r.status_code == 200, r.text
    hits = writer.post("/v1/search", json={"vectors": [vec[0][:16].tolist()], "dim": 16}).json()
    assert hits["results"][0][0] == {
        "id": "a-1",
        "score": pytest.approx(1.0, abs=1e-5),
        "label": "cat",
        "metadata": {"src": "t"},
        "percentile": None,  # an index created empty by the server: nothing measured
    }
    r = writer.post("/v1/index/items", json={"items": [item]}, headers=AUTH)
    assert r.status_code == 409 and "a-1" in r.json()["detail"]
    assert writer.delete("/v1/index/items/a-1").status_code == 401
    assert writer.delete("/v1/index/items/a-1", headers=AUTH).json() == {
        "deleted": "a-1",
        "size": 0,
    }
    r = writer.delete("/v1/index/items/a-1", headers=AUTH)
    assert r.status_code == 404 and "a-1" in r.json()["detail"]
    empty = writer.post("/v1/search", json={"vectors": [vec[1].tolist()], "k": 3}).json()
    assert empty["results"] == [[]]


def test_read_only_refuses_mutations(client):
    r = client.post("/v1/index/items", json={"items": []}, headers=AUTH)
    assert r.status_code == 403 and "read-only" in r.json()["detail"]
    assert client.delete("/v1/index/items/train-0", headers=AUTH).status_code == 403


def _png_of_size(w: int, h: int) -> str:
    return png_b64(Image.new("RGB", (w, h), (10, 200, 30)))


def _bad_cases():
    ok = _png_of_size(8, 8)
    gif = io.BytesIO()
    Image.new("P", (4, 4)).save(gif, "GIF")
    truncated = base64.b64encode(base64.b64decode(_png_of_size(64, 64))[:60]).decode()
    v64 = [0.1] * 64
    return [
        ("bad base64", "/v1/embed", {"images": ["%%%"]}, 422, "base64"),
        (
            "not an image",
            "/v1/embed",
            {"images": [base64.b64encode(b"hello").decode()]},
            422,
            "not an image",
        ),
        ("truncated image", "/v1/embed", {"images": [truncated]}, 422, "image 0"),
        ("too many pixels", "/v1/embed", {"images": [_png_of_size(300, 300)]}, 413, "pixels"),
        ("dim not allowed", "/v1/embed", {"images": [ok], "dim": 12}, 422, "8, 16, 32, 64"),
        ("dim wrong type", "/v1/embed", {"images": [ok], "dim": "x"}, 422, "dim"),
        ("empty batch", "/v1/embed", {"images": []}, 422, "at least 1 item"),
        ("batch too large", "/v1/embed", {"images": [ok] * 9}, 422, "limit is 8"),
        ("unknown field", "/v1/embed", {"images": [ok], "dims": 8}, 422, "dims"),
        (
            "k zero",
            "/v1/search",
            {"vectors": [v64], "k": 0},
            422,
            "body.k: Input should be greater",
        ),
        ("k too big", "/v1/search", {"vectors": [v64], "k": 51}, 422, "1..50"),
        (
            "vector wrong length",
            "/v1/search",
            {"vectors": [[0.1] * 10], "dim": 16},
            422,
            "expected 16 or 64",
        ),
        ("vector NaN", "/v1/search", '{"vectors": [[NaN' + ", 0.1" * 63 + "]]}", 422, "finite"),
        (
            "vector inf",
            "/v1/search",
            '{"vectors": [[Infinity' + ", 0.1" * 63 + "]]}",
            422,
            "finite",
        ),
        (
            "vector beyond float32",
            "/v1/search",
            {"vectors": [[1e39] * 64]},
            422,
            "less than or equal to 3402823",
        ),
        ("vector zero", "/v1/search", {"vectors": [[0.0] * 64]}, 422, "all zeros"),
        (
            "vector ragged",
            "/v1/search",
            {"vectors": [v64, [0.1] * 16], "dim": 16},
            422,
            "same length",
        ),
        ("no vectors", "/v1/search", {"vectors": []}, 422, "at least 1 item"),
        ("both kinds", "/v1/search", {"vectors": [v64], "images": [ok]}, 422, "exactly one"),
        (
            "rerank below dim",
            "/v1/search",
            {"vectors": [v64], "dim": 32, "rerank_dim": 16},
            422,
            "at least dim",
        ),
        (
            "rerank dim not allowed",
            "/v1/search",
            {"vectors": [v64], "rerank_dim": 48},
            422,
            "rerank_dim 48",
        ),
        (
            "shortlist below k",
            "/v1/search",
            {"vectors": [v64], "k": 5, "shortlist": 2},
            422,
            "shortlist",
        ),
        (
            "gif is fine but bad dim",
            "/v1/embed",
            {"images": [base64.b64encode(gif.getvalue()).decode()], "dim": 7},
            422,
            "dim 7",
        ),
    ]


@pytest.mark.parametrize(("name", "path", "body", "status", "says"), _bad_cases())
def test_bad_inputs_are_clear_4xx(make_client, name, path, body, status, says):
    client = make_client(read_only=True, max_pixels=200 * 200, max_images=8, max_k=50)
    if isinstance(body, str):
        r = client.post(path, content=body, headers={"content-type": "application/json"})
    else:
        r = client.post(path, json=body)
    assert r.status_code == status, (name, r.text)
    detail = r.json()["detail"]
    assert says.lower() in detail.lower(), (name, detail)


def test_raw_body_errors(make_client):
    client = make_client(read_only=True, max_body_bytes=4096)
    r = client.post("/v1/embed", content=b"x" * 5000, headers={"content-type": "application/json"})
    assert r.status_code == 413 and "4096" in r.json()["detail"]

    def chunks():
        for _ in range(10):
            yield b"y" * 1000

    r = client.post("/v1/embed", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413
    r = client.post("/v1/embed", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"] == "malformed_body"
    r = client.post("/v1/embed", content=b"abc", headers={"content-type": "text/plain"})
    assert r.status_code == 415
    png = [("files", ("a", b"zz", "image/png"))]
    r = client.post("/v1/embed", files=png)
    assert r.status_code == 415 and "/v1/embed/files" in r.json()["detail"]
    r = client.post("/v1/embed/files", files=png, data={"dim": "q"})
    assert r.status_code == 422 and "integer" in r.json()["detail"]
    r = client.post("/v1/embed/files", files=png)
    assert r.status_code == 422 and "not an image" in r.json()["detail"]
    assert client.post("/v1/search", content=b"[]").status_code == 422
    assert client.get("/nope").status_code == 404
    assert client.put("/v1/embed").status_code == 405


def test_metrics_parse_as_prometheus_text(client):
    client.post("/v1/embed", json={"images": [_png_of_size(8, 8)], "dim": 8})
    client.post("/v1/embed", json={"images": [], "dim": 8})
    client.post("/v1/search", json={"vectors": [[0.1] * 64], "k": 3})
    text = client.get("/metrics").text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name in (
        "moco_requests",
        "moco_batch_size",
        "moco_model_seconds",
        "moco_search_seconds",
        "moco_queue_depth",
        "moco_index_size",
        "moco_model_forwards",
    ):
        assert name in families, name
    statuses = {
        (s.labels["endpoint"], s.labels["status"])
        for s in families["moco_requests"].samples
        if s.name == "moco_requests_total"
    }
    assert {("/v1/embed", "200"), ("/v1/embed", "422"), ("/v1/search", "200")} <= statuses


def test_read_replica_picks_up_the_writers_changes(make_client, tmp_path):
    index = tmp_path / "shared-index"
    writer = make_client(index_dir=index, create_index=True)
    reader = make_client(index_dir=index, read_only=True, reload_interval_s=0.1)
    vec = matryoshka_vectors(1, 64, seed=5)[0].tolist()
    r = writer.post("/v1/index/items", json={"items": [{"id": "w1", "vector": vec}]}, headers=AUTH)
    assert r.status_code == 200
    deadline = time.monotonic() + 10
    while reader.get("/v1/model").json()["index_size"] != 1:
        assert time.monotonic() < deadline, "reader never reloaded"
        time.sleep(0.1)
    hits = reader.post("/v1/search", json={"vectors": [vec], "k": 1}).json()["results"]
    assert hits[0][0]["id"] == "w1"


def test_rebuilding_an_index_keeps_it_or_refuses_another_checkpoint(
    checkpoint, tiny_dataset, tmp_path
):
    out = build_index(checkpoint, tiny_dataset, tmp_path / "index", limit=40)
    manifest = (out / "manifest.json").read_text()
    cfg = IndexBuildConfig(checkpoint=checkpoint, dataset=tiny_dataset, out=out, limit=40)
    again = build_index_folder(cfg)
    assert again["skipped"] and (out / "manifest.json").read_text() == manifest
    other = train_tiny(tiny_dataset, tmp_path / "other", seed=1)
    with pytest.raises(UsageError, match="index of another checkpoint; pass --force"):
        build_index_folder(cfg.model_copy(update={"checkpoint": other}))
    rebuilt = build_index_folder(cfg.model_copy(update={"checkpoint": other, "force": True}))
    assert rebuilt["count"] == 40 and "skipped" not in rebuilt


def test_openai_route_errors_keep_openai_shape_and_schema(client):
    """Bodies that fail before the handler (not UTF-8, bad JSON) still answer OpenAI's shape,
    and the schema documents that shape and the one served model name."""
    for body in (b"\x02\xff:\xfe\x13", b"{not json"):
        r = client.post(
            "/v1/embeddings", content=body, headers={"content-type": "application/json"}
        )
        assert r.status_code == 400, r.text
        err = r.json()["error"]
        assert isinstance(err, dict) and err["type"] == "invalid_request_error", r.text
        assert err["message"]
    spec = client.get("/openapi.json").json()
    op = spec["paths"]["/v1/embeddings"]["post"]
    ref = op["responses"]["400"]["content"]["application/json"]["schema"]["$ref"]
    assert ref.endswith("/OpenAIErrorBody")
    model = spec["components"]["schemas"]["EmbeddingsRequest"]["properties"]["model"]
    assert model["enum"] == [client.get("/v1/models").json()["data"][0]["id"]]
