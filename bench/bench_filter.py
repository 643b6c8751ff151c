"""Filtered search at 1M: recall and latency by selectivity, and where the planner's switch to
an exact scan of the matching rows belongs.

    python bench/bench_filter.py --n 1000000 --out docs/results/search-filter-1m.json

Data: bench_search's Matryoshka-like synthetic rows (cluster centre + noise, coordinate j
scaled by (1 + j)^-0.75) at D = 256 (the real checkpoint's width), float16 store, published
as an index folder with an IVF4096,Flat ANN at dim 32 through index.store.write_generation
(as trainer.build_index does); each item carries `metadata.bucket`, a uniform random integer
in 0..999 independent of its vector (the hard case: a filter uncorrelated with the
neighbourhood). Filters `bucket < 500 / 100 / 10` and `bucket == 7` admit 50%, 10%, 1%,
0.1%. Truth: exact filtered top-10 at the full dim over the admitted rows.

`--real DIR` takes the rows instead from a real-embedding work folder of bench_search
(`python bench/bench_search.py --data real --n 1000000 --checkpoint C --prepare-only
--work-dir DIR`: generated `shapes` images embedded by a trained checkpoint, held-out queries
embedded the same way), with each item's class as its label, and adds a filter correlated
with the vector: `label == <one class>` (10%, the query's own class for some queries, another
for the rest: the realistic "category = shoes").

Per selectivity, through IndexStore.search (payload bitmap included) at batch 1:
  - `ann_naive`: the ANN with the filter as an IDSelector at the request's knobs, rerank;
  - `ann_inside`: the same with the planner's widened probe (use_ann forced, no scan);
  - `matching_rows`: the exact scan of the admitted rows at 256 (the planner's other route);
  - `post_filter`: the unfiltered funnel, then dropping refused hits (what a client does
    without filters: recall loss when the filter is selective);
  - `planner`: what a request gets by default (route recorded).
`--switch` times both routes at fixed admitted-row counts (the filter `bucket < t`).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
from bench_search import per_query_ms, recall, synthetic_rows
from common import write_result
from pydantic import TypeAdapter
from tqdm import tqdm

from index.filter import BoundedFilter
from index.plan import SearchKnobs, SearchPlan
from index.planner import EXACT_SCAN_ROWS
from index.search import rerank, scan_rows, set_threads
from index.store import IndexStore, write_generation
from trainer.data.shapes import CLASSES

K = 10
FP = "synthetic"


def loadavg() -> list[float]:
    return list(os.getloadavg())


def build(
    folder: Path, n: int, width: int, seed: int, factory: str, dim: int, real: Path | None
) -> dict:
    """The index folder (cached): store, items with a random bucket, the ANN."""
    if (folder / "manifest.json").exists():
        return json.loads((folder / "build.json").read_text())
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(1, n // 50), width), dtype=np.float32)
    buckets = rng.integers(0, 1000, n)
    chunk = 65536
    labels = None
    if real is not None:
        rows = np.load(real / "store.npy", mmap_mode="r")
        labels = np.load(real / "labels.npy", mmap_mode="r")
        if rows.shape != (n, width):
            raise SystemExit(f"{real}/store.npy is {rows.shape}, not --n {n} x --width {width}")

    def chunks():
        for start in tqdm(range(0, n, chunk), desc="rows"):
            if real is not None:
                yield np.asarray(rows[start : start + chunk], dtype=np.float32)
            else:
                yield synthetic_rows(rng, centres, min(chunk, n - start), 0.75, 0.8)[0]

    def items():
        for i in range(n):
            label = CLASSES[int(labels[i])] if labels is not None else None
            yield {"id": f"s{i}", "label": label, "metadata": {"bucket": int(buckets[i])}}

    info = {
        "checkpoint": "synthetic",
        "fingerprint": FP,
        "nesting_list": [16, 32, 64, 128, 256],
        "store_dtype": "float16",
        "ann": {"factory": factory, "dim": dim, "train_size": 131072},
    }
    start = time.perf_counter()
    write_generation(folder, 0, width, n, chunks(), items(), info)
    if real is None:
        queries, _ = synthetic_rows(rng, centres, 1000, 0.75, 0.8)
        np.save(folder.parent / "queries.npy", queries.astype(np.float32))
    out = {"build_s": time.perf_counter() - start, "loadavg": loadavg()}
    (folder / "build.json").write_text(json.dumps(out))
    return out


def truth_for(store: IndexStore, q: np.ndarray, node, width: int) -> tuple[np.ndarray, int]:
    allowed = store.payload.mask(node) & ~store.vectors.dead
    rows = np.flatnonzero(allowed)
    _, ids = scan_rows(store.vectors.rows, q, K, width, rows)
    return ids, len(rows)


def matching_rows(store: IndexStore, q: np.ndarray, node, width: int) -> np.ndarray:
    """The planner's exact route as IndexStore runs it: bitmap, then a scan of those rows."""
    with store.lock:
        allowed = store.payload.mask(node) & ~store.vectors.dead
        return scan_rows(store.vectors.rows, q, K, width, np.flatnonzero(allowed))[1]


