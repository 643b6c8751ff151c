"""One node, more items: build an N-row folder in a streaming way (bench_filter's synthetic
rows, D = 256, float16, IVF4096,Flat at dim 32), then open it in a fresh process as the
server does and report its memory, recall@10 and latency at a given setting.

    python bench/bench_scale.py --n 4000000 --out docs/results/search-scale-4m.json

The build runs in its own process (peak RSS = its ru_maxrss); serving in another.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from common import write_result

K = 10


def build(a) -> dict:
    from bench_filter import build as build_folder

    from index.search import set_threads

    set_threads(1)
    start = time.perf_counter()
    built = build_folder(a.work_dir / f"index-{a.n}", a.n, 256, 0, "IVF4096,Flat", 32)
    return {
        **built,
        "wall_s": time.perf_counter() - start,
        "peak_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        "note": "peak includes the generator's centres (n/50 x 256 float32) and buckets",
    }


def serve(a) -> dict:
    from common import memory

    from index.plan import SearchKnobs, SearchPlan
    from index.search import scan_top_k, set_threads
    from index.store import IndexStore, read_manifest

    set_threads(1)
    folder = a.work_dir / f"index-{a.n}"
    before = memory()
    start = time.perf_counter()
    store = IndexStore(folder, read_manifest(folder), writable=False)
    out = {"open_s": time.perf_counter() - start, "before": before, "opened": memory()}
    q = np.load(folder.parent / "queries.npy")[: a.queries]
    _, truth = scan_top_k(store.vectors.rows, q, K, 256)
    plan = SearchPlan(K, 32, 256, a.shortlist, SearchKnobs(nprobe=a.nprobe), use_ann=True)
    found = np.concatenate([store.search(q[i : i + 1], plan).rows for i in range(len(q))])
    times = []
    for i in range(len(q)):
        t = time.perf_counter()
        store.search(q[i : i + 1], plan)
        times.append(1000 * (time.perf_counter() - t))
    hits = [len(set(f) & set(t)) / K for f, t in zip(found, truth, strict=True)]
    out.update(
        recall_at_10=float(np.mean(hits)),
        p50_ms=float(np.percentile(times, 50)),
        p99_ms=float(np.percentile(times, 99)),
        after=memory(),
        nprobe=a.nprobe,
        shortlist=a.shortlist,
        queries=len(q),
    )
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--n", type=int, default=4_000_000)
    p.add_argument("--work-dir", type=Path, default=Path("/tmp/bench-filter"))
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--nprobe", type=int, default=1024)
    p.add_argument("--shortlist", type=int, default=1000)
    p.add_argument("--stage", choices=["all", "build", "serve"], default="all")
    p.add_argument("--out", type=Path)
    a = p.parse_args()
    if a.stage != "all":
        print(json.dumps(build(a) if a.stage == "build" else serve(a)))
        return
    result = {"n": a.n, "width": 256, "store": "float16", "ann": "IVF4096,Flat @ 32"}
    if a.out.exists():  # a rerun keeps the recorded build (the folder is cached)
        result = json.loads(a.out.read_text())
    for stage in [s for s in ("build", "serve") if s not in result]:
        argv = [sys.executable, __file__, "--stage", stage, "--n", str(a.n)]
        argv += ["--work-dir", str(a.work_dir), "--queries", str(a.queries)]
        argv += ["--nprobe", str(a.nprobe), "--shortlist", str(a.shortlist)]
        result[f"loadavg_{stage}"] = list(os.getloadavg())
        done = subprocess.run(argv, capture_output=True, text=True, check=True)
        result[stage] = json.loads(done.stdout.strip().splitlines()[-1])
        print(stage, result[stage], flush=True)
        write_result(a.out, result)


if __name__ == "__main__":
    main()
