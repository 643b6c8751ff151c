"""Server benchmarks: (a) /v1/embed under load vs the bare model, per model; (b) adaptive vs
exact full-dim search latency and recall@10. Prints ratios; writes JSON (bench/results/).

(a) A real `python -m server` (uvicorn) is driven by a native load generator (`wrk`,
    `apt-get install wrk`), one image per request at `--concurrency` connections, so the
    client costs little next to the server. Without wrk a Python (httpx) client is used and
    the JSON says so: on 2 cores it saturates before the server does. The server's images/s
    is divided by the bare model's images/s at the server's batch size and torch threads,
    measured in the same run just before and just after the load (their mean is the
    reference; the shared machine's noise shows as their spread). Also: p50/p99 latency,
    server CPU per image (its /proc/<pid>/stat), the server's own queue/inference split,
    and /healthz latency measured meanwhile. Models: the default 32 px convnet and a
    ResNet-50 at 224 px, both with random weights (throughput does not depend on them).
(b) The server's own IndexStore over N random Matryoshka-like vectors (energy decaying along
    the dims, like a trained MRL embedding): one query at a time, as requests arrive.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import http.client
import io
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import torch
from common import RESULTS, free_port, write_result
from PIL import Image

from core.checkpoint import load_checkpoint, save_checkpoint
from core.encoder import load_encoder
from core.preprocess import EvalPreprocess, stored_size
from index.plan import SearchPlan
from index.search import set_threads
from index.store import IndexStore, write_generation
from server.codec import FastJSON, encode
from server.runtime import serving_encoder
from trainer.checkpointing import capture
from trainer.config import TrainConfig
from trainer.data import shapes
from trainer.moco import build_moco

MODELS = {
    "convnet": {"arch": "convnet", "image_size": 32, "nesting_list": [8, 16, 32, 64, 128, 256]},
    "resnet50": {
        "arch": "resnet50",
        "image_size": 224,
        "nesting_list": [8, 16, 32, 64, 128, 256, 512, 1024, 2048],
    },
}
WRK_DONE = """
done = function(s, latency, requests)
  local e = s.errors
  io.write(string.format(
    'WRKJSON {"requests": %d, "duration_s": %.6f, "bytes": %d, "errors": %d, "non_2xx": %d, '
    .. '"p50_ms": %.3f, "p90_ms": %.3f, "p99_ms": %.3f, "max_ms": %.3f, "mean_ms": %.3f}\\n',
    s.requests, s.duration / 1e6, s.bytes, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50) / 1e3, latency:percentile(90) / 1e3, latency:percentile(99) / 1e3,
    latency.max / 1e3, latency.mean / 1e3))
