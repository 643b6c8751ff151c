"""The HTTP API over an index folder with an ANN: knobs, bounds, /v1/dims, and the same
results contract as the exact index."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient
from support import NESTING, matryoshka_vectors, train_tiny

from core.cli import UsageError
from server.app import create_app
from server.settings import Settings
from trainer.build_index import IndexBuildConfig, build_index_folder
from trainer.build_index import main as index_main

KEY = "k"
AUTH = {"Authorization": f"Bearer {KEY}"}
SHORTLIST_DIM = NESTING[1]
FULL = NESTING[-1]


@pytest.fixture(scope="module")
def checkpoint(tiny_dataset, tmp_path_factory):
    ckpt = train_tiny(tiny_dataset, tmp_path_factory.mktemp("run"))
    metrics = [{"dim": d, "knn_top1": d / 1000, "map_at_k": d / 2000} for d in NESTING]
    (ckpt.parent / "eval.json").write_text(json.dumps({"metrics": metrics}))
    return ckpt


@pytest.fixture(scope="module")
def ann_index(checkpoint, tiny_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("idx") / "index"
    build_index_folder(
        IndexBuildConfig(
            checkpoint=checkpoint,
            dataset=tiny_dataset,
            out=out,
            batch_size=64,
            store_dtype="float16",
            shortlist_dim=SHORTLIST_DIM,
            index_factory="HNSW32",
            eval_json=checkpoint.parent / "eval.json",
        )
    )
    return out


@pytest.fixture
def client(checkpoint, ann_index, tmp_path):
    import shutil

    index = tmp_path / "index"
    shutil.copytree(ann_index, index)
    settings = Settings(
        checkpoint=checkpoint,
        index_dir=index,
        api_key=KEY,
        max_wait_ms=2,
        torch_threads=1,
        faiss_threads=1,
        ann_min_rows=0,
    )
    with TestClient(create_app(settings)) as c:
        yield c


def test_dims_reports_eval_quality_and_measured_latency(client):
    dims = client.get("/v1/dims").json()
    assert [d["dim"] for d in dims["dims"]] == NESTING
    for d in dims["dims"]:
        assert d["knn_top1"] == pytest.approx(d["dim"] / 1000)
        assert d["exact_ms"] > 0
        assert (d["adaptive_ms"] is not None) == (d["dim"] >= SHORTLIST_DIM)
    assert dims["ann"]["factory"] == "HNSW32" and dims["ann"]["dim"] == SHORTLIST_DIM
    assert dims["store_dtype"] == "float16" and dims["index_size"] == 320
    assert client.get("/v1/model").json()["links"] == {"dims": "/v1/dims"}


def test_ann_search_matches_exact_shortlist_and_honours_knobs(client):
    q = matryoshka_vectors(8, FULL, seed=3).tolist()
    body = {"vectors": q, "k": 5, "dim": SHORTLIST_DIM, "rerank_dim": FULL, "shortlist": 320}
    exact = client.post("/v1/search", json={**body, "use_ann": False}).json()["results"]
    for knobs in ({"ef_search": 320}, {"ef_search": 320, "nprobe": 4}, {}):
        r = client.post("/v1/search", json={**body, **knobs, "use_ann": True})
        assert r.status_code == 200, r.text
        # a shortlist of the whole index: the ANN funnel equals the exact one
        assert [[h["id"] for h in row] for row in r.json()["results"]] == [
            [h["id"] for h in row] for row in exact
        ]


def test_ann_search_with_edits(client):
    vec = matryoshka_vectors(1, FULL, seed=11)[0].tolist()
    r = client.post("/v1/index/items", json={"items": [{"id": "new", "vector": vec}]}, headers=AUTH)
    assert r.status_code == 200, r.text
    body = {"vectors": [vec], "k": 3, "dim": SHORTLIST_DIM, "rerank_dim": FULL, "use_ann": True}
    hits = client.post("/v1/search", json=body).json()["results"][0]
    assert hits[0]["id"] == "new" and hits[0]["score"] == pytest.approx(1.0, abs=1e-3)
    assert client.delete("/v1/index/items/new", headers=AUTH).status_code == 200
    hits = client.post("/v1/search", json=body).json()["results"][0]
    assert "new" not in [h["id"] for h in hits] and len(hits) == 3


@pytest.mark.parametrize(
    ("extra", "status", "says"),
    [
        ({"ef_search": 0}, 422, "ef_search"),
        ({"ef_search": 5000}, 422, "ef_search"),
        ({"nprobe": -1}, 422, "nprobe"),
        ({"use_ann": True, "dim": NESTING[0]}, 422, "ANN is at dim"),
        ({"use_ann": "yes please"}, 422, "use_ann"),
    ],
)
def test_bad_knobs_are_clear_4xx(client, extra, status, says):
    body = {"vectors": matryoshka_vectors(1, FULL, seed=1).tolist(), "k": 3, **extra}
    body.setdefault("dim", SHORTLIST_DIM)
    r = client.post("/v1/search", json=body)
    assert r.status_code == status, r.text
    assert says in r.json()["detail"]


def test_index_cli_refuses_bad_ann_options(checkpoint, tiny_dataset, tmp_path):
    base = ["--checkpoint", str(checkpoint), "--dataset", tiny_dataset]
    with pytest.raises(UsageError, match="FAISS cannot build index 'Nope'"):
        index_main(
            [
                *base,
                "--out",
                str(tmp_path / "a"),
                "--shortlist-dim",
                "16",
                "--limit",
                "40",
                "--index-factory",
                "Nope",
            ]
        )
    with pytest.raises(UsageError, match="not a nesting dim"):
        index_main([*base, "--out", str(tmp_path / "b"), "--shortlist-dim", "12", "--limit", "40"])
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_a_float16_index_answers_422_for_a_vector_it_cannot_hold(client):
    """Finite in float32 but beyond float16: acknowledged, it would have been compacted to inf
    and the folder refused at the next start."""
    x = matryoshka_vectors(2, FULL, seed=9)
    huge = {"items": [{"id": "huge", "vector": (x[0] * 1e6).tolist()}]}
    r = client.post("/v1/index/items", json=huge, headers=AUTH)
    assert r.status_code == 422 and "stores float16" in r.json()["detail"], r.text
    fine = {"items": [{"id": "fine", "vector": (x[1] * 1e3).tolist()}]}
    assert client.post("/v1/index/items", json=fine, headers=AUTH).status_code == 200
