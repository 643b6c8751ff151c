"""HTTP smoke test of a running server, standard library only (runs on the container host).

`python3 docker/smoke_client.py http://127.0.0.1:PORT [READY_TIMEOUT_S]` waits for
/readyz, then calls /healthz, /v1/model, /v1/embed and /v1/search (plain and adaptive)
with a generated PNG, checks the answers and prints one JSON line. Exit 1 on a wrong answer.
"""

from __future__ import annotations

import base64
import json
import math
import struct
import sys
import time
import urllib.error
import urllib.request
import zlib


def png(size: int = 32) -> bytes:
    """An RGB gradient as PNG bytes (zlib + struct: no imaging library on the host)."""
    rows = b"".join(
        b"\0" + bytes(v for x in range(size) for v in (8 * x % 256, 8 * y % 256, 128))
        for y in range(size)
    )

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)
    idat = chunk(b"IDAT", zlib.compress(rows))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + idat + chunk(b"IEND", b"")


def call(base: str, path: str, body: dict | None = None) -> tuple[int, dict]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, method="POST" if data else "GET")
    req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def check(ok: bool, what: str, got: object) -> None:
    if not ok:
        print(f"smoke_client: {what}; got {json.dumps(got)[:500]}", file=sys.stderr)
        raise SystemExit(1)


def main(base: str, ready_timeout: float) -> dict:
    t0 = time.monotonic()
    while True:
        try:
            status, _ = call(base, "/readyz")
        except (urllib.error.URLError, ConnectionError, json.JSONDecodeError):
            status = 0
        if status == 200:
            break
        check(time.monotonic() - t0 < ready_timeout, f"/readyz not 200 in {ready_timeout}s", status)
        time.sleep(0.5)
    ready_s = time.monotonic() - t0
    status, health = call(base, "/healthz")
    check(status == 200, "/healthz", health)
    status, model = call(base, "/v1/model")
    check(status == 200 and model["nesting_list"], "/v1/model", model)
    dims = model["nesting_list"]
    image = base64.b64encode(png()).decode()
    status, emb = call(base, "/v1/embed", {"images": [image, image], "dim": dims[0]})
    vectors = emb.get("embeddings", []) if status == 200 else []
    norms = [math.sqrt(sum(v * v for v in vec)) for vec in vectors]
    unit = all(len(v) == dims[0] and abs(n - 1) < 1e-3 for v, n in zip(vectors, norms, strict=True))
    check(len(vectors) == 2 and unit, f"/v1/embed: 2 unit vectors of dim {dims[0]}", emb)
    status, hits = call(base, "/v1/search", {"images": [image], "dim": dims[1], "k": 5})
    check(status == 200 and len(hits["results"][0]) == 5, "/v1/search k=5", hits)
    adaptive = {"images": [image], "dim": dims[0], "rerank_dim": dims[-1], "k": 5}
    status, rerank = call(base, "/v1/search", adaptive)
    check(status == 200 and len(rerank["results"][0]) == 5, "/v1/search adaptive", rerank)
    status, bad = call(base, "/v1/embed", {"images": ["not base64!"], "dim": dims[0]})
    check(400 <= status < 500, "a bad image is a 4xx", bad)
    return {
        "ready_s": round(ready_s, 2),
        "model": {k: model[k] for k in ("arch", "nesting_list", "index_size") if k in model},
        "embed": {"dim": dims[0], "count": len(vectors), "norms": [round(n, 6) for n in norms]},
        "search_top1": hits["results"][0][0],
        "adaptive_top1": rerank["results"][0][0],
        "bad_image_status": status,
    }


if __name__ == "__main__":
    timeout = float(sys.argv[2]) if len(sys.argv) > 2 else 180.0
    print(json.dumps(main(sys.argv[1].rstrip("/"), timeout)))
