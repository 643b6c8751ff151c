"""A catalogue on one node: an N x D float16 folder built in one streaming pass, served from a
fresh process as the server opens it (read-only, columnar items, vectors read with pread).

    PYTHONPATH=. taskset -c 0 python bench/bench_scale_stream.py --n 10000000 \
        --out docs/results/search-scale-10m.json

Data: bench_search's Matryoshka-like rows (cluster centre + noise 0.8, coordinate j scaled by
(1 + j)^-0.75), with the centres drawn per chunk of 65,536 rows (1,310 clusters of ~50 rows
each, seeded by the chunk number) so the generator's memory does not grow with N and the
first 1M rows of the 10M build are the 1M build. Items: id, a label (one of 1,000), metadata
{"bucket": 0..999}. The ANN is trained on a 200,000-row sample (new draws around the centres
of 64 chunks spread over N) and filled as the rows are written (write_generation's
trained_ann). Queries: held-out draws around the centres of random chunks; `pick` queries
(another seed) choose the ANN at 1M, the `test` ones are scored once at the end.

Stages, each in its own process (peak RSS = its own): pick (1M only: recall vs index bytes for a
few factories), build, open (the folder opened as the server does; the items read from their
columns file and parsed), ready (`python -m server` started on it), truth (exact full-dim top-10
by a chunked scan, cached), serve, calibrate (the recall table on held-out items), targets
(asked vs achieved on the test queries), http (`python -m server` on the folder, one client then
wrk's 16 connections); calibrate_on_queries / targets_on_queries / http_on_queries do the same
with the table measured on query draws that are not items. The folder names a random-weight
ResNet-50 checkpoint (2048 dims) so that the server opens it.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from bench_search import synthetic_rows
from common import memory, write_result

K = 10
CHUNK = 65536
BLOCK = 16384
PER_CLUSTER = 50
ALPHA, NOISE = 0.75, 0.8
PICK_QUERIES = 200
TRAIN = 200_000  # FAISS asks for >= 39 per centroid: 159,744 for 4,096 lists
TARGETS = (0.9, 0.95, 0.98, 0.99)  # above the rule of three's 0.9985 a pick is exact (a 41 GB scan)
JSON = {"Content-Type": "application/json"}


def centres_of(seed: int, chunk: int, width: int) -> np.ndarray:
    rng = np.random.default_rng([seed, chunk])
    return rng.standard_normal((CHUNK // PER_CLUSTER, width), dtype=np.float32)


def chunk_rows(seed: int, chunk: int, rows: int, width: int) -> Iterator[np.ndarray]:
    """The chunk's rows in blocks of BLOCK: the same numbers as synthetic_rows draws for the
    whole chunk (labels first, then the noise in order), with a quarter of its temporaries."""
    rng = np.random.default_rng([seed, chunk])
    centres = rng.standard_normal((CHUNK // PER_CLUSTER, width), dtype=np.float32)
    labels = rng.integers(0, len(centres), rows)
    scale = (1.0 + np.arange(width, dtype=np.float32)) ** -ALPHA
    for lo in range(0, rows, BLOCK):
        part = labels[lo : lo + BLOCK]
        x = centres[part]
        x += NOISE * rng.standard_normal((len(part), width), dtype=np.float32)
        x *= scale
        yield x


def draws(
    seed: int, stream: int, n: int, count: int, width: int, spread: int, cols: int | None = None
) -> np.ndarray:
    """`count` new rows around the centres of `spread` chunks of the N rows (not stored),
    kept to their first `cols` coordinates (a training sample needs only the prefix)."""
    chunks = -(-n // CHUNK)
    rng = np.random.default_rng([seed, 1_000_000 + stream])
    picked = rng.choice(chunks, size=min(spread, chunks), replace=False)
    per = -(-count // len(picked))
    out = []
    for c in picked:
        x, _ = synthetic_rows(rng, centres_of(seed, int(c), width), per, ALPHA, NOISE)
        out.append(np.ascontiguousarray(x[:, :cols]))
    return np.concatenate(out)[:count]


def read_bytes() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("read_bytes:"):
            return int(line.split()[1])
    return 0


def folder_of(a) -> Path:
    return a.work_dir / f"index-{a.n}-{a.width}-{a.factory.replace(',', '_')}-{a.dim}"


def build(a) -> dict:
    from index.ann import AnnIndex
    from index.search import set_threads
    from index.store import write_generation

    set_threads(1)
    start = time.perf_counter()
    fingerprint, nesting = model_of(a)
    ann = AnnIndex.create(a.factory, a.dim)
    ann.train(draws(a.seed, 0, a.n, TRAIN, a.width, 64, a.dim))
    trained_s = time.perf_counter() - start
    rss_trained = memory()

    def chunks():
        for c, lo in enumerate(range(0, a.n, CHUNK)):
            yield from chunk_rows(a.seed, c, min(CHUNK, a.n - lo), a.width)

    def items():
        rng = np.random.default_rng([a.seed, 7])
        for lo in range(0, a.n, CHUNK):
            size = min(CHUNK, a.n - lo)
            labels, buckets = rng.integers(0, 1000, size), rng.integers(0, 1000, size)
            for i in range(size):
                yield {
                    "id": f"s{lo + i}",
                    "label": f"l{labels[i]}",
                    "metadata": {"bucket": int(buckets[i])},
                }

    info = {
        "checkpoint": str(checkpoint_of(a)),
        "fingerprint": fingerprint,
        "nesting_list": nesting,
        "store_dtype": "float16",
        "ann": {"factory": a.factory, "dim": a.dim, "train_size": TRAIN},
    }
    write_generation(folder_of(a), 0, a.width, a.n, chunks(), items(), info, trained_ann=ann)
    files = {p.name: p.stat().st_size for p in folder_of(a).iterdir()}
    return {
        "wall_s": time.perf_counter() - start,
        "train_s": trained_s,
        "rss_after_train": rss_trained,
        "peak_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        "ann_bytes": files["ann-0.faiss"],
        "files": files,
        "loadavg_end": list(os.getloadavg()),
    }


def checkpoint_of(a) -> Path:
    return a.work_dir / "resnet50.pt"


def model_of(a) -> tuple[str, list[int]]:
    """A ResNet-50 checkpoint with random weights (2048 dims): the vectors are synthetic, but
    the folder names a real model, so `python -m server` can open it (the `http` stage)."""
    from bench_server import random_checkpoint

    from core.checkpoint import load_checkpoint

    path = checkpoint_of(a)
    if not path.exists():
        path = random_checkpoint("resnet50", a.work_dir)
    ckpt = load_checkpoint(path)
    if ckpt.model.full_dim != a.width:
        raise SystemExit(f"{path} embeds at {ckpt.model.full_dim}, not --width {a.width}")
    return ckpt.fingerprint, list(ckpt.model.nesting_list)


def queries(a, stream: int) -> np.ndarray:
    return draws(a.seed, stream, a.n, a.queries, a.width, a.queries).astype(np.float32)


def truth(a) -> dict:
    from index.rowfile import RowFile
    from index.search import scan_top_k, set_threads
    from index.vectors import Rows

    set_threads(1)
    start = time.perf_counter()
    rows = Rows(RowFile(folder_of(a) / "vectors-0.npy"), a.width)
    out = {}
    for name, stream in (("test", 1), ("pick", 2)):
        if name == "pick" and a.n > 1_100_000:
            continue
        q = queries(a, stream)
        _, ids = scan_top_k(rows, q, K, a.width, budget=1 << 26)
        np.save(folder_of(a).parent / f"truth-{a.n}-{name}.npy", ids)
        out[name] = len(q)
    return {
        "wall_s": time.perf_counter() - start,
        "queries": out,
        "loadavg_end": list(os.getloadavg()),
    }


def settings(text: str) -> list[tuple[int, int, int]]:
    return [tuple(int(v) for v in s.split(":")) for s in text.split(",")]  # type: ignore[misc]


def run_queries(store, q, truth_ids, plan) -> dict:
    times, found = [], []
    before = read_bytes()
    for i in range(len(q)):
        t = time.perf_counter()
        found.append(store.search(q[i : i + 1], plan).rows[0])
        times.append(1000 * (time.perf_counter() - t))
    got = read_bytes() - before
    hits = [
        len(set(f.tolist()) & set(t.tolist())) / K for f, t in zip(found, truth_ids, strict=True)
    ]
    return {
        "recall_at_10": float(np.mean(hits)),
        "p50_ms": float(np.percentile(times, 50)),
        "p99_ms": float(np.percentile(times, 99)),
        "mean_ms": float(np.mean(times)),
        "read_bytes_per_query": got / len(q),
        "queries": len(q),
        "loadavg": list(os.getloadavg()),
    }


def drop_caches() -> bool:
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def throughput(store, q, plan, clients: int) -> dict:
    done = [0] * clients

    def client(c: int) -> None:
        for i in range(c, len(q), clients):
            store.search(q[i : i + 1], plan)
            done[c] += 1

    start = time.perf_counter()
    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    return {
        "clients": clients,
        "queries": sum(done),
        "wall_s": wall,
        "qps": sum(done) / wall,
        "loadavg": list(os.getloadavg()),
    }


def plan_of(a, nprobe: int, shortlist: int, final_dim: int):
    from index.plan import SearchKnobs, SearchPlan

    return SearchPlan(K, a.dim, final_dim, shortlist, SearchKnobs(nprobe=nprobe), use_ann=True)


def opened(a) -> dict:
    """Open as the server does (read-only, verify=False), then the items alone both ways:
    from columns-<g>.npz and parsed from items-<g>.jsonl (a folder written before columns)."""
    from index.items import read_items
    from index.store import IndexStore, read_manifest

    folder = folder_of(a)
    manifest = read_manifest(folder)
    before = memory()
    start = time.perf_counter()
    store = IndexStore.open(folder, manifest["fingerprint"], a.width, writable=False, verify=False)
    out: dict = {"open_s": time.perf_counter() - start, "before": before, "opened": memory()}
    store.close()
    del store
    items = folder / manifest["items"]
    for name, columns in (("columns", folder / manifest["columns"]), ("parsed", None)):
        start = time.perf_counter()
        read_items(items, a.n, columns)
        out[f"items_{name}_s"] = time.perf_counter() - start
        print(name, out[f"items_{name}_s"], file=sys.stderr, flush=True)
    out["items_ratio"] = out["items_parsed_s"] / out["items_columns_s"]
    out["files"] = {p.name: p.stat().st_size for p in sorted(folder.iterdir()) if p.is_file()}
    out["loadavg"] = list(os.getloadavg())
    return out


def serve(a) -> dict:
    from index.search import set_threads
    from index.store import IndexStore, read_manifest

    set_threads(1)
    before = memory()
    start = time.perf_counter()
    fingerprint = read_manifest(folder_of(a))["fingerprint"]
    store = IndexStore.open(folder_of(a), fingerprint, a.width, writable=False, verify=False)
    out: dict = {"open_s": time.perf_counter() - start, "before": before, "opened": memory()}
    q = queries(a, 1)
    t = np.load(folder_of(a).parent / f"truth-{a.n}-test.npy")
    out["sweep"] = []
    for nprobe, shortlist, final_dim in settings(a.settings):
        r = run_queries(store, q, t, plan_of(a, nprobe, shortlist, final_dim))
        out["sweep"].append({"nprobe": nprobe, "shortlist": shortlist, "final_dim": final_dim, **r})
        print(json.dumps(out["sweep"][-1]), file=sys.stderr, flush=True)
    chosen = next((s for s in out["sweep"] if s["recall_at_10"] >= 0.99), out["sweep"][-1])
    pick = (chosen["nprobe"], chosen["shortlist"], chosen["final_dim"])
    out["chosen"] = dict(zip(("nprobe", "shortlist", "final_dim"), pick, strict=True))
    out["after_sweep"] = memory()
    out["throughput_16"] = throughput(store, q, plan_of(a, *pick), 16)
    out["cold"] = []
    for nprobe, shortlist, final_dim in [pick, *settings(a.cold_settings)]:
        dropped = drop_caches()
        r = run_queries(
            store,
            q[: a.cold_queries],
            t[: a.cold_queries],
            plan_of(a, nprobe, shortlist, final_dim),
        )
        out["cold"].append(
            {
                "nprobe": nprobe,
                "shortlist": shortlist,
                "final_dim": final_dim,
                "caches_dropped": dropped,
                **r,
            }
        )
        print(json.dumps(out["cold"][-1]), file=sys.stderr, flush=True)
    out["after"] = memory()
    return out


def calibrated(a, held_out: bool = False) -> dict:
    """The recall table as a build or compaction measures it (index.calibration: 200 held-out
    items), or (`held_out`) on 200 query draws that are not items (stream 3: neither the test
    nor the pick queries), as `python -m index.calibrate --queries-file` does; saved in the
    folder: what `recall_target` requests are answered from."""
    from index.calibration import calibrate, save
    from index.search import set_threads
    from index.store import IndexStore, read_manifest

    set_threads(1)
    store = IndexStore(folder_of(a), read_manifest(folder_of(a)), writable=False)
    table = calibrate(store, sample=draws(a.seed, 3, a.n, 200, a.width, 200) if held_out else None)
    save(store, table)
    return {
        "cost_s": table.cost_s,
        "queries": table.queries,
        "held_out": table.held_out,
        "settings": len(table.settings),
        "picks": {str(t): table.pick(t).model_dump() for t in TARGETS},
        "peak_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        "loadavg_end": list(os.getloadavg()),
    }


def targets(a) -> dict:
    """Asked vs achieved: each target's pick run on the held-out `test` queries (draws, not
    index items) against the exact full-dim truth of the `truth` stage."""
    from bench_recall_target import score_targets

    from index.search import set_threads
    from index.store import IndexStore, read_manifest

    set_threads(1)
    store = IndexStore(folder_of(a), read_manifest(folder_of(a)), writable=False)
    q = queries(a, 1)
    t = np.load(folder_of(a).parent / f"truth-{a.n}-test.npy")
    rows = []
    for row in score_targets(store, q, t, TARGETS, a.timed):
        print(json.dumps(row), file=sys.stderr, flush=True)
        rows.append(row)
    return {"held_out_queries": len(q), "timed_queries": a.timed, "targets": rows}


def start_server(a) -> tuple[subprocess.Popen, str, dict]:
    """`python -m server` on the folder as a read-only replica serves it (checksums not
    verified at open: they read all 41 GB), once ready: the process, its URL, how long it took
    and its RSS then."""
    from bench_server import wait_ready
    from common import free_port

    port = free_port()
    env = {**os.environ, "MOCO_READ_ONLY": "1", "MOCO_VERIFY_INDEX": "0", "OMP_NUM_THREADS": "1"}
    argv = [sys.executable, "-m", "server", "--checkpoint", str(checkpoint_of(a))]
    argv += ["--index-dir", str(folder_of(a)), "--port", str(port)]
    log = a.work_dir / "server.log"
    start = time.perf_counter()
    with log.open("wb") as f:
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=f)
    out: dict = {"server": " ".join(argv[1:]), "env": "MOCO_READ_ONLY=1 MOCO_VERIFY_INDEX=0"}
    wait_ready(proc, port, log, 900)
    out["ready_s"] = time.perf_counter() - start
    out["memory_ready"] = memory(proc.pid)
    out["loadavg_ready"] = list(os.getloadavg())
    return proc, f"http://127.0.0.1:{port}", out


def ready(a) -> dict:
    """Only the server's start: seconds to /readyz and its RSS then."""
    from bench_server import stop_server

    proc, _, out = start_server(a)
    stop_server(proc)
    return out


