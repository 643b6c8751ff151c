"""Filters and recall targets over HTTP: filtered results, the route and plan reported (field
and header), 422s that say what is allowed, /v1/dims's calibration table, old folders."""

from __future__ import annotations

import io
import json
import shutil

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from support import NESTING, matryoshka_vectors

from index import calibrate, calibration
from server.app import create_app
from server.settings import Settings
from trainer.build_index import IndexBuildConfig, build_index_folder

KEY = "k"
AUTH = {"Authorization": f"Bearer {KEY}"}
SHORTLIST_DIM = NESTING[1]
FULL = NESTING[-1]


@pytest.fixture(scope="module")
def ivf_index(checkpoint, tiny_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("idx") / "index"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(calibration, "MIN_ROWS", 100)  # the tiny index gets a full table
        build_index_folder(
            IndexBuildConfig(
                checkpoint=checkpoint,
                dataset=tiny_dataset,
                out=out,
                batch_size=64,
                store_dtype="float16",
                shortlist_dim=SHORTLIST_DIM,
                index_factory="IVF8,Flat",
                train_size=320,
            )
        )
    return out


@pytest.fixture
def folder(ivf_index, tmp_path):
    index = tmp_path / "index"
    shutil.copytree(ivf_index, index)
    return index


def serve(checkpoint, folder):
    settings = Settings(
        checkpoint=checkpoint,
        index_dir=folder,
        api_key=KEY,
        max_wait_ms=2,
        torch_threads=1,
        faiss_threads=1,
        ann_min_rows=0,
    )
    return TestClient(create_app(settings))


@pytest.fixture
def client(checkpoint, folder):
    with serve(checkpoint, folder) as c:
        yield c


def add(client, start, n, colour, seed):
    vectors = matryoshka_vectors(n, FULL, seed=seed)
    items = [
        {
            "id": f"m{start + i}",
            "label": "added",
            "metadata": {"colour": colour, "price": start + i},
            "vector": v.tolist(),
        }
        for i, v in enumerate(vectors)
    ]
    r = client.post("/v1/index/items", json={"items": items}, headers=AUTH)
    assert r.status_code == 200, r.text
    return vectors


def test_filters_restrict_results_and_say_how_they_ran(client):
    vectors = add(client, 0, 30, "red", seed=1)
    add(client, 30, 30, "blue", seed=2)
    body = {
        "vectors": vectors[:3].tolist(),
        "k": 5,
        "filter": {
            "and": [
                {"field": "metadata.colour", "eq": "red"},
                {"field": "metadata.price", "range": {"gte": 10}},
            ]
        },
    }
    r = client.post("/v1/search", json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    hits = [h for row in out["results"] for h in row]
    assert len(hits) == 15
    assert all(h["metadata"]["colour"] == "red" and h["metadata"]["price"] >= 10 for h in hits)
    assert out["search"] == {
        "route": "matching_rows",  # 20 rows: under the planner's exact-scan threshold
        "shortlist": None,
        "nprobe": None,
        "ef_search": None,
        "matched": 20,
        "recall_target": None,
        "calibrated_recall": None,
    }
    assert r.headers["X-Search-Plan"] == f"route=matching_rows;dim={FULL};matched=20"
    # the same filter on an adaptive request, and after deleting matches
    for i in range(10, 20):
        assert client.delete(f"/v1/index/items/m{i}", headers=AUTH).status_code == 200
    adaptive = {**body, "dim": SHORTLIST_DIM, "rerank_dim": FULL}
    out = client.post("/v1/search", json=adaptive).json()
    assert out["search"]["matched"] == 10
    assert {h["id"] for row in out["results"] for h in row} <= {f"m{i}" for i in range(20, 30)}
    labels = {"filter": {"not": {"field": "label", "eq": "added"}}, "k": 3}
    out = client.post("/v1/search", json={**labels, "vectors": vectors[:1].tolist()}).json()
    assert out["search"]["matched"] == 320  # the built items, none of the added ones
    assert all(h["label"] != "added" for h in out["results"][0])


@pytest.mark.parametrize(
    ("bad", "says"),
    [
        ({"field": "id", "eq": "x"}, "should match pattern"),
        ({"field": "label", "like": "x"}, "Extra inputs"),
        ({"field": "label", "eq": "a", "in": ["b"]}, "exactly one of eq, in, range"),
        ({"near": [1]}, "a filter node is"),
        ({"field": "metadata.price", "range": {"lt": "cheap"}}, "range.lt"),
        ({"or": [{"field": "label", "eq": i} for i in range(40)]}, "more than 32 filters"),
        (
            {"not": {"not": {"not": {"not": {"not": {"not": {"field": "label", "eq": 1}}}}}}},
            "deeper",
        ),
    ],
)
def test_unsupported_filters_are_refused_with_what_is_allowed(client, bad, says):
    body = {"vectors": matryoshka_vectors(1, FULL, seed=0).tolist(), "filter": bad}
    r = client.post("/v1/search", json=body)
    assert r.status_code == 422
    assert says in r.text


def test_recall_target_picks_a_calibrated_setting_and_knobs_win(client):
    dims = client.get("/v1/dims").json()
    table = dims["calibration"]
    assert table["k"] == 10 and table["rows"] == 320 and table["cost_s"] > 0
    assert table["settings"][-1] == {**table["settings"][-1], "dim": FULL, "recall": 1.0}
    assert any(s["use_ann"] and s["nprobe"] for s in table["settings"])
    q = matryoshka_vectors(2, FULL, seed=3).tolist()
    for target in (0.5, 0.9, 0.99, 1.0):
        r = client.post("/v1/search", json={"vectors": q, "recall_target": target})
        assert r.status_code == 200, r.text
        info = r.json()["search"]
        assert info["recall_target"] == target and info["calibrated_recall"] >= target
        expected = calibration.Calibration(**table).pick(target)
        assert r.json()["dim"] == expected.dim
        assert f"calibrated_recall={info['calibrated_recall']}" in r.headers["X-Search-Plan"]
    low = calibration.Calibration(**table).pick(0.5)
    if low.rerank_dim is not None:
        r = client.post("/v1/search", json={"vectors": q, "recall_target": 0.5, "shortlist": 77})
        assert r.json()["search"]["shortlist"] == 77  # a knob given wins over the pick
        narrow = [v[:SHORTLIST_DIM] for v in q]  # the pick reranks at the full dim
        body = {"vectors": narrow, "dim": SHORTLIST_DIM, "recall_target": 0.5}
        r = client.post("/v1/search", json=body)
        assert r.status_code == 422 and "send full-dim" in r.text
    r = client.post("/v1/search", json={"vectors": q, "recall_target": 0.9, "k": 11})
    assert r.status_code == 422 and "recall@10" in r.text
    r = client.post("/v1/search", json={"vectors": q, "recall_target": 1.5})
    assert r.status_code == 422


def test_a_folder_without_calibration_says_what_to_run(checkpoint, folder):
    manifest = json.loads((folder / "manifest.json").read_text())
    (folder / manifest.pop("calibration")).unlink()
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with serve(checkpoint, folder) as c:
        q = matryoshka_vectors(1, FULL, seed=3).tolist()
        r = c.post("/v1/search", json={"vectors": q, "recall_target": 0.9})
        assert r.status_code == 422 and "python -m index.calibrate" in r.text
        assert c.get("/v1/dims").json()["calibration"] is None
        assert c.post("/v1/search", json={"vectors": q, "k": 2}).status_code == 200
    calibrate.main([str(folder)])
    with serve(checkpoint, folder) as c:
        r = c.post("/v1/search", json={"vectors": q, "recall_target": 0.9})
        assert r.status_code == 200 and r.json()["search"]["calibrated_recall"] >= 0.9


def test_compaction_recalibrates_and_keeps_filters(checkpoint, folder):
    settings = Settings(
        checkpoint=checkpoint,
        index_dir=folder,
        api_key=KEY,
        max_wait_ms=2,
        torch_threads=1,
        faiss_threads=1,
        ann_min_rows=0,
        compact_every=2,
    )
    with TestClient(create_app(settings)) as c:
        before = json.loads((folder / "manifest.json").read_text())["calibration"]
        add(c, 0, 5, "red", seed=4)
        add(c, 5, 5, "blue", seed=5)  # the second edit compacts
        manifest = json.loads((folder / "manifest.json").read_text())
        assert manifest["generation"] == 1 and manifest["calibration"] == "calibration-1.json"
        assert not (folder / before).exists()
        assert c.get("/v1/dims").json()["calibration"]["rows"] == 330
        q = matryoshka_vectors(1, FULL, seed=4).tolist()
        body = {"vectors": q, "filter": {"field": "metadata.colour", "eq": "red"}}
        out = c.post("/v1/search", json=body).json()
        assert {h["id"] for h in out["results"][0]} == {f"m{i}" for i in range(5)}


def test_file_search_takes_a_filter_form_field(client):
    add(client, 0, 4, "red", seed=6)
    buf = io.BytesIO()
    Image.new("RGB", (40, 40), (200, 30, 30)).save(buf, format="PNG")
    files = [("files", ("a.png", buf.getvalue(), "image/png"))]
    data = {"k": "3", "filter": json.dumps({"field": "metadata.colour", "eq": "red"})}
    r = client.post("/v1/search/files", files=files, data=data)
    assert r.status_code == 200, r.text
    assert {h["metadata"]["colour"] for h in r.json()["results"][0]} == {"red"}
    bad = {"k": "3", "filter": '{"field": "nope", "eq": 1}'}
    r = client.post("/v1/search/files", files=files, data=bad)
    assert r.status_code == 422 and "should match pattern" in r.text
