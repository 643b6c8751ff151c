"""Against a real `python -m server` (uvicorn) on 127.0.0.1: batching, kill -9 durability,
the official `openai` client on /v1/embeddings."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import httpx
import numpy as np
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families
from support import (
    Server,
    build_index,
    evaluator_embeddings,
    matryoshka_vectors,
    png_b64,
    split,
)

from core.nesting import truncate_normalize_np

KEY = "uvicorn-key"


@pytest.fixture
def serve(checkpoint, tmp_path):
    servers = []

    def start(index_dir, **env) -> Server:
        server = Server(checkpoint, index_dir, tmp_path, MOCO_API_KEY=KEY, **env)
        servers.append(server)
        return server

    yield start
    for s in servers:
        s.stop()


def forwards(url: str) -> float:
    text = httpx.get(url + "/metrics").text
    for family in text_string_to_metric_families(text):
        if family.name == "moco_model_forwards":
            return sum(s.value for s in family.samples if s.name.endswith("_total"))
    raise AssertionError("no moco_model_forwards metric")


def test_embed_search_and_concurrent_batching(serve, checkpoint, tiny_dataset, tmp_path):
    index = build_index(checkpoint, tiny_dataset, tmp_path / "index", limit=64)
    server = serve(index, MOCO_MAX_WAIT_MS="20", MOCO_MAX_BATCH_SIZE="32")
    ds = split(tiny_dataset).select(range(64))
    ref = evaluator_embeddings(checkpoint, ds)
    images = [png_b64(row["image"]) for row in ds]
    before = forwards(server.url)

    async def one(client: httpx.AsyncClient, i: int) -> list[float]:
        r = await client.post("/v1/embed", json={"images": [images[i]], "dim": 32})
        assert r.status_code == 200, r.text
        return r.json()["embeddings"][0]

    async def burst() -> np.ndarray:
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
            return np.array(await asyncio.gather(*(one(client, i) for i in range(64))))

    got = asyncio.run(burst())
    used = forwards(server.url) - before
    assert used < 64, f"{used} forwards for 64 requests: nothing was batched"
    np.testing.assert_allclose(got, truncate_normalize_np(ref, 32), atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)

    r = httpx.post(server.url + "/v1/search", json={"images": images[5:6], "k": 3, "dim": 16})
    assert r.json()["results"][0][0]["id"] == "train-5"
    r = httpx.post(server.url + "/v1/embed", json={"images": ["@@"], "dim": 16})
    assert r.status_code == 422 and "base64" in r.json()["detail"]
    assert httpx.get(server.url + "/healthz").status_code == 200


@pytest.mark.slow
def test_kill_9_after_acknowledged_adds_loses_nothing(serve, tmp_path, tiny_dataset):
    index = tmp_path / "durable"
    env = {"MOCO_COMPACT_EVERY": "7", "MOCO_CREATE_INDEX": "true"}
    server = serve(index, **env)
    vectors = matryoshka_vectors(20, 64, seed=11)
    auth = {"Authorization": f"Bearer {KEY}"}
    image = png_b64(split(tiny_dataset)[0]["image"])
    with httpx.Client(base_url=server.url, headers=auth) as client:
        for i, v in enumerate(vectors):
            item = {"id": f"k{i}", "vector": v.tolist(), "label": i, "metadata": {"n": i}}
            assert client.post("/v1/index/items", json={"items": [item]}).status_code == 200
        r = client.post("/v1/index/items", json={"items": [{"id": "img", "image": image}]})
        assert r.status_code == 200
        assert client.delete("/v1/index/items/k3").status_code == 200
    server.kill9()

    server = serve(index, **env)
    info = httpx.get(server.url + "/v1/model").json()
    assert info["index_size"] == 20
    r = httpx.post(server.url + "/v1/search", json={"vectors": vectors.tolist(), "k": 1})
    top = [hits[0] for hits in r.json()["results"]]
    for i, hit in enumerate(top):
        if i == 3:
            assert hit["id"] != "k3"
        else:
            assert hit == {
                "id": f"k{i}",
                "score": pytest.approx(1.0, abs=1e-5),
                "label": i,
                "metadata": {"n": i},
            }
    r = httpx.post(server.url + "/v1/search", json={"images": [image], "k": 1})
    assert r.json()["results"][0][0]["id"] == "img"


@pytest.mark.slow
def test_cli_bad_checkpoint_is_one_line_exit_2(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    r = subprocess.run(
        [sys.executable, "-m", "server", "--checkpoint", str(bad)],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=120,
    )
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "bad.pt" in lines[0] and "Traceback" not in r.stderr
    r = subprocess.run(
        [sys.executable, "-m", "server", "--port", "nope"], capture_output=True, text=True
    )
    assert r.returncode == 2 and "--port" in r.stderr


def test_openai_client_embeddings_and_its_error_handling(serve, checkpoint, tiny_dataset):
    server = serve(None)
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    ds = split(tiny_dataset, "test").select(range(3))
    ref = truncate_normalize_np(evaluator_embeddings(checkpoint, ds), 16)
    images = [png_b64(row["image"]) for row in ds]
    inputs = [images[0], "data:image/png;base64," + images[1], images[2]]

    assert [m.id for m in client.models.list()] == ["moco-matryoshka"]
    # the client asks for base64 by default and decodes little-endian float32 itself
    r = client.embeddings.create(input=inputs, model="moco-matryoshka", dimensions=16)
    assert r.object == "list" and r.model == "moco-matryoshka"
    assert [d.index for d in r.data] == [0, 1, 2]
    assert r.usage.prompt_tokens == r.usage.total_tokens == 3
    got = np.array([d.embedding for d in r.data], dtype=np.float32)
    np.testing.assert_allclose(got, ref, atol=1e-5)
    floats = client.embeddings.create(
        input=inputs, model="moco-matryoshka", dimensions=16, encoding_format="float"
    )
    assert np.array_equal(np.array([d.embedding for d in floats.data], dtype=np.float32), got)
    one = client.embeddings.create(input=images[0], model="moco-matryoshka")
    assert len(one.data) == 1 and len(one.data[0].embedding) == 64  # the full dim

    with pytest.raises(openai.BadRequestError) as bad:
        client.embeddings.create(input=images[0], model="moco-matryoshka", dimensions=12)
    assert bad.value.status_code == 400 and bad.value.param == "dimensions"
    assert "dimensions 12 is not allowed; allowed dims: 8, 16, 32, 64" in bad.value.message
    with pytest.raises(openai.BadRequestError) as bad:
        client.embeddings.create(input="not an image", model="moco-matryoshka")
    assert bad.value.param == "input" and "image 0 is not valid base64" in bad.value.message
    with pytest.raises(openai.BadRequestError) as bad:
        client.embeddings.create(input=[[1, 2, 3]], model="moco-matryoshka")
    assert "not token ids" in bad.value.message
    with pytest.raises(openai.NotFoundError) as missing:
        client.embeddings.create(input=images[0], model="text-embedding-3-small")
    assert missing.value.code == "model_not_found" and "moco-matryoshka" in missing.value.message
