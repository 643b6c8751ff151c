"""POST /v1/search/files against the JSON route, and each hit's `percentile` (weak matches)."""

from __future__ import annotations

import base64
import io
import json
import shutil

import pytest
from fastapi.testclient import TestClient
from support import build_index, split

from index.dims import percentile_of
from server.app import create_app
from server.settings import Settings


@pytest.fixture(scope="module")
def index_dir(checkpoint, tiny_dataset, tmp_path_factory):
    return build_index(checkpoint, tiny_dataset, tmp_path_factory.mktemp("idx") / "index")


def open_client(checkpoint, index_dir) -> TestClient:
    settings = Settings(
        checkpoint=checkpoint,
        index_dir=index_dir,
        read_only=True,
        max_wait_ms=2,
        torch_threads=1,
        faiss_threads=1,
    )
    return TestClient(create_app(settings))


@pytest.fixture(scope="module")
def client(checkpoint, index_dir):
    with open_client(checkpoint, index_dir) as c:
        yield c


def photo(tiny_dataset, row: int, fmt: str = "JPEG", size: int = 80) -> bytes:
    """A dataset image saved as a user's file: another size and format than the index's."""
    image = split(tiny_dataset)[row]["image"].convert("RGB").resize((size, size))
    buf = io.BytesIO()
    image.save(buf, fmt)
    return buf.getvalue()


def json_search(client, images: list[bytes], **options) -> dict:
    body = {"images": [base64.b64encode(b).decode() for b in images], **options}
    r = client.post("/v1/search", json=body)
    assert r.status_code == 200, r.text
    return r.json()


def file_search(client, images: list[bytes], **options):
    files = [("files", (f"photo{i}.jpg", b, "image/jpeg")) for i, b in enumerate(images)]
    form = {name: str(value) for name, value in options.items()}
    return client.post("/v1/search/files", files=files, data=form)


@pytest.mark.parametrize(
    "options",
    [{}, {"dim": 8, "k": 5}, {"dim": 8, "rerank_dim": 64, "k": 7, "shortlist": 20}],
)
def test_upload_answers_exactly_what_the_json_route_answers(client, tiny_dataset, options):
    images = [photo(tiny_dataset, 3), photo(tiny_dataset, 40, "PNG", 50)]
    r = file_search(client, images, **options)
    assert r.status_code == 200, r.text
    assert r.json() == json_search(client, images, **options)
    assert len(r.json()["results"]) == 2
    assert len(r.json()["results"][0]) == options.get("k", 10)
    assert float(r.headers["x-search-time"]) >= 0


def test_upload_of_an_indexed_image_finds_it_first(client, tiny_dataset):
    png = io.BytesIO()
    split(tiny_dataset)[42]["image"].save(png, "PNG")
    top = file_search(client, [png.getvalue()], k=1).json()["results"][0][0]
    assert top["id"] == "train-42" and top["score"] == pytest.approx(1.0, abs=1e-5)
    assert top["percentile"] == 100.0


@pytest.mark.parametrize(
    ("files", "data", "status", "says"),
    [
        ([("files", ("notes.txt", b"hello, not an image", "text/plain"))], {}, 422, "image"),
        ([("files", ("empty.jpg", b"", "image/jpeg"))], {}, 422, "empty"),
        (None, {"k": "3"}, 422, "files"),
        ("photo", {"dim": "12"}, 422, "allowed dims: 8, 16, 32, 64"),
        ("photo", {"k": "0"}, 422, "k"),
        ("photo", {"dim": "16", "rerank_dim": "8"}, 422, "rerank_dim 8 must be at least dim 16"),
        ("photo", {"colour": "red"}, 422, "colour"),
        ("photo", {"use_ann": "true"}, 422, "no ANN"),
    ],
)
def test_bad_uploads_are_clear_4xx(client, tiny_dataset, files, data, status, says):
    if files == "photo":
        files = [("files", ("p.jpg", photo(tiny_dataset, 1), "image/jpeg"))]
    r = client.post("/v1/search/files", files=files, data=data)
    assert r.status_code == status, r.text
    assert says in r.json()["detail"]


def test_json_to_the_upload_route_and_upload_to_the_json_route(client, tiny_dataset):
    r = client.post("/v1/search/files", json={"images": ["x"]})
    assert r.status_code == 422 and "files" in r.json()["detail"]
    files = [("files", ("p.jpg", photo(tiny_dataset, 1), "image/jpeg"))]
    r = client.post("/v1/search", files=files)
    assert r.status_code == 415 and "/v1/search/files" in r.json()["detail"]


def test_percentile_ranks_hits_against_the_index_neighbour_scores(client, index_dir):
    quantiles = json.loads((index_dir / "dims.json").read_text())["neighbour_score_quantiles"]
    assert sorted(quantiles) == ["16", "32", "64", "8"]
    assert all(len(q) == 201 and q == sorted(q) for q in quantiles.values())
    item = client.get("/v1/items/train-5").json()
    for vector, expect_weak in ((item["vector"], False), ([-v for v in item["vector"]], True)):
        hits = client.post("/v1/search", json={"vectors": [vector], "dim": 16, "k": 5}).json()
        hits = hits["results"][0]
        assert [h["percentile"] for h in hits] == [
            percentile_of(h["score"], quantiles["16"]) for h in hits
        ]
        assert all(0 <= h["percentile"] <= 100 for h in hits)
        assert hits[0]["percentile"] == (0.0 if expect_weak else 100.0)


def test_percentile_of_places_a_score_among_quantiles():
    q = [0.5, 0.6, 0.7, 0.8, 0.9]
    assert percentile_of(0.1, q) == 0.0 and percentile_of(0.95, q) == 100.0
    assert percentile_of(0.7, q) == 50.0 and percentile_of(0.65, q) == 37.5
    assert percentile_of(0.7, None) is None and percentile_of(0.7, []) is None


def test_an_index_built_without_neighbour_scores_serves_null(checkpoint, index_dir, tmp_path):
    old = tmp_path / "old-index"
    shutil.copytree(index_dir, old)
    report = json.loads((old / "dims.json").read_text())
    del report["neighbour_score_quantiles"]
    (old / "dims.json").write_text(json.dumps(report))
    with open_client(checkpoint, old) as c:
        hits = c.post("/v1/search", json={"vectors": [[1.0] * 64], "k": 3}).json()["results"][0]
        assert len(hits) == 3 and all(h["percentile"] is None for h in hits)
    (old / "dims.json").unlink()
    with open_client(checkpoint, old) as c:
        r = c.post("/v1/search", json={"vectors": [[1.0] * 64], "k": 3})
        assert r.status_code == 200 and r.json()["results"][0][0]["percentile"] is None