def naive(store: IndexStore, q: np.ndarray, node, shortlist: int, knobs) -> np.ndarray:
    """The filter as an IDSelector at the request's knobs, no widening, then the rerank."""
    with store.lock:
        allowed = store.payload.mask(node) & ~store.vectors.dead
        _, cand = store.vectors.ann.search(q, shortlist, knobs, allowed)
        return rerank(store.vectors.rows, q, cand, K, store.width)[1]


def ms_of(fn, q: np.ndarray, budget_s: float) -> float:
    return per_query_ms(fn, q, 1, budget_s)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--factory", default="IVF4096,Flat")
    p.add_argument("--dim", type=int, default=32)
    p.add_argument("--nprobe", type=int, default=256)
    p.add_argument("--shortlist", type=int, default=1000)
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--work-dir", type=Path, default=Path("/tmp/bench-filter"))
    p.add_argument("--budget-s", type=float, default=3.0, help="timing budget per cell")
    p.add_argument("--switch", default="1000,2000,5000,10000,20000,50000")
    p.add_argument("--threads", type=int, default=1, help="FAISS threads (2 spin under load)")
    p.add_argument("--real", type=Path, help="bench_search's real-embedding work folder")
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args()
    set_threads(a.threads)
    folder = a.work_dir / f"index-{a.n}"
    a.work_dir.mkdir(parents=True, exist_ok=True)
    built = build(folder, a.n, a.width, 0, a.factory, a.dim, a.real)
    store = IndexStore.open(folder, FP, a.width, writable=False, verify=False)
    q_all = np.load((a.real or a.work_dir) / "queries.npy")[: a.queries].astype(np.float32)
    parse = TypeAdapter(BoundedFilter).validate_python
    knobs = SearchKnobs(nprobe=a.nprobe)
    result = {
        "what": "filtered search by selectivity, IndexStore.search at batch 1, k=10",
        "data": (
            f"real: {a.real} (bench_search --data real: generated shapes embedded by a trained "
            "checkpoint; label = the class)"
            if a.real
            else "synthetic Matryoshka-like rows (bench_search.synthetic_rows)"
        )
        + f", D={a.width}, float16 store; metadata.bucket uniform 0..999, independent of the "
        "vector",
        "n": a.n,
        "ann": f"{a.factory} @ {a.dim}",
        "nprobe": a.nprobe,
        "shortlist": a.shortlist,
        "queries": len(q_all),
        "threads": a.threads,
        "exact_scan_rows": EXACT_SCAN_ROWS,
        "build": built,
        "loadavg_start": loadavg(),
        "rows": [],
    }
    base = SearchPlan(K, a.dim, a.width, a.shortlist, knobs)
    filters = {
        "50%": {"field": "metadata.bucket", "range": {"lt": 500}},
        "10%": {"field": "metadata.bucket", "range": {"lt": 100}},
        "1%": {"field": "metadata.bucket", "range": {"lt": 10}},
        "0.1%": {"field": "metadata.bucket", "eq": 7},
    }
    if a.real:  # correlated with the vector: one class of ten
        filters["10% (label)"] = {"field": "label", "eq": CLASSES[0]}
    for name, raw in filters.items():
        node = parse(raw)
        truth, matched = truth_for(store, q_all, node, a.width)
        allowed = store.payload.mask(node)
        row = {"selectivity": name, "filter": raw, "matched": matched}

        def ann_inside(x, node=node):
            return store.search(x, SearchPlan(**{**base.__dict__, "use_ann": True, "filter": node}))

        def ann_naive(x, node=node):
            return naive(store, x, node, a.shortlist, knobs)

        def matching(x, node=node):
            return matching_rows(store, x, node, a.width)

        def post_filter(x, allowed=allowed):
            hits = store.search(x, base)
            keep = np.where(hits.rows >= 0, allowed[np.maximum(hits.rows, 0)], False)
            return np.where(keep, hits.rows, -1)

        def planner(x, node=node):
            return store.search(x, SearchPlan(**{**base.__dict__, "filter": node}))

        for label, fn, ids_of in (
            ("ann_naive", ann_naive, lambda r: r),
            ("ann_inside", ann_inside, lambda h: h.rows),
            ("matching_rows", matching, lambda r: r),
            ("post_filter", post_filter, lambda r: r),
            ("planner", planner, lambda h: h.rows),
        ):
            if label == "matching_rows":  # exact by construction: one pass for all queries
                found = ids_of(fn(q_all))
            else:
                found = np.concatenate([ids_of(fn(q_all[i : i + 1])) for i in range(len(q_all))])
            row[f"{label}_recall"] = recall([[r for r in f if r >= 0] for f in found], truth)
            row[f"{label}_ms"] = ms_of(fn, q_all, a.budget_s)
            if label in ("planner", "ann_inside"):
                route = fn(q_all[:1]).route
                row[f"{label}_route"] = route.kind
                row[f"{label}_nprobe"] = route.knobs.nprobe if route.knobs else None
        row["loadavg"] = loadavg()
        result["rows"].append(row)
        print(json.dumps(row), flush=True)
        write_result(a.out, result)
    switch = []
    for t in [int(x) for x in a.switch.split(",") if x]:
        # `bucket < b` admits about b/1000 of the rows; pick b for ~t rows
        b = max(1, round(1000 * t / a.n))
        node = parse({"field": "metadata.bucket", "range": {"lt": b}})
        truth, matched = truth_for(store, q_all[:100], node, a.width)
        cell = {"bucket_lt": b, "matched": matched}
        plan = SearchPlan(**{**base.__dict__, "use_ann": True, "filter": node})
        cell["ann_inside_nprobe"] = store.search(q_all[:1], plan).route.knobs.nprobe
        for label, fn in (
            ("ann_naive", lambda x, node=node: naive(store, x, node, a.shortlist, knobs)),
            ("ann_inside", lambda x, plan=plan: store.search(x, plan).rows),
            ("matching_rows", lambda x, node=node: matching_rows(store, x, node, a.width)),
        ):
            if label == "matching_rows":
                found = fn(q_all[:100])
            else:
                found = np.concatenate([fn(q_all[i : i + 1]) for i in range(100)])
            cell[f"{label}_recall"] = recall([[r for r in f if r >= 0] for f in found], truth)
            cell[f"{label}_ms"] = ms_of(fn, q_all[:100], a.budget_s)
        cell["loadavg"] = loadavg()
        switch.append(cell)
        print(json.dumps(cell), flush=True)
        result["switch"] = switch
        write_result(a.out, result)
    result["loadavg_end"] = loadavg()
    write_result(a.out, result)


if __name__ == "__main__":
    main()