def http(a) -> dict:
    """`recall_target` requests of the held-out queries to the server (start_server): one
    client in turn (latency, recall, the plan the server chose), then `--clients` concurrent
    connections with wrk (throughput); the server's RSS."""
    import httpx
    from bench_server import stop_server, wrk_bodies

    q, t = queries(a, 1), np.load(folder_of(a).parent / f"truth-{a.n}-test.npy")
    proc, url, out = start_server(a)
    try:
        bodies = [
            json.dumps({"vectors": [v.tolist()], "k": K, "recall_target": a.recall_target})
            for v in q
        ]
        times, hits, plans = [], [], set()
        with httpx.Client(base_url=url, timeout=60) as client:
            for i in range(a.http_queries):
                t0 = time.perf_counter()
                r = client.post("/v1/search", content=bodies[i], headers=JSON)
                times.append(1000 * (time.perf_counter() - t0))
                r.raise_for_status()
                found = [int(h["id"][1:]) for h in r.json()["results"][0]]
                hits.append(len(set(found) & set(t[i].tolist())) / K)
                plans.add(r.headers["X-Search-Plan"])
        out["single"] = {
            "queries": a.http_queries,
            "recall_target": a.recall_target,
            "recall_at_10": float(np.mean(hits)),
            "p50_ms": float(np.percentile(times, 50)),
            "p99_ms": float(np.percentile(times, 99)),
            "plans": sorted(plans),
            "loadavg": list(os.getloadavg()),
        }
        print(json.dumps(out["single"]), file=sys.stderr, flush=True)
        request = ([b.encode() for b in bodies], "application/json", "/v1/search")
        load = wrk_bodies(url, request, a.clients, 1, a.http_seconds, a.work_dir)
        out["concurrent"] = {"clients": a.clients, **load}
        out["concurrent"]["qps"] = out["concurrent"]["requests"] / out["concurrent"]["duration_s"]
        out["concurrent"]["loadavg"] = list(os.getloadavg())
        out["memory_after"] = memory(proc.pid)
    finally:
        stop_server(proc)
    return out


