"""Server benchmarks: (a) /v1/embed under concurrent load vs the bare model, (b) adaptive vs
exact full-dim search latency and recall@10. Prints ratios; writes bench/results/server.json.

(a) A real `python -m server` (uvicorn) is hit by `--concurrency` async clients sending one
    image per request; its images/s is divided by the in-process model's images/s at the
    server's max batch size (same torch thread count). A ratio near 1 means batching,
    decoding and HTTP cost little next to the model.
(b) The server's own IndexStore over N random Matryoshka-like vectors (energy decaying along
    the dims, like a trained MRL embedding): one query at a time, as requests arrive.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import torch
from PIL import Image

from server.store import IndexStore, write_generation
from trainer import shapes
from trainer.checkpoint import load_checkpoint
from trainer.config import TrainConfig
from trainer.model import load_encoder
from trainer.preprocess import EvalPreprocess
from trainer.search import set_threads

RESULTS = Path(__file__).parent / "results"


def ensure_checkpoint(path: Path, workdir: Path) -> Path:
    """The given checkpoint, or a 2-step one (weights do not matter for throughput)."""
    if path.is_file():
        return path
    from trainer.train import train

    print(f"{path} missing: training a 2-step checkpoint for the benchmark", file=sys.stderr)
    out = workdir / "run"
    train(
        TrainConfig(
            output_dir=out,
            cache_dir=Path("data"),
            max_steps=2,
            epochs=1,
            workers=0,
            device="cpu",
            resume="never",
        )
    )
    return out / "checkpoint.pt"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def model_throughput(checkpoint: Path, images: list[Image.Image], batch: int, seconds: float):
    ckpt = load_checkpoint(checkpoint)
    encoder = load_encoder(ckpt, "cpu")
    pre = EvalPreprocess.of(ckpt.model)
    x = torch.stack([pre(im) for im in images[:batch]])
    with torch.inference_mode():
        encoder(x)
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            encoder(x)
            n += len(x)
    return n / (time.perf_counter() - start)


async def load_test(url: str, payloads: list[str], concurrency: int, seconds: float, per: int):
    done = 0
    stop = time.perf_counter() + seconds

    async def worker(client: httpx.AsyncClient, w: int) -> None:
        nonlocal done
        i = w
        while time.perf_counter() < stop:
            body = {"images": [payloads[(i + j) % len(payloads)] for j in range(per)], "dim": 16}
            r = await client.post("/v1/embed", json=body)
            r.raise_for_status()
            done += per
            i += concurrency * per

    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        await client.post("/v1/embed", json={"images": payloads[:1]})
        start = time.perf_counter()
        await asyncio.gather(*(worker(client, w) for w in range(concurrency)))
        return done / (time.perf_counter() - start)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc), to see where the cores went."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def metric_sum(text: str, name: str) -> float:
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name))


def bench_embed(args, checkpoint: Path) -> dict:
    model = load_checkpoint(checkpoint).model
    size = model.image_size
    arrays, _ = shapes.generate(256, size, seed=0)
    images = [Image.fromarray(np.asarray(a)) for a in arrays]
    payloads = []
    for im in images:
        buf = io.BytesIO()
        im.save(buf, "PNG")
        payloads.append(base64.b64encode(buf.getvalue()).decode())
    model_ips = model_throughput(checkpoint, images, args.batch_size, args.seconds)

    port = free_port()
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(args.threads),
        "MOCO_TORCH_THREADS": str(args.threads),
        "MOCO_MAX_BATCH_SIZE": str(args.batch_size),
        "MOCO_MAX_WAIT_MS": str(args.max_wait_ms),
        "MOCO_MAX_QUEUE": "1024",
    }
    argv = [sys.executable, "-m", "server", "--checkpoint", str(checkpoint), "--port", str(port)]
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("bench: the server did not start")
            time.sleep(0.3)
        cpu0, wall0 = cpu_seconds(proc.pid), time.perf_counter()
        server_ips = asyncio.run(
            load_test(url, payloads, args.concurrency, args.seconds, args.images_per_request)
        )
        server_cpu = (cpu_seconds(proc.pid) - cpu0) / (time.perf_counter() - wall0)
        text = httpx.get(url + "/metrics").text
    finally:
        proc.terminate()
        proc.wait(30)
    forwards = metric_sum(text, "moco_model_forwards_total")
    images_total = metric_sum(text, "moco_batch_size_sum")
    return {
        "image_size": size,
        "arch": model.arch,
        "batch_size": args.batch_size,
        "concurrency": args.concurrency,
        "torch_threads": args.threads,
        "server_images_per_s": server_ips,
        "model_images_per_s": model_ips,
        "ratio_server_over_model": server_ips / model_ips,
        "mean_batch": images_total / max(forwards, 1),
        "server_cpu_cores_busy": server_cpu,
        "images_per_request": args.images_per_request,
        "server_cpu_ms_per_image": 1000 * server_cpu / server_ips,
        "ratio_per_server_core": server_ips / server_cpu / model_ips,
    }


def bench_search(args) -> dict:
    set_threads(args.threads)
    width, n = args.width, args.items
    rng = np.random.default_rng(0)
    scale = (1.0 / np.sqrt(1.0 + np.arange(width))).astype(np.float32)
    queries = (rng.standard_normal((args.queries, width)) * scale).astype(np.float32)
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        chunks = (
            (rng.standard_normal((min(65536, n - s), width)) * scale).astype(np.float32)
            for s in range(0, n, 65536)
        )
        items = ({"id": f"r{i}", "label": None, "metadata": None} for i in range(n))
        write_generation(Path(tmp), 0, width, n, chunks, items, {"fingerprint": "bench"})
        store = IndexStore.open(Path(tmp), "bench", width, writable=False)
        exact_s, exact_ids = time_search(store, queries, width, None, args.k)
        rows = []
        for dim in args.dims:
            for factor in args.factors:
                t, ids = time_search(store, queries, dim, width, args.k, factor * args.k)
                recall = np.mean(
                    [len(set(a) & set(b)) / args.k for a, b in zip(ids, exact_ids, strict=True)]
                )
                rows.append(
                    {
                        "dim": dim,
                        "rerank_dim": width,
                        "shortlist": factor * args.k,
                        "ms_per_query": 1000 * t,
                        "speedup_vs_exact": exact_s / t,
                        "recall_at_10": float(recall),
                    }
                )
        store.close()
    return {
        "items": n,
        "width": width,
        "index_mb": n * width * 4 / 2**20,
        "faiss_threads": args.threads,
        "queries": args.queries,
        "exact_ms_per_query": 1000 * exact_s,
        "adaptive": rows,
    }


def time_search(store, queries, dim, rerank_dim, k, shortlist=0):
    store.search(queries[:2], k, dim, rerank_dim, shortlist)  # builds the per-dim index
    ids = []
    start = time.perf_counter()
    for q in queries:
        _, r = store.search(q[None], k, dim, rerank_dim, shortlist)
        ids.append(r[0].tolist())
    return (time.perf_counter() - start) / len(queries), ids


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", type=Path, default=Path("runs/default/checkpoint.pt"))
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--images-per-request", type=int, default=1)
    p.add_argument("--max-wait-ms", type=float, default=5)
    p.add_argument("--seconds", type=float, default=10)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--items", type=int, default=200_000)
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--dims", type=lambda s: [int(v) for v in s.split(",")], default=[16, 32, 64])
    p.add_argument("--factors", type=lambda s: [int(v) for v in s.split(",")], default=[10, 40])
    p.add_argument("--skip-embed", action="store_true")
    p.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()))
    p.add_argument("--output", type=Path, default=RESULTS / "server.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    result = {
        "machine": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }
    if not args.skip_embed:
        with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
            checkpoint = ensure_checkpoint(args.checkpoint, Path(tmp))
            result["checkpoint_fingerprint"] = load_checkpoint(checkpoint).fingerprint
            e = result["embed"] = bench_embed(args, checkpoint)
        print(
            f"embed: server {e['server_images_per_s']:.0f} img/s under {e['concurrency']} "
            f"clients / model {e['model_images_per_s']:.0f} img/s at batch {e['batch_size']} "
            f"= {e['ratio_server_over_model']:.2f} (mean batch {e['mean_batch']:.1f}); "
            f"per busy server core "
            f"{e['ratio_per_server_core']:.2f} ({e['server_cpu_cores_busy']:.2f} cores busy)"
        )
    s = result["search"] = bench_search(args)
    print(
        f"search: {s['items']} x {s['width']} ({s['index_mb']:.0f} MiB), exact full-dim "
        f"{s['exact_ms_per_query']:.2f} ms/query"
    )
    for r in s["adaptive"]:
        print(
            f"  adaptive dim {r['dim']:>3} -> {r['rerank_dim']}, shortlist {r['shortlist']:>3}:"
            f" {r['ms_per_query']:.2f} ms/query, {r['speedup_vs_exact']:.1f}x faster, "
            f"recall@10 {r['recall_at_10']:.3f}"
        )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
