"""server.fastpath answers POST /v1/embed exactly as the FastAPI route does, and leaves every
request it does not fully understand to that route."""

from __future__ import annotations

import json

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families
from test_server_helpers import png_b64, train_tiny

import server.fastpath
from server.app import create_app
from server.fastpath import EmbedFastPath
from server.settings import Settings

TIMING = {"x-total-time", "server-timing", "x-queue-time", "x-preprocess-time", "x-inference-time"}


@pytest.fixture(scope="module")
def clients(tiny_dataset, tmp_path_factory):
    """(the app as served, the same app without the fast path)."""
    settings = Settings(
        checkpoint=train_tiny(tiny_dataset, tmp_path_factory.mktemp("run")),
        max_wait_ms=1,
        torch_threads=1,
        max_images=4,
    )
    served, reference = create_app(settings), create_app(settings)
    reference.user_middleware = [m for m in reference.user_middleware if m.cls is not EmbedFastPath]
    with TestClient(served) as a, TestClient(reference) as b:
        yield a, b


rng = np.random.default_rng(0)
IMAGES = [png_b64(Image.fromarray(rng.integers(0, 255, (36, 36, 3), np.uint8))) for _ in range(3)]
JSON = "application/json"
CASES = {  # name: (body, content type, whether the fast path answers it itself)
    "one image": ({"images": IMAGES[:1]}, JSON, True),
    "three, dim 16": ({"images": IMAGES, "dim": 16}, JSON, True),
    "base64": ({"images": IMAGES[:2], "dim": 8, "encoding_format": "base64"}, JSON, True),
    "float16": ({"images": IMAGES[:1], "encoding_format": "base64_float16"}, JSON, True),
    "charset": ({"images": IMAGES[:1]}, "application/json; charset=utf-8", True),
    "dim not allowed": ({"images": IMAGES[:1], "dim": 12}, JSON, True),
    "not base64": ({"images": ["%%%"]}, JSON, True),
    "not an image": ({"images": ["aGVsbG8="]}, JSON, True),
    "too many images": ({"images": IMAGES + IMAGES}, JSON, True),
    "unknown field": ({"images": IMAGES[:1], "k": 3}, JSON, False),
    "no images": ({"images": []}, JSON, False),
    "dim as text": ({"images": IMAGES[:1], "dim": "16"}, JSON, True),  # lax, as FastAPI
    "NaN dim": (b'{"images": ["x"], "dim": NaN}', JSON, False),
    "not JSON": (b"{images", JSON, False),
    "text/plain": ({"images": IMAGES[:1]}, "text/plain", False),
    "no content type": ({"images": IMAGES[:1]}, None, False),
}


@pytest.mark.parametrize("name", list(CASES))
def test_same_answer_with_and_without_the_fast_path(clients, name, monkeypatch):
    body, content_type, fast = CASES[name]
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"content-type": content_type} if content_type else {}
    taken = []
    answer, handlers = server.fastpath.answer, clients[0].app.exception_handlers
    monkeypatch.setattr(server.fastpath, "answer", lambda *a: taken.append(1) or answer(*a))
    refused = handlers[server.fastpath.ApiError]
    monkeypatch.setitem(
        handlers, server.fastpath.ApiError, lambda *a: taken.append(1) or refused(*a)
    )
    got, want = (c.post("/v1/embed", content=data, headers=headers) for c in clients)
    assert bool(taken) == fast
    assert got.status_code == want.status_code
    assert got.content == want.content
    assert {k: v for k, v in got.headers.items() if k not in TIMING} == {
        k: v for k, v in want.headers.items() if k not in TIMING
    }
    assert (set(got.headers) & TIMING) == (set(want.headers) & TIMING)


def test_fast_answers_are_counted_under_the_route(clients):
    served = clients[0]
    served.post("/v1/embed", json={"images": IMAGES[:1]}).raise_for_status()
    samples = [
        s
        for family in text_string_to_metric_families(served.get("/metrics").text)
        for s in family.samples
        if s.name == "moco_requests_total" and s.labels.get("endpoint") == "/v1/embed"
    ]
    assert any(s.labels["status"] == "200" and s.value >= 1 for s in samples)