def pick(a) -> dict:
    """At the 1M folder: for each factory @ dim, recall@10 at full-dim rerank vs index bytes,
    on the `pick` queries (ANNs built in memory from the folder's rows)."""
    from index.ann import AnnIndex
    from index.rowfile import RowFile
    from index.search import rerank, set_threads
    from index.vectors import Rows

    set_threads(1)
    rows = Rows(RowFile(folder_of(a) / "vectors-0.npy"), a.width)
    q = queries(a, 2)[:PICK_QUERIES]
    t = np.load(folder_of(a).parent / f"truth-{a.n}-pick.npy")[:PICK_QUERIES]
    out = []
    for spec in a.candidates.split(";"):
        factory, dim = spec.rsplit("@", 1)
        dim = int(dim)
        start = time.perf_counter()
        ann = AnnIndex.create(factory, dim)
        ann.train(draws(a.seed, 0, a.n, TRAIN, a.width, 64, dim))
        for lo in range(0, len(rows), CHUNK):
            ann.add(rows[lo : lo + CHUNK, :dim])
        path = a.work_dir / "pick.faiss"
        ann.save(path)
        size = path.stat().st_size
        path.unlink()
        build_s = time.perf_counter() - start
        from index.plan import SearchKnobs

        for nprobe in (128, 256, 512):
            for shortlist in (200, 500, 1000):
                times, hits = [], []
                for i in range(len(q)):
                    s = time.perf_counter()
                    _, cand = ann.search(q[i : i + 1], shortlist, SearchKnobs(nprobe=nprobe))
                    _, ids = rerank(rows, q[i : i + 1], cand, K, a.width)
                    times.append(1000 * (time.perf_counter() - s))
                    hits.append(len(set(ids[0].tolist()) & set(t[i].tolist())) / K)
                out.append(
                    {
                        "factory": factory,
                        "dim": dim,
                        "bytes_per_row": size / len(rows),
                        "build_s": build_s,
                        "nprobe": nprobe,
                        "shortlist": shortlist,
                        "recall_at_10": float(np.mean(hits)),
                        "p50_ms": float(np.median(times)),
                        "loadavg": list(os.getloadavg()),
                    }
                )
                print(json.dumps(out[-1]), file=sys.stderr, flush=True)
    return {"rows": out}


