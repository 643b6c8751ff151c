"""dims.json: per nesting dim, the checkpoint's evaluated quality and the index's latency.

Written into the index folder at build time and served by GET /v1/dims, so a client can
choose a dim by cost and accuracy. Quality comes from the evaluator's eval.json (kNN top-1,
mAP@k per dim); latency is timed on the built folder itself: exact search at each dim, and
with an ANN, the adaptive funnel (ANN shortlist at its dim, exact rerank at each larger dim)
at the server's default knobs.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from core.atomic import atomic_write
from index.plan import SearchPlan
from index.store import IndexStore, read_manifest

FILE = "dims.json"
K = 10
# Items whose nearest-neighbour score is sampled, and the quantiles kept of those scores
# (0, 0.5, ..., 100th percentile): a hit's score is placed against them (`percentile`).
NEIGHBOUR_SAMPLE = 500
QUANTILES = 201


def _eval_rows(eval_json: Path | None) -> dict[int, dict[str, float]]:
    if eval_json is None:
        return {}
    try:
        rows = json.loads(Path(eval_json).read_text())["metrics"]
        return {
            int(r["dim"]): {"knn_top1": float(r["knn_top1"]), "map_at_k": float(r["map_at_k"])}
            for r in rows
        }
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{eval_json} is not an evaluator eval.json ({e})") from None


def _dtype_rows(eval_json: Path | None) -> list[dict[str, Any]]:
    """eval.json's (dim, output type) quality rows (trainer.evaluate), [] when it has none."""
    if eval_json is None:
        return []
    rows = json.loads(Path(eval_json).read_text()).get("dtypes") or []
    keys = ("dim", "dtype", "bytes", "knn_top1", "map_at_k")
    return [{k: r[k] for k in keys} for r in rows if isinstance(r, dict) and set(keys) <= r.keys()]


def _ms_per_query(run, queries: np.ndarray, budget_s: float) -> float:
    """Mean ms of single-query searches: at least 2, until about budget_s has passed."""
    run(queries[:1])  # warm: lazily built per-dim indexes, page cache
    start, done = time.perf_counter(), 0
    for i in range(len(queries)):
        run(queries[i : i + 1])
        done += 1
        if done >= 2 and time.perf_counter() - start > budget_s:
            break
    return 1000 * (time.perf_counter() - start) / done


def measure(
    folder: Path, nesting_list: list[int], *, queries: int = 20, budget_s: float = 2.0
) -> list[dict[str, Any]]:
    """Time searches on the folder as the server opens it; queries are stored rows."""
    manifest = read_manifest(folder)
    store = IndexStore(folder, manifest, writable=False)
    n = len(store)
    if n == 0:
        return [{"dim": d} for d in nesting_list]
    rng = np.random.default_rng(0)
    rows = np.sort(rng.choice(n, size=min(n, queries), replace=False))
    q = store.vectors.rows[rows]
    ann = store.ann
    out = []
    for dim in nesting_list:
        row: dict[str, Any] = {"dim": dim}
        row["exact_ms"] = _ms_per_query(
            lambda x, d=dim: store.search(x, SearchPlan(K, d)), q, budget_s
        )
        if ann is not None and dim >= ann.dim:
            row["adaptive_ms"] = _ms_per_query(
                lambda x, d=dim: store.search(x, SearchPlan(K, ann.dim, d, use_ann=True)),
                q,
                budget_s,
            )
        out.append(row)
    store.close()
    return out


def _nearest_other(scores: np.ndarray, rows: np.ndarray, own: np.ndarray) -> np.ndarray:
    """Per query, the best score of a row other than the query's own (k=2 results)."""
    first_is_own = rows[:, 0] == own
    return np.where(first_is_own, scores[:, 1], scores[:, 0])


def neighbour_quantiles(
    folder: Path, nesting_list: list[int], *, sample: int = NEIGHBOUR_SAMPLE
) -> dict[str, list[float]]:
    """Per dim, quantiles of the index's own nearest-neighbour scores (each sampled item
    against every other item): what a real match scores in this index, so a search hit can
    be told apart from "the least bad of unrelated items" (docs/SEARCH.md, `percentile`)."""
    manifest = read_manifest(folder)
    store = IndexStore(folder, manifest, writable=False)
    try:
        n = len(store)
        if n < 2:
            return {}
        rng = np.random.default_rng(1)
        own = np.sort(rng.choice(n, size=min(n, sample), replace=False))
        q = store.vectors.rows[own]
        levels = np.linspace(0, 100, QUANTILES)
        out = {}
        for dim in nesting_list:
            hits = store.search(q, SearchPlan(2, dim))
            nearest = _nearest_other(hits.scores, hits.rows, own)
            out[str(dim)] = [round(float(v), 6) for v in np.percentile(nearest, levels)]
        return out
    finally:
        store.close()


def percentile_of(score: float, quantiles: list[float] | None) -> float | None:
    """The share (0-100) of the index's own nearest-neighbour scores below `score`."""
    if not quantiles:
        return None
    levels = np.linspace(0, 100, len(quantiles))
    return round(float(np.interp(score, quantiles, levels)), 1)


def write_dims_report(folder: Path, nesting_list: list[int], eval_json: Path | None) -> None:
    quality = _eval_rows(eval_json)
    latency = measure(folder, nesting_list)
    report = {
        "eval_source": str(eval_json) if eval_json is not None else None,
        "latency_measured": f"{time.strftime('%Y-%m-%dT%H:%M:%S%z')}, batch 1, k={K}, "
        f"on the built index ({len(nesting_list)} dims)",
        "dims": [{**row, **quality.get(row["dim"], {})} for row in latency],
        "neighbour_score_quantiles": neighbour_quantiles(folder, nesting_list),
        "dtypes": _dtype_rows(eval_json),
    }
    text = json.dumps(report, indent=1).encode()
    atomic_write(Path(folder) / FILE, lambda f: f.write(text))


def read_dims_report(folder: Path) -> dict[str, Any]:
    """The folder's dims.json, or {} for folders built without one."""
    try:
        return json.loads((Path(folder) / FILE).read_text())
    except (OSError, ValueError):
        return {}
