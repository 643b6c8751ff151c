"""Output types on /v1/embed, /v1/embed/files and /v1/embeddings: every byte layout read
back by numpy alone (bits by hand, the calibrated grid by its formula), against the float
embedding of the same image; and the refusals, each naming what is allowed."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
from fastapi.testclient import TestClient
from support import png_b64, split

from core.checkpoint import load_checkpoint, save_checkpoint
from server.app import create_app
from server.settings import Settings

DIM = 16
TYPES = ("float", "float16", "int8", "uint8", "binary", "ubinary")
NUMPY = {"float16": "<f2", "int8": "i1", "uint8": "u1", "binary": "i1", "ubinary": "u1"}


@pytest.fixture(scope="module")
def images(tiny_dataset):
    ds = split(tiny_dataset, "test")
    return [png_b64(ds[i]["image"]) for i in range(3)]


@pytest.fixture(scope="module")
def client(checkpoint):
    settings = Settings(checkpoint=checkpoint, max_wait_ms=2, torch_threads=1, faiss_threads=1)
    with TestClient(create_app(settings)) as c:
        yield c


@pytest.fixture(scope="module")
def floats(client, images):
    r = client.post("/v1/embed", json={"images": images, "dim": DIM})
    assert r.status_code == 200
    return np.asarray(r.json()["embeddings"], dtype=np.float32)


def expected(v: np.ndarray, dtype: str, checkpoint) -> np.ndarray:
    """The documented layout, computed here without core.quantize."""
    if dtype == "float16":
        return v.astype("<f2")
    if dtype in ("binary", "ubinary"):
        bits = (v > 0).astype(np.uint8)
        bits = np.pad(bits, ((0, 0), (0, -bits.shape[1] % 8)))
        weights = 1 << np.arange(7, -1, -1)
        u8 = (bits.reshape(len(v), -1, 8) * weights).sum(-1)
        return u8 if dtype == "ubinary" else u8 - 128
    c = load_checkpoint(checkpoint).calibration
    row = list(c.dims).index(DIM)
    low, high = c.low[row, :DIM], c.high[row, :DIM]
    u8 = np.clip(np.rint((v - low) / ((high - low) / 255)), 0, 255)
    return u8 if dtype == "uint8" else u8 - 128


@pytest.mark.parametrize("dtype", TYPES[1:])
def test_embed_json_numbers_and_base64_bytes(client, images, floats, checkpoint, dtype):
    want = expected(floats, dtype, checkpoint)
    r = client.post("/v1/embed", json={"images": images, "dim": DIM, "output_dtype": dtype})
    body = r.json()
    assert r.status_code == 200 and body["output_dtype"] == dtype and body["dim"] == DIM
    got = np.asarray(body["embeddings"])
    if dtype != "float16":
        assert got.dtype.kind == "i"  # JSON integers, as Cohere and Voyage
    assert np.allclose(got, want, atol=1e-3 if dtype == "float16" else 1)
    r = client.post(
        "/v1/embed",
        json={"images": images, "dim": DIM, "output_dtype": dtype, "encoding_format": "base64"},
    )
    raw = [np.frombuffer(base64.b64decode(s), dtype=NUMPY[dtype]) for s in r.json()["embeddings"]]
    assert all(
        len(b) * np.dtype(NUMPY[dtype]).itemsize == len(base64.b64decode(s))
        for b, s in zip(raw, r.json()["embeddings"], strict=True)
    )
    assert np.array_equal(np.stack(raw), got.astype(NUMPY[dtype]))
    if dtype in ("binary", "ubinary"):
        assert got.shape == (len(images), DIM // 8)
        assert np.array_equal(np.asarray(want), got)  # the float vector's signs, exactly
    if dtype in ("int8", "uint8"):
        assert int(np.abs(got - want).max()) <= 1  # a rounding tie at most


def test_files_route_and_openai_route_give_the_same_bytes(client, images, floats, checkpoint):
    files = [
        ("files", (f"{i}.png", io.BytesIO(base64.b64decode(s)), "image/png"))
        for i, s in enumerate(images)
    ]
    r = client.post(
        "/v1/embed/files", files=files, data={"dim": str(DIM), "output_dtype": "ubinary"}
    )
    assert r.status_code == 200, r.text
    assert np.array_equal(np.asarray(r.json()["embeddings"]), expected(floats, "ubinary", None))
    r = client.post(
        "/v1/embeddings",
        json={
            "input": images,
            "model": "moco-matryoshka",
            "dimensions": DIM,
            "output_dtype": "int8",
            "encoding_format": "base64",
        },
    )
    assert r.status_code == 200, r.text
    got = np.stack(
        [np.frombuffer(base64.b64decode(d["embedding"]), "i1") for d in r.json()["data"]]
    )
    assert np.abs(got.astype(int) - expected(floats, "int8", checkpoint)).max() <= 1


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"output_dtype": "int4"}, "float16"),
        ({"output_dtype": "int8", "encoding_format": "base64_float16"}, "use encoding_format"),
    ],
)
def test_embed_refusals_say_what_is_allowed(client, images, body, message):
    r = client.post("/v1/embed", json={"images": images[:1], **body})
    assert r.status_code == 422 and message in r.text


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"embedding_types": ["int8"]}, "use `output_dtype`"),
        ({"output_dimension": 16}, "use `dimensions`"),
        ({"output_dtype": "bit"}, "ubinary"),
        ({"encoding_format": "base64_float16"}, "base64"),
    ],
)
def test_openai_route_refuses_with_400(client, images, extra, message):
    body = {"input": images[0], "model": "moco-matryoshka", **extra}
    r = client.post("/v1/embeddings", json=body)
    assert r.status_code == 400, r.text
    assert message in r.json()["error"]["message"]


def test_a_checkpoint_without_calibration_refuses_int8_and_names_the_fix(
    checkpoint, images, tmp_path
):
    old = load_checkpoint(checkpoint)
    old.calibration = None
    save_checkpoint(old, tmp_path / "old.pt")
    settings = Settings(checkpoint=tmp_path / "old.pt", torch_threads=1, faiss_threads=1)
    with TestClient(create_app(settings)) as c:
        r = c.post("/v1/embed", json={"images": images[:1], "output_dtype": "uint8"})
        assert r.status_code == 422 and "python -m trainer.calibrate" in r.text
        r = c.post("/v1/embed", json={"images": images[:1], "output_dtype": "binary"})
        assert r.status_code == 200  # sign bits need no calibration


def test_dims_lists_every_dim_and_type_with_bytes_and_evaluated_quality(
    client, checkpoint, tiny_dataset, tmp_path
):
    rows = client.get("/v1/dims").json()["dtypes"]  # embed-only: bytes, no quality
    assert len(rows) == 4 * len(TYPES)
    by = {(r["dim"], r["dtype"]): r for r in rows}
    assert by[(16, "ubinary")]["bytes"] == 2 and by[(64, "float")]["bytes"] == 256
    assert by[(16, "int8")]["knn_top1"] is None
    evaluated = [
        {"dim": 16, "dtype": t, "bytes": 0, "knn_top1": 0.5, "map_at_k": 0.25}
        for t in (*TYPES, "binary+rerank")
    ]
    metrics = [{"dim": d, "knn_top1": 0.5, "map_at_k": 0.25} for d in (8, 16, 32, 64)]
    eval_json = tmp_path / "eval.json"
    eval_json.write_text(json.dumps({"metrics": metrics, "dtypes": evaluated}))
    from trainer.build_index import IndexBuildConfig, build_index_folder

    build_index_folder(
        IndexBuildConfig(
            checkpoint=checkpoint,
            dataset=tiny_dataset,
            out=tmp_path / "index",
            limit=40,
            eval_json=eval_json,
        )
    )
    settings = Settings(
        checkpoint=checkpoint,
        index_dir=tmp_path / "index",
        read_only=True,
        torch_threads=1,
        faiss_threads=1,
    )
    with TestClient(create_app(settings)) as c:
        by = {(r["dim"], r["dtype"]): r for r in c.get("/v1/dims").json()["dtypes"]}
    assert by[(16, "binary+rerank")] == {
        "dim": 16,
        "dtype": "binary+rerank",
        "bytes": 2,
        "knn_top1": 0.5,
        "map_at_k": 0.25,
    }
    assert by[(16, "int8")]["bytes"] == 16 and by[(8, "int8")]["knn_top1"] is None


@pytest.fixture(scope="module")
def searcher(checkpoint, tiny_dataset, tmp_path_factory):
    from support import build_index

    index = build_index(checkpoint, tiny_dataset, tmp_path_factory.mktemp("i") / "index", 60)
    settings = Settings(
        checkpoint=checkpoint, index_dir=index, read_only=True, torch_threads=1, faiss_threads=1
    )
    with TestClient(create_app(settings)) as c:
        yield c


@pytest.mark.parametrize("dtype", ["int8", "uint8", "binary", "ubinary"])
def test_search_takes_compressed_queries_as_embed_gave_them(searcher, images, checkpoint, dtype):
    r = searcher.post("/v1/embed", json={"images": images, "dim": DIM, "output_dtype": dtype})
    q = np.asarray(r.json()["embeddings"])
    # the client's own decoding, from the documented layout
    if dtype in ("binary", "ubinary"):
        u8 = (q + (128 if dtype == "binary" else 0)).astype(np.uint8)
        floats = np.unpackbits(u8, axis=1)[:, :DIM] * 2.0 - 1
    else:
        c = load_checkpoint(checkpoint).calibration
        low, high = c.low[1, :DIM], c.high[1, :DIM]
        floats = low + (q + (128 if dtype == "int8" else 0)) * (high - low) / 255
    body = {"dim": DIM, "k": 5}
    got = searcher.post("/v1/search", json={**body, "vectors": q.tolist(), "vector_dtype": dtype})
    want = searcher.post("/v1/search", json={**body, "vectors": floats.tolist()})
    assert got.status_code == 200, got.text
    ids = [[h["id"] for h in row] for row in got.json()["results"]]
    assert ids == [[h["id"] for h in row] for row in want.json()["results"]]
    scores = [[h["score"] for h in row] for row in got.json()["results"]]
    assert np.allclose(
        scores, [[h["score"] for h in row] for row in want.json()["results"]], atol=1e-5
    )


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"vectors": [[1]], "vector_dtype": "ubinary"}, "length 1; ubinary at dim 16 is 2"),
        ({"vectors": [[1] * 8], "vector_dtype": "binary"}, "length 8; binary at dim 16 is 2"),
        ({"vectors": [[300] * 16], "vector_dtype": "int8"}, "integers -128..127"),
        ({"vectors": [[0.5] * 16], "vector_dtype": "uint8"}, "integers 0..255"),
        ({"vectors": [[1, 2]], "vector_dtype": "binary", "rerank_dim": 64}, "rerank_dim needs"),
    ],
)
def test_search_refuses_malformed_compressed_queries(searcher, body, message):
    r = searcher.post("/v1/search", json={"dim": DIM, **body})
    assert r.status_code == 422 and message in r.text, r.text