end
"""
WRK_BODIES = """
local bodies = {}
for n = 0, %(count)d - 1 do
  local f = assert(io.open(string.format("%(bodies)s/%%d", n), "rb"))
  bodies[#bodies + 1] = f:read("*a")
  f:close()
end
local i = 0
wrk.method = "POST"
wrk.headers["Content-Type"] = "%(content_type)s"
request = function()
  i = i %% #bodies + 1
  return wrk.format(nil, "%(path)s", nil, bodies[i])
end
"""
# the light second load: one connection, one GET /healthz every `interval` ms
WRK_HEALTH = """
wrk.path = "/healthz"
delay = function()
  return %(interval_ms)d
end
"""


def random_checkpoint(name: str, workdir: Path) -> Path:
    """A checkpoint of the named model with random weights (what the server loads)."""
    cfg = TrainConfig(**MODELS[name], output_dir=workdir, device="cpu", bn_splits=1)
    model = build_moco(cfg, bn_splits=1)
    path = workdir / f"{name}.pt"
    save_checkpoint(capture(cfg, model), path)
    return path


def encoded_images(size: int, n: int) -> tuple[list[Image.Image], list[bytes], str]:
    """Test images as files: PNG at 32 px (like the shapes data), JPEG for photo sizes."""
    side = stored_size(size)
    arrays, _ = shapes.generate(n, side, seed=0)
    images = [Image.fromarray(np.asarray(a)) for a in arrays]
    fmt = "PNG" if side <= 64 else "JPEG"
    files = []
    for im in images:
        buf = io.BytesIO()
        im.save(buf, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
        files.append(buf.getvalue())
    return images, files, fmt


def model_throughput(encoder, x: torch.Tensor, seconds: float) -> tuple[float, float]:
    """Bare forwards on one preprocessed batch, nothing else (no decode, no copy out):
    (images/s, CPU ms per image). CPU time does not count the time other jobs took the core."""
    with torch.inference_mode():
        encoder(x)
        n, start, cpu = 0, time.perf_counter(), time.process_time()
        while time.perf_counter() - start < seconds:
            encoder(x)
            n += len(x)
    return n / (time.perf_counter() - start), 1000 * (time.process_time() - cpu) / n


def gil_sensitivity(models: dict, x: torch.Tensor, seconds: float) -> dict:
    """Bare model images/s alone and next to one Python thread that never lets go of the GIL
    voluntarily (what the event loop is under load): why the server runs a traced model."""
    out = {}
    for name, model in models.items():
        alone, _ = model_throughput(model, x, seconds)
        stop = threading.Event()

        def spin(stop: threading.Event = stop) -> None:
            n = 0
            while not stop.is_set():
                n += 1

        spinner = threading.Thread(target=spin, daemon=True)
        spinner.start()
        beside, _ = model_throughput(model, x, seconds)
        stop.set()
        spinner.join()
        out[name] = {"alone_images_per_s": alone, "next_to_busy_thread_images_per_s": beside}
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc/<pid>/stat), all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def metric_sum(text: str, name: str) -> float:
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name))


class HealthProbe(threading.Thread):
    """GET /healthz every `interval` s on a kept-alive connection while the load runs."""

    def __init__(self, port: int, interval: float = 0.05):
        super().__init__(daemon=True)
        self.port, self.interval = port, interval
        self.latencies_ms: list[float] = []
        self.failures = 0
        self.done = threading.Event()

    def run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        while not self.done.wait(self.interval):
            start = time.perf_counter()
            try:
                conn.request("GET", "/healthz")
                r = conn.getresponse()
                r.read()
                ok = r.status == 200
            except (OSError, http.client.HTTPException):
                ok = False
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            if ok:
                self.latencies_ms.append(1000 * (time.perf_counter() - start))
            else:
                self.failures += 1
        conn.close()

    def summary(self) -> dict:
        lat = np.array(self.latencies_ms or [np.nan])
        return {
            "n": len(self.latencies_ms),
            "failures": self.failures,
            "p50_ms": float(np.percentile(lat, 50)),
            "p99_ms": float(np.percentile(lat, 99)),
            "max_ms": float(lat.max()),
        }


class ForwardPoller(threading.Thread):
    """Polls the server's count of forwarded images, to time whole batches (steady state).

    With a slow model a run holds few batches, and counting responses inside a fixed window
    loses the partial batch at each end; the rate between the first and the last observed
    batch completion does not.
    """

    def __init__(self, url: str, interval: float = 0.1):
        super().__init__(daemon=True)
        self.url, self.interval = url, interval
        self.changes: list[tuple[float, float]] = []
        self.done = threading.Event()

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=10) as client:
            last = None
            while not self.done.wait(self.interval):
                try:
                    images = metric_sum(client.get("/metrics").text, "moco_batch_size_sum")
                except httpx.HTTPError:
                    continue
                if images != last:
                    self.changes.append((time.perf_counter(), images))
                    last = images

    def rate(self) -> tuple[float, int]:
        """(images/s between the first and last batch completions seen, batches between)."""
        if len(self.changes) < 3:
            return float("nan"), 0
        (t0, n0), (t1, n1) = self.changes[1], self.changes[-1]
        return (n1 - n0) / (t1 - t0), len(self.changes) - 2


def start_wrk(
    url: str, script: str, connections: int, seconds: float, tmp: Path, name: str, threads: int = 1
):
    """wrk in the background with a Lua script (plus the JSON summary at the end)."""
    path = tmp / f"{name}.lua"
    path.write_text(script + WRK_DONE)
    argv = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{math.ceil(seconds)}s"]  # whole s
    argv += ["--timeout", "60s", "-s", str(path), url]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wrk_result(proc: subprocess.Popen) -> dict:
    out, err = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"bench: wrk failed: {err or out}")
    found = re.search(r"^WRKJSON (.*)$", out, re.M)
    if found is None:
        raise SystemExit(f"bench: could not read wrk's summary:\n{out}")
    return json.loads(found.group(1))


def run_wrk(url: str, request: tuple[list[bytes], str, str], args, seconds: float, tmp: Path):
    return wrk_bodies(url, request, args.concurrency, args.wrk_threads, seconds, tmp)


def wrk_bodies(
    url: str,
    request: tuple[list[bytes], str, str],
    connections: int,
    threads: int,
    seconds: float,
    tmp: Path,
) -> dict:
    """wrk POSTing the bodies in turn at `connections`; its JSON summary."""
    bodies, content_type, path = request
    folder = tmp / "bodies"
    folder.mkdir(exist_ok=True)
    for i, body in enumerate(bodies):
        (folder / str(i)).write_bytes(body)
    values = {"bodies": folder, "count": len(bodies), "content_type": content_type, "path": path}
    script = WRK_BODIES % values
    return wrk_result(start_wrk(url, script, connections, seconds, tmp, "load", threads))


def health_summary(load: dict) -> dict:
    """The /healthz wrk's numbers, in HealthProbe.summary()'s shape."""
    return {
        "n": load["requests"],
        "failures": load["errors"] + load["non_2xx"],
        "p50_ms": load["p50_ms"],
        "p99_ms": load["p99_ms"],
        "max_ms": load["max_ms"],
        "probe": "wrk -c1, one GET every 50 ms",
    }


async def run_python_client(url: str, request: tuple[list[bytes], str, str], args, seconds):
    """Fallback without wrk: async httpx clients; they compete with the server for the cores."""
    bodies, content_type, path = request
    latencies, errors = [], 0
    stop = time.perf_counter() + seconds

    async def worker(client: httpx.AsyncClient, w: int) -> None:
        nonlocal errors
        i = w
        while time.perf_counter() < stop:
            t = time.perf_counter()
            r = await client.post(
                path, content=bodies[i % len(bodies)], headers={"content-type": content_type}
            )
            latencies.append(1000 * (time.perf_counter() - t))
            errors += r.status_code != 200
            i += args.concurrency

    limits = httpx.Limits(max_connections=args.concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        start = time.perf_counter()
        await asyncio.gather(*(worker(client, w) for w in range(args.concurrency)))
        duration = time.perf_counter() - start
    lat = np.array(latencies)
    return {
        "requests": len(lat),
        "duration_s": duration,
        "errors": 0,
        "non_2xx": errors,
        "p50_ms": float(np.percentile(lat, 50)),
        "p90_ms": float(np.percentile(lat, 90)),
        "p99_ms": float(np.percentile(lat, 99)),
        "max_ms": float(lat.max()),
        "mean_ms": float(lat.mean()),
    }


def request_bodies(files: list[bytes], body: str, dim: int) -> tuple[list[bytes], str, str]:
    """(bodies, content type, path): one image per request, JSON base64 or a file upload."""
    if body == "json":
        return (
            [
                json.dumps({"images": [base64.b64encode(f).decode()], "dim": dim}).encode()
                for f in files
            ],
            "application/json",
            "/v1/embed",
        )
    boundary = "benchboundary7MA4YWxkTrZu0gW"
    out = []
    for f in files:
        parts = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="dim"\r\n\r\n{dim}\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="files"; '
            f'filename="x"\r\nContent-Type: application/octet-stream\r\n\r\n'
        ).encode()
        out.append(parts + f + f"\r\n--{boundary}--\r\n".encode())
    return out, f"multipart/form-data; boundary={boundary}", "/v1/embed/files"


def start_server(checkpoint: Path, args, port: int, log: Path) -> subprocess.Popen:
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(args.threads),
        "MOCO_TORCH_THREADS": str(args.threads),
        "MOCO_MAX_BATCH_SIZE": str(args.batch_size),
        "MOCO_MAX_WAIT_MS": str(args.max_wait_ms),
        "MOCO_MAX_QUEUE": "1024",
        "MOCO_MODEL_RUNTIME": args.model_runtime,
    }
    source = args.server_source  # A/B: serve another checkout's code (`-m` imports from cwd)
    if source is not None:
        env["PYTHONPATH"] = str(source)
    argv = [sys.executable, "-m", "server", "--checkpoint", str(checkpoint), "--port", str(port)]
    with log.open("wb") as f:
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=f, cwd=source)
    return wait_ready(proc, port, log, 180)


def wait_ready(proc: subprocess.Popen, port: int, log: Path, timeout_s: float) -> subprocess.Popen:
    """Poll /readyz until 200; a server that exits or takes longer is killed, its log shown."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise SystemExit(f"bench: the server did not start:\n{log.read_text()[-3000:]}")
        time.sleep(0.3)


def stop_server(proc: subprocess.Popen) -> None:
    """SIGTERM; uvicorn then drains what is queued, which can take long at 224 px: SIGKILL."""
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def bench_embed(args, name: str, workdir: Path) -> dict:
    checkpoint = random_checkpoint(name, workdir)
    ckpt = load_checkpoint(checkpoint)
    size = ckpt.model.image_size
    images, files, fmt = encoded_images(size, 64)
    encoder = load_encoder(ckpt, "cpu")
    pre = EvalPreprocess.of(ckpt.model)
    x = torch.stack([pre(images[i % len(images)]) for i in range(args.batch_size)])
    traced = serving_encoder(encoder, size, torch.device("cpu"), "torchscript")
    model = {"eager": encoder, "torchscript": traced}[args.model_runtime]
    dim = ckpt.model.full_dim
    native = shutil.which("wrk") is not None and not args.python_client
    result = {
        "model": name,
        "arch": ckpt.model.arch,
        "image_size": size,
        "image_format": fmt,
        "image_bytes_mean": float(np.mean([len(f) for f in files])),
        "checkpoint_fingerprint": ckpt.fingerprint,
        "batch_size": args.batch_size,
        "concurrency": args.concurrency,
        "torch_threads": args.threads,
        "model_runtime": args.model_runtime,
        "gil": gil_sensitivity(
            {"eager": encoder, "torchscript": traced}, x, args.model_seconds / 2
        ),
        "images_per_request": 1,
        "response_dim": dim,
        "load_generator": "wrk" if native else "python-httpx (client-bound on 2 cores)",
        "runs": [],
    }
    for body in args.bodies:
        request = request_bodies(files, body, dim)
        bodies, ctype, path = request
        for repeat in range(args.repeats):
            model_before, model_cpu_before = model_throughput(model, x, args.model_seconds)
            # enough whole batches in the window even when the shared machine is slow
            duration = math.ceil(min(max(args.seconds, 12 * args.batch_size / model_before), 300))
            port = free_port()
            proc = start_server(checkpoint, args, port, workdir / "server.log")
            url = f"http://127.0.0.1:{port}"
            try:
                for body_bytes in bodies[:2]:
                    warm = httpx.post(
                        url + path,
                        content=body_bytes,
                        headers={"content-type": ctype},
                        timeout=300,
                    )
                    warm.raise_for_status()
                metrics0 = httpx.get(url + "/metrics").text
                poller = ForwardPoller(url)
                poller.start()
                if native:  # a second, light load generator, in its own process
                    health = WRK_HEALTH % {"interval_ms": 50}
                    probe = start_wrk(url, health, 1, duration, workdir, "health")
                else:
                    probe = HealthProbe(port)
                    probe.start()
                load0 = os.getloadavg()
                cpu0, wall0 = cpu_seconds(proc.pid), time.perf_counter()
                if native:
                    load = run_wrk(url, request, args, duration, workdir)
                else:
                    load = asyncio.run(run_python_client(url, request, args, duration))
                busy = (cpu_seconds(proc.pid) - cpu0) / (time.perf_counter() - wall0)
                poller.done.set()
                poller.join()
                if native:
                    healthz = health_summary(wrk_result(probe))
                else:
                    probe.done.set()
                    probe.join()
                    healthz = probe.summary()
                load1 = os.getloadavg()
                metrics1 = httpx.get(url + "/metrics").text
            except Exception:
                log = (workdir / "server.log").read_text()[-3000:]
                print(f"bench: the run failed; the server's log ends with:\n{log}", file=sys.stderr)
                raise
            finally:
                stop_server(proc)
            model_after, model_cpu_after = model_throughput(model, x, args.model_seconds)
            model_cpu = (model_cpu_before + model_cpu_after) / 2
            ok = load["requests"] - load["non_2xx"] - load["errors"]
            window_ips = ok / load["duration_s"]
            steady_ips, batches = poller.rate()
            server_ips = steady_ips if batches >= 3 else window_ips
            model_ips = (model_before + model_after) / 2

            def delta(name: str, m0: str = metrics0, m1: str = metrics1) -> float:
                return metric_sum(m1, name) - metric_sum(m0, name)

            forwards = delta("moco_model_forwards_total")
            split = {}
            for stage in ("queue", "preprocess", "inference"):
                n = delta(f"moco_{stage}_seconds_count")
                if n:
                    split[f"{stage}_ms_mean"] = 1000 * delta(f"moco_{stage}_seconds_sum") / n
            forward_ms = split.get("inference_ms_mean", math.nan)
            run = {
                "body": body,
                "repeat": repeat,
                "loadavg_before": load0,
                "loadavg_after": load1,
                "model_images_per_s_before": model_before,
                "model_images_per_s_after": model_after,
                "model_images_per_s": model_ips,
                "load_seconds": duration,
                "server_images_per_s": server_ips,
                "server_images_per_s_responses_in_window": window_ips,
                "server_images_per_s_steady_batches": steady_ips,
                "steady_batches_timed": batches,
                "ratio_server_over_model": server_ips / model_ips,
                "requests": load["requests"],
                "failed_requests": load["non_2xx"] + load["errors"],
                "latency_ms": {k[:-3]: load[k] for k in ("p50_ms", "p90_ms", "p99_ms", "max_ms")},
                "mean_batch": delta("moco_batch_size_sum") / max(forwards, 1),
                "server_cpu_cores_busy": busy,
                "server_cpu_ms_per_image": 1000 * busy / window_ips,
                "model_cpu_ms_per_image": model_cpu,
                "ratio_cpu_model_over_server": model_cpu / (1000 * busy / window_ips),
                "server_split": split,
                # the model's own rate inside the server (batch / mean forward), and the share
                # of time it was forwarding: both measured in the same window as the load, so
                # free of the drift between this run and the bare-model runs around it
                "server_model_images_per_s": 1000 * args.batch_size / forward_ms,
                "model_busy_fraction": server_ips
                * split["inference_ms_mean"]
                / 1000
                / args.batch_size,
                "healthz": healthz,
            }
            result["runs"].append(run)
            print(
                f"embed {name} {size}px {body}: server {server_ips:.0f} img/s / model "
                f"{model_ips:.0f} img/s (before {model_before:.0f}, after {model_after:.0f}) = "
                f"{run['ratio_server_over_model']:.2f}; p50 {load['p50_ms']:.1f} ms, p99 "
                f"{load['p99_ms']:.1f} ms; mean batch {run['mean_batch']:.1f}; "
                f"CPU/img server {run['server_cpu_ms_per_image']:.2f} ms, model {model_cpu:.2f} ms "
                f"({busy:.2f} cores busy); model busy {run['model_busy_fraction']:.2f}; "
                f"/healthz p99 {run['healthz']['p99_ms']:.1f} ms; load {load0[0]:.1f}",
                flush=True,
            )
    return result


def encoding_sizes() -> list[dict]:
    """Bytes of one /v1/embed answer per encoding_format, and of the float64-digit JSON the
    server sent before (Python floats of the float32 values, as `json.dumps(x.tolist())`)."""
    rows = []
    rng = np.random.default_rng(0)
    for dim in (256, 2048):
        x = rng.standard_normal((1, dim)).astype(np.float32)
        x /= np.linalg.norm(x)
        sizes = {
            fmt: len(
                FastJSON({"dim": dim, "encoding_format": fmt, "embeddings": encode(x, fmt)}).body
            )
            for fmt in ("float", "base64", "base64_float16")
        }
        old = len(json.dumps({"dim": dim, "embeddings": x.tolist()}, separators=(",", ":")))
        rows.append(
            {
                "dim": dim,
                "bytes": sizes,
                "bytes_float64_digits_before": old,
                "float_over_base64": sizes["float"] / sizes["base64"],
                "float_over_base64_float16": sizes["float"] / sizes["base64_float16"],
                "float64_digits_over_base64": old / sizes["base64"],
            }
        )
    return rows


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
    store.search(queries[:2], SearchPlan(k, dim, rerank_dim, shortlist))  # builds the per-dim index
    ids = []
    start = time.perf_counter()
    for q in queries:
        r = store.search(q[None], SearchPlan(k, dim, rerank_dim, shortlist)).rows
        ids.append(r[0].tolist())
    return (time.perf_counter() - start) / len(queries), ids


def csv(kind):
    return lambda s: [kind(v) for v in s.split(",")]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", type=csv(str), default=list(MODELS), help="convnet,resnet50")
    p.add_argument("--bodies", type=csv(str), default=["json"], help="json,multipart")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--max-wait-ms", type=float, default=5)
    p.add_argument("--seconds", type=float, default=10, help="load per run (>= 12 batches)")
    p.add_argument("--model-seconds", type=float, default=4, help="bare model, before and after")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--threads", type=int, default=1, help="server torch threads = bare model's")
    p.add_argument(
        "--model-runtime",
        choices=["torchscript", "eager"],
        default="torchscript",
        help="the server's MOCO_MODEL_RUNTIME, and the bare model's (eager for a server-source "
        "that predates it)",
    )
    p.add_argument("--wrk-threads", type=int, default=1)
    p.add_argument("--python-client", action="store_true", help="httpx even if wrk is installed")
    p.add_argument(
        "--server-source", type=Path, help="serve this checkout's code (A/B against e.g. main)"
    )
    p.add_argument("--items", type=int, default=200_000)
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--dims", type=csv(int), default=[16, 32, 64])
    p.add_argument("--factors", type=csv(int), default=[10, 40])
    p.add_argument("--skip-embed", action="store_true")
    p.add_argument("--skip-search", action="store_true")
    p.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()))
    p.add_argument("--output", type=Path, default=RESULTS / "server.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if shutil.which("wrk") is None and not args.skip_embed:
        print("bench: wrk not found (apt-get install wrk); using a Python client", file=sys.stderr)
    result = {
        "machine": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "loadavg_start": os.getloadavg(),
        "server_source": str(args.server_source or Path(__file__).resolve().parent.parent),
        "note": "shared 2-core machine: absolute rates are noisy, ratios are measured in one run",
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    result["encoding_sizes"] = encoding_sizes()
    for row in result["encoding_sizes"]:
        print(f"answer bytes at dim {row['dim']}: {row['bytes']}")
    if not args.skip_embed:
        result["embed"] = []
        with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
            for name in args.models:
                result["embed"].append(bench_embed(args, name, Path(tmp)))
                write_result(args.output, result)  # partial results
    if not args.skip_search:
        s = result["search"] = bench_search(args)
        print(
            f"search: {s['items']} x {s['width']} ({s['index_mb']:.0f} MiB), exact full-dim "
            f"{s['exact_ms_per_query']:.2f} ms/query"
        )
        for r in s["adaptive"]:
            print(
                f"  adaptive dim {r['dim']:>3} -> {r['rerank_dim']}, shortlist "
                f"{r['shortlist']:>3}: {r['ms_per_query']:.2f} ms/query, "
                f"{r['speedup_vs_exact']:.1f}x faster, recall@10 {r['recall_at_10']:.3f}"
            )
    result["loadavg_end"] = os.getloadavg()
    write_result(args.output, result)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
