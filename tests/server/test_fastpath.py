"""server.fastpath answers POST /v1/embed, /v1/embed/files and /v1/embeddings exactly as the
FastAPI routes do, and leaves every request it does not fully understand to those routes."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families
from support import png_b64, train_tiny

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
        max_body_bytes=64_000,
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


FILES = [base64.b64decode(i) for i in IMAGES]
BOUNDARY = "b7MA4YWxkTrZu0gW"
FORM = f"multipart/form-data; boundary={BOUNDARY}"


def part(name: str, data: bytes | str, filename: str | None = None, extra: str = "") -> bytes:
    disposition = f'form-data; name="{name}"' + (
        f'; filename="{filename}"' if filename is not None else ""
    )
    head = f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n{extra}\r\n".encode()
    return head + (data.encode() if isinstance(data, str) else data) + b"\r\n"


def form(*parts: bytes, end: bytes = f"--{BOUNDARY}--\r\n".encode()) -> bytes:
    return b"".join(parts) + end


def files(*datas: bytes) -> list[bytes]:
    return [
        part("files", d, f"{i}.png", "Content-Type: image/png\r\n") for i, d in enumerate(datas)
    ]


ONE = files(FILES[0])
UPLOADS = {  # as CASES; None: refused before the fast path
    "one file": (form(*ONE), FORM, True),
    "as the bench sends it": (
        form(
            part("dim", "16"),
            part("files", FILES[1], "x", "Content-Type: application/octet-stream\r\n"),
        ),
        FORM,
        True,
    ),
    "three files, dim 16": (form(*files(*FILES), part("dim", "16")), FORM, True),
    "base64, dim 8": (
        form(*files(*FILES[:2]), part("dim", "8"), part("encoding_format", "base64")),
        FORM,
        True,
    ),
    "float16": (form(*ONE, part("encoding_format", "base64_float16")), FORM, True),
    "quoted boundary": (form(*ONE), f'multipart/form-data; boundary="{BOUNDARY}"', True),
    "dim not allowed": (form(*ONE, part("dim", "12")), FORM, True),
    "not an image": (form(*files(b"hello")), FORM, True),
    "too many files": (form(*files(*FILES, *FILES)), FORM, True),
    "no filename": (form(part("files", FILES[0])), FORM, False),
    "empty filename": (form(part("files", FILES[0], "")), FORM, False),
    "empty file": (form(*files(b"")), FORM, False),
    "unknown field": (form(*ONE, part("k", "3")), FORM, False),
    "dim as words": (form(*ONE, part("dim", "sixteen")), FORM, False),
    "dim 016": (form(*ONE, part("dim", "016")), FORM, False),
    "dim 0": (form(*ONE, part("dim", "0")), FORM, False),
    "dim empty": (form(*ONE, part("dim", "")), FORM, False),
    "dim too large": (form(*ONE, part("dim", "70000")), FORM, False),
    "dim twice": (form(*ONE, part("dim", "8"), part("dim", "16")), FORM, False),
    "dim as a file": (form(*ONE, part("dim", "16", "d.txt")), FORM, False),
    "unknown encoding": (form(*ONE, part("encoding_format", "hex")), FORM, False),
    "no files": (form(part("dim", "16")), FORM, False),
    "no parts": (form(), FORM, False),
    "preamble and epilogue": (b"a preamble\r\n" + form(*ONE) + b"an epilogue", FORM, True),
    "no final boundary": (form(*ONE, end=b""), FORM, None),  # server.forms, before it
    "cut in a part": (form(*ONE)[:300], FORM, None),
    "no boundary": (form(*ONE), "multipart/form-data", False),
    "another boundary": (form(*ONE), "multipart/form-data; boundary=other", None),
    "charset": (form(*ONE), FORM + "; charset=latin-1", False),
    "not form-data": (form(*ONE), f"multipart/mixed; boundary={BOUNDARY}", False),
    "too large": (form(*files(b"x" * 70_000)), FORM, None),  # the body limit, before it
    "JSON here": (json.dumps({"images": IMAGES[:1]}).encode(), JSON, False),
    "no content type": (form(*ONE), None, False),
}
REQUESTS = {("/v1/embed", name): case for name, case in CASES.items()} | {
    ("/v1/embed/files", name): case for name, case in UPLOADS.items()
}
REQUESTS["/v1/embed", "a form"] = (form(*ONE), FORM, False)
MODEL = Settings.model_fields["model_name"].default
OPENAI = {
    "one image": ({"input": IMAGES[0], "model": MODEL}, JSON, True),
    "three, dimensions 16": ({"input": IMAGES, "model": MODEL, "dimensions": 16}, JSON, True),
    "base64": ({"input": IMAGES[:2], "model": MODEL, "encoding_format": "base64"}, JSON, True),
    "user": ({"input": IMAGES[:1], "model": MODEL, "user": "u1"}, JSON, True),
    "another model": ({"input": IMAGES[:1], "model": "gpt"}, JSON, True),
    "dimensions not allowed": ({"input": IMAGES[:1], "model": MODEL, "dimensions": 12}, JSON, True),
    "not an image": ({"input": ["aGVsbG8="], "model": MODEL}, JSON, True),
    "too many images": ({"input": IMAGES + IMAGES, "model": MODEL}, JSON, True),
    "tokens": ({"input": [[1, 2]], "model": MODEL}, JSON, False),
    "no model": ({"input": IMAGES[:1]}, JSON, False),
    "float16": (
        {"input": IMAGES[:1], "model": MODEL, "encoding_format": "base64_float16"},
        JSON,
        False,
    ),
    "not JSON": (b"{input", JSON, False),
    "no content type": ({"input": IMAGES[:1], "model": MODEL}, None, False),
    "a form": (form(*ONE), FORM, False),
}
REQUESTS |= {("/v1/embeddings", name): case for name, case in OPENAI.items()}


def inner_app_calls(client, monkeypatch) -> list[int]:
    """The requests the fast path passes on to the FastAPI app (appended to as they go)."""
    layer = client.app.middleware_stack
    while not isinstance(layer, EmbedFastPath):
        layer = layer.app
    calls, app = [], layer.app
    monkeypatch.setattr(layer, "app", lambda *a: calls.append(1) or app(*a))
    return calls


@pytest.mark.parametrize(("path", "name"), list(REQUESTS), ids=[f"{p} {n}" for p, n in REQUESTS])
def test_same_answer_with_and_without_the_fast_path(clients, path, name, monkeypatch):
    body, content_type, fast = REQUESTS[path, name]
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"content-type": content_type} if content_type else {}
    passed_on = inner_app_calls(clients[0], monkeypatch)
    got, want = (c.post(path, content=data, headers=headers) for c in clients)
    assert passed_on == ([1] if fast is False else [])
    assert got.status_code == want.status_code
    assert got.content == want.content
    assert {k: v for k, v in got.headers.items() if k not in TIMING} == {
        k: v for k, v in want.headers.items() if k not in TIMING
    }
    assert (set(got.headers) & TIMING) == (set(want.headers) & TIMING)


@pytest.mark.parametrize(
    ("path", "body", "content_type"),
    [
        ("/v1/embed", json.dumps({"images": IMAGES[:1]}).encode(), JSON),
        ("/v1/embed/files", form(*ONE), FORM),
        ("/v1/embeddings", json.dumps({"input": IMAGES[0], "model": MODEL}).encode(), JSON),
    ],
)
def test_fast_answers_are_counted_under_the_route(clients, path, body, content_type):
    served = clients[0]

    def count() -> float:
        return sum(
            s.value
            for family in text_string_to_metric_families(served.get("/metrics").text)
            for s in family.samples
            if s.name == "moco_requests_total"
            and s.labels.get("endpoint") == path
            and s.labels["status"] == "200"
        )

    before = count()
    served.post(path, content=body, headers={"content-type": content_type}).raise_for_status()
    assert count() == before + 1
