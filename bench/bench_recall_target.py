"""Recall targets, asked vs achieved: what the calibration table promises on the index's own
items, checked on 1,000 held-out queries it never saw.

    python -m index.calibrate /tmp/bench-filter/index-1000000     # (build did it already)
    python bench/bench_recall_target.py --folder /tmp/bench-filter/index-1000000 \
        --queries /tmp/bench-filter/queries.npy --out docs/results/search-recall-target-1m.json

Per target: the setting `Calibration.pick` chooses (as a `recall_target` request gets it),
recall@10 of that setting on the held-out queries against exact full-dim search, and ms per
query at batch 1 through IndexStore.search.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from bench_search import recall
from common import memory, write_result

from index.calibration import K
from index.search import scan_top_k, set_threads
from index.store import IndexStore, read_manifest

TARGETS = (0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999, 1.0)


def score_targets(store, q, truth, targets, timed: int) -> Iterator[dict]:
    """Per target: the setting a `recall_target` request gets, its recall@K on `q` against
    `truth` (exact full-dim ids) and ms per query at batch 1 over the first `timed` queries."""
    table = store.calibration
    for target in targets:
        setting = table.pick(target)
        plan = setting.plan(K)
        exact = setting.rerank_dim is None and setting.dim == store.width
        if exact:  # the truth is this very search (a full scan per batch): reuse it
            found = truth
        else:
            found = np.concatenate(
                [store.search(q[i : i + 100], plan).rows for i in range(0, len(q), 100)]
            )
        sample = q[: 5 if exact else timed]
        store.search(sample[:1], plan)
        t0 = time.perf_counter()
        for i in range(len(sample)):
            store.search(sample[i : i + 1], plan)
        yield {
            "asked": target,
            "calibrated_recall": setting.recall,
            "calibrated_recall_low": setting.recall_low,
            "achieved_recall": recall(found, truth),
            "ms_b1": 1000 * (time.perf_counter() - t0) / len(sample),
            "timed_queries": len(sample),
            "calibrated_ms": setting.ms,
            "setting": setting.model_dump(exclude={"recall", "recall_low", "ms"}),
            "loadavg": list(os.getloadavg()),
        }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--folder", type=Path, required=True)
    p.add_argument("--queries", type=Path, required=True)
    p.add_argument("--n-queries", type=int, default=1000)
    p.add_argument("--timed", type=int, default=200, help="queries timed per target")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args()
    set_threads(a.threads)
    before = memory()
    t0 = time.perf_counter()
    store = IndexStore(a.folder, read_manifest(a.folder), writable=False)
    open_s = time.perf_counter() - t0
    table = store.calibration
    if table is None:
        raise SystemExit(f"{a.folder} has no calibration: python -m index.calibrate {a.folder}")
    opened = memory()
    q = np.load(a.queries)[: a.n_queries]
    start = time.perf_counter()
    _, truth = scan_top_k(store.vectors.rows, q, K, store.width)
    result = {
        "what": "recall_target: asked vs achieved on held-out queries (not index items)",
        "folder": str(a.folder),
        "rows": len(store),
        "held_out_queries": len(q),
        "timed_queries": a.timed,
        "threads": a.threads,
        "k": K,
        "calibration": {
            "queries": table.queries,
            "settings": len(table.settings),
            "cost_s": table.cost_s,
            "measured": table.measured,
        },
        "truth_s": time.perf_counter() - start,
        "open_s": open_s,
        "memory_before_open": before,
        "memory_opened": opened,
        "loadavg_start": list(os.getloadavg()),
        "targets": [],
    }
    for row in score_targets(store, q, truth, TARGETS, a.timed):
        print(row, flush=True)
        result["targets"].append(row)
        write_result(a.out, result)
    result["memory_after"] = memory()
    result["loadavg_end"] = list(os.getloadavg())
    write_result(a.out, result)


if __name__ == "__main__":
    main()
