"""Hostile but well-formed requests: nothing accepted can break a response or hide an item."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from support import matryoshka_vectors

from core.checkpoint import load_checkpoint
from index.store import IndexStore
from server.app import create_app
from server.settings import Settings

KEY = "k"
AUTH = {"Authorization": f"Bearer {KEY}", "content-type": "application/json"}


@pytest.fixture
def writer(checkpoint, tmp_path):
    settings = Settings(
        checkpoint=checkpoint,
        index_dir=tmp_path / "index",
        create_index=True,
        api_key=KEY,
        torch_threads=1,
        faiss_threads=1,
    )
    with TestClient(create_app(settings)) as client:
        yield client


def add_raw(client, text: str):
    return client.post("/v1/index/items", content=text.encode(), headers=AUTH)


def vec(seed: int = 0) -> str:
    return json.dumps(matryoshka_vectors(1, 64, seed=seed)[0].tolist())


@pytest.mark.parametrize(
    ("field", "says"),
    [
        ('"label": "\\ud800"', "surrogate"),
        ('"metadata": {"k": "a\\udfffb"}', "surrogate"),
        ('"metadata": {"\\ud83d": 1}', "surrogate"),
        ('"metadata": {"k": [{"deep": "\\udc00"}]}', "surrogate"),
        ('"metadata": {"k": NaN}', "NaN or Infinity"),
        ('"metadata": {"k": [1, -Infinity]}', "NaN or Infinity"),
        ('"label": true', "label"),  # not the label 1: the schema says integer or string
    ],
)
def test_unservable_values_refused_at_the_door(writer, field, says):
    r = add_raw(writer, f'{{"items": [{{"id": "x", "vector": {vec()}, {field}}}]}}')
    assert r.status_code == 422, r.text
    assert says in r.json()["detail"]
    r = writer.post("/v1/search", json={"vectors": [json.loads(vec())], "k": 3})
    assert r.status_code == 200 and r.json()["results"] == [[]]


def test_valid_unicode_is_stored_and_returned(writer):
    label, meta = "chat \U0001f431 é", {"ключ": ["значение", 1.5, None, True]}
    item = {"id": "u", "vector": json.loads(vec()), "label": label, "metadata": meta}
    assert writer.post("/v1/index/items", json={"items": [item]}, headers=AUTH).status_code == 200
    hit = writer.post("/v1/search", json={"vectors": [item["vector"]], "k": 1}).json()
    assert hit["results"][0][0]["label"] == label and hit["results"][0][0]["metadata"] == meta


@pytest.mark.parametrize("bad", [".", "..", "a/b", "", "é"])
def test_ids_must_be_safe_path_segments(writer, bad):
    item = {"id": bad, "vector": json.loads(vec())}
    r = writer.post("/v1/index/items", json={"items": [item]}, headers=AUTH)
    assert r.status_code == 422 and "id" in r.json()["detail"]


def test_dotted_ids_that_are_path_segments_work(writer):
    for i, name in enumerate(["...", ".a", "..b", "a.b"]):
        item = {"id": name, "vector": json.loads(vec(i))}
        assert writer.post("/v1/index/items", json={"items": [item]}, headers=AUTH).is_success
        assert writer.delete(f"/v1/index/items/{name}", headers=AUTH).json()["deleted"] == name


def test_stored_unservable_strings_cannot_break_search(checkpoint, tmp_path):
    """Items stored before the door refused them (or written by hand) still serve."""
    ckpt = load_checkpoint(checkpoint)
    index = tmp_path / "old"
    store = IndexStore.open(index, ckpt.fingerprint, 64, writable=True, create={})
    x = matryoshka_vectors(2, 64, seed=4)
    bad = {"id": "bad", "label": "\ud800", "metadata": {"\udfff": ["x\ud800", float("nan")]}}
    store.add([bad, {"id": "ok", "label": 1, "metadata": None}], x)
    store.close()
    settings = Settings(checkpoint=checkpoint, index_dir=index, read_only=True, torch_threads=1)
    with TestClient(create_app(settings)) as client:
        for _ in range(2):  # the connection survives: the second request is answered too
            r = client.post("/v1/search", json={"vectors": x.tolist(), "k": 2})
            assert r.status_code == 200, r.text
        hits = {h["id"]: h for h in r.json()["results"][0]}
        assert hits["bad"]["label"] == "\ufffd" * 3
        assert hits["bad"]["metadata"] == {"\ufffd" * 3: ["x\ufffd\ufffd\ufffd", None]}


@pytest.mark.parametrize("scale", [1e20, 3e38 / 4, 1e-40])
def test_huge_and_denormal_vectors_are_findable(writer, scale):
    """float32 norms of these overflow or underflow: they must still normalise exactly."""
    x = matryoshka_vectors(4, 64, seed=5)
    x = x / np.abs(x).max(axis=1, keepdims=True)
    stored = (x * np.float32(scale)).astype(np.float32)
    assert np.all(np.abs(stored).max(axis=1) > 0)
    items = [{"id": f"s{i}", "vector": v.tolist()} for i, v in enumerate(stored)]
    r = writer.post("/v1/index/items", json={"items": items}, headers=AUTH)
    assert r.status_code == 200, r.text
    for dim in (8, 64):
        r = writer.post("/v1/search", json={"vectors": x.tolist(), "k": 1, "dim": dim})
        top = [hits[0] for hits in r.json()["results"]]
        assert [h["id"] for h in top] == ["s0", "s1", "s2", "s3"], (scale, dim)
        assert all(h["score"] == pytest.approx(1.0, abs=1e-2) for h in top), (scale, dim, top)


def test_vector_without_direction_at_the_smallest_dim_refused(writer):
    v = [0.0] * 8 + [1.0] * 56
    r = writer.post("/v1/index/items", json={"items": [{"id": "z", "vector": v}]}, headers=AUTH)
    assert r.status_code == 422 and "dim 8" in r.json()["detail"]
    assert writer.post("/v1/search", json={"vectors": [v], "dim": 8}).status_code == 422
    assert writer.post("/v1/search", json={"vectors": [v], "dim": 16}).status_code == 200


MALFORMED = {
    "not utf-8": b'{"images": ["\xff\xfe"]}',
    "invalid json": b'{"images": [',
    "nested 1,000 deep": b"[" * 1000 + b"]" * 1000,
    "metadata nested 1,000 deep": b'{"items": [{"id": "a", "vector": [1], "metadata": {"k": '
    + b"[" * 1000
    + b"]" * 1000
    + b"}}]}",
}


@pytest.mark.parametrize("path", ["/v1/embed", "/v1/search", "/v1/index/items"])
@pytest.mark.parametrize("name", list(MALFORMED))
def test_malformed_bodies_answer_one_documented_status(writer, path, name):
    r = writer.post(path, content=MALFORMED[name], headers=AUTH)
    assert r.status_code == 400, (name, r.text)
    assert r.json()["error"] == "malformed_body"


@pytest.mark.parametrize("depth", [9, 300])
def test_deep_metadata_is_refused(writer, depth):
    deep = "[" * depth + "]" * depth
    r = add_raw(
        writer, f'{{"items": [{{"id": "d", "vector": {vec()}, "metadata": {{"k": {deep}}}}}]}}'
    )
    assert r.status_code == 422 and "nested deeper than 8" in r.json()["detail"], r.text


def test_multipart_without_boundary_is_malformed(writer):
    headers = {"content-type": "multipart/form-data"}
    r = writer.post("/v1/embed/files", content=b"--x\r\n\r\nzz", headers=headers)
    assert r.status_code == 400 and r.json()["error"] == "malformed_body"


BOUNDARY = "zz9Boundary"


def form(*fields: tuple[str, bytes | str], end: bool = True) -> bytes:
    """A multipart body; a field named `files` is sent as a file."""
    out = b""
    for name, data in fields:
        disposition = f'form-data; name="{name}"' + (
            '; filename="x.png"' if name == "files" else ""
        )
        out += f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n\r\n".encode()
        out += (data.encode() if isinstance(data, str) else data) + b"\r\n"
    return out + (f"--{BOUNDARY}--\r\n".encode() if end else b"")


def post_form(client, path: str, body: bytes):
    headers = {**AUTH, "content-type": f"multipart/form-data; boundary={BOUNDARY}"}
    return client.post(path, content=body, headers=headers)


@pytest.fixture(scope="module")
def png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), (200, 40, 90)).save(buf, "PNG")
    return buf.getvalue()


@pytest.mark.parametrize("path", ["/v1/embed/files", "/v1/search/files"])
def test_multipart_preamble_and_epilogue_are_ignored(writer, png, path):
    """RFC 2046: text before the first boundary and after the last one is not part of the form."""
    plain = post_form(writer, path, form(("files", png), ("dim", "8")))
    wrapped = post_form(
        writer, path, b"This is a preamble.\r\n" + form(("files", png), ("dim", "8")) + b"bye"
    )
    assert plain.status_code == 200, plain.text
    assert wrapped.status_code == 200 and wrapped.json() == plain.json()


@pytest.mark.parametrize("path", ["/v1/embed/files", "/v1/search/files"])
def test_multipart_without_closing_boundary_is_refused(writer, png, path):
    """A cut upload is not embedded in part: the two complete file parts are not answered."""
    r = post_form(writer, path, form(("files", png), ("files", png), ("files", png), end=False))
    assert r.status_code == 400 and r.json()["error"] == "malformed_body", r.text
    assert f"closing boundary '--{BOUNDARY}--'" in r.json()["detail"]


@pytest.mark.parametrize("path", ["/v1/embed/files", "/v1/search/files"])
def test_multipart_unknown_field_is_refused_with_the_allowed_ones(writer, png, path):
    r = post_form(writer, path, form(("files", png), ("dimension", "8")))
    assert r.status_code == 422, r.text
    assert "'dimension' is not one this route reads; allowed: " in r.json()["detail"]
    assert "dim" in r.json()["detail"].split("allowed: ")[1].split(", ")


@pytest.mark.parametrize("path", ["/v1/embed/files", "/v1/search/files"])
def test_multipart_repeated_field_is_refused(writer, png, path):
    r = post_form(writer, path, form(("files", png), ("dim", "8"), ("dim", "16")))
    assert r.status_code == 422, r.text
    assert "'dim' is given 2 times; send it once" in r.json()["detail"]
    assert post_form(writer, path, form(("files", png), ("files", png))).status_code == 200


@pytest.mark.parametrize(
    ("knob", "value", "says"),
    [
        ("k", True, "must be an integer, not true"),
        ("shortlist", False, "must be an integer, not false"),
        ("nprobe", True, "must be an integer, not true"),
        ("ef_search", True, "must be an integer, not true"),
        ("use_ann", 1, "must be true or false, not 1"),
    ],
)
def test_search_knobs_are_not_read_across_json_types(writer, knob, value, says):
    """JSON true is not k=1 and 1 is not use_ann=true (the schema says integer / boolean)."""
    body = {"vectors": [json.loads(vec())], "k": 3, knob: value}
    r = writer.post("/v1/search", json=body, headers=AUTH)
    assert r.status_code == 422 and says in r.json()["detail"], r.text


def test_openapi_states_the_static_bounds(writer):
    spec = writer.get("/openapi.json").json()
    schemas = spec["components"]["schemas"]
    k = schemas["VectorSearch"]["properties"]["k"]
    assert k["minimum"] == 1 and k["maximum"] >= 1000
    vectors = schemas["VectorSearch"]["properties"]["vectors"]
    assert vectors["minItems"] == 1 and vectors["items"]["minItems"] >= 1
    assert schemas["VectorSearch"]["additionalProperties"] is False
    assert schemas["AddRequest"]["properties"]["items"]["minItems"] == 1
    search_body = spec["paths"]["/v1/search"]["post"]["requestBody"]["content"]
    assert list(search_body) == ["application/json"]
    assert len(search_body["application/json"]["schema"]["oneOf"]) == 2
    files = spec["paths"]["/v1/embed/files"]["post"]["requestBody"]["content"]
    assert list(files) == ["multipart/form-data"]
    metrics = spec["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    assert list(metrics) == ["text/plain"]
    assert writer.get("/metrics").headers["content-type"].startswith("text/plain")
    for path in ("/v1/embed", "/v1/embed/files", "/v1/search", "/v1/index/items"):
        responses = spec["paths"][path]["post"]["responses"]
        assert {"400", "415", "422"} <= set(responses), path
    assert {"HTTPBearer", "APIKeyHeader"} <= set(spec["components"]["securitySchemes"])


def test_openapi_is_narrowed_to_the_checkpoint_and_settings(writer):
    """What depends on the loaded checkpoint and the operator's limits is in /openapi.json."""
    schemas = writer.get("/openapi.json").json()["components"]["schemas"]
    search = schemas["VectorSearch"]["properties"]
    assert search["dim"]["anyOf"][0]["enum"] == [8, 16, 32, 64]
    assert search["rerank_dim"]["anyOf"][0]["enum"] == [8, 16, 32, 64]
    assert search["k"]["maximum"] == 1000 and search["vectors"]["maxItems"] == 64
    assert search["vectors"]["items"]["minItems"] == search["vectors"]["items"]["maxItems"] == 64
    assert schemas["VectorItem"]["properties"]["vector"]["maxItems"] == 64
    assert schemas["EmbedRequest"]["properties"]["dim"]["anyOf"][0]["enum"] == [8, 16, 32, 64]


def test_any_matching_api_key_header_is_accepted(writer):
    """Clients (and fuzzers) may send both headers; one right key is enough, none is a 401."""
    item = {"id": "both", "vector": json.loads(vec(7))}
    right, wrong = {"X-API-Key": KEY}, {"X-API-Key": "nope"}
    bearer = {"Authorization": f"Bearer {KEY}"}
    r = writer.post("/v1/index/items", json={"items": [item]}, headers={**bearer, **wrong})
    assert r.status_code == 200, r.text
    r = writer.delete("/v1/index/items/both", headers={"Authorization": "Bearer x", **right})
    assert r.status_code == 200
    r = writer.delete("/v1/index/items/both", headers={"Authorization": "Bearer x", **wrong})
    assert r.status_code == 401