STAGES = {
    "pick": pick,
    "build": build,
    "truth": truth,
    "serve": serve,
    "open": opened,
    "ready": ready,
    "calibrate": calibrated,
    "targets": targets,
    "calibrate_on_queries": lambda a: calibrated(a, held_out=True),
    "targets_on_queries": targets,
    "http_on_queries": http,
    "http": http,
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--width", type=int, default=2048)
    p.add_argument("--factory", default="IVF4096,Flat")
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work-dir", type=Path, default=Path("/work/scale-data"))
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--settings", default="256:500:2048,512:500:2048,512:1000:2048")
    p.add_argument("--cold-settings", default="512:200:2048,512:500:1024")
    p.add_argument("--cold-queries", type=int, default=200)
    p.add_argument("--candidates", default="IVF4096,Flat@32;IVF4096,Flat@64;IVF4096,SQ8@128")
    p.add_argument("--timed", type=int, default=200, help="queries timed per recall target")
    p.add_argument("--recall-target", type=float, default=0.99, help="the http stage's")
    p.add_argument("--http-queries", type=int, default=1000, help="one client, in turn")
    p.add_argument("--clients", type=int, default=16, help="wrk connections")
    p.add_argument("--http-seconds", type=float, default=60)
    p.add_argument("--stages", default="build,truth,serve,calibrate,targets,http")
    p.add_argument("--stage")
    p.add_argument("--out", type=Path)
    a = p.parse_args()
    if a.stage:
        print(json.dumps(STAGES[a.stage](a)))
        return
    result = {
        "n": a.n,
        "width": a.width,
        "store": "float16",
        "ann": f"{a.factory} @ {a.dim}",
        "data": "chunk-seeded Matryoshka-like rows (bench_search.synthetic_rows)",
    }
    if a.out.exists():
        result = json.loads(a.out.read_text())
    for stage in a.stages.split(","):
        argv = [sys.executable, __file__, "--stage", stage]
        for flag in (
            "n",
            "width",
            "factory",
            "dim",
            "seed",
            "work_dir",
            "queries",
            "settings",
            "cold_settings",
            "cold_queries",
            "candidates",
            "timed",
            "recall_target",
            "http_queries",
            "clients",
            "http_seconds",
        ):
            argv += [f"--{flag.replace('_', '-')}", str(getattr(a, flag))]
        result[f"loadavg_{stage}"] = list(os.getloadavg())
        done = subprocess.run(argv, stdout=subprocess.PIPE, text=True, check=True)
        result[stage] = json.loads(done.stdout.strip().splitlines()[-1])
        print(stage, json.dumps(result[stage])[:2000], flush=True)
        write_result(a.out, result)


if __name__ == "__main__":
    main()
