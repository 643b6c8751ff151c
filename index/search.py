"""Exact inner-product search on L2-normalised Matryoshka prefixes, shared by eval and server.

Every search scores `truncate_normalize_np(x, dim)` vectors, so inner product = cosine.
Memory stays bounded: the bank is normalised and added in chunks (the index holds the only
copy) and queries are searched in chunks, so no bank-by-queries matrix is ever built.
Results are ordered by descending score, ties by ascending bank id, on CPU and GPU alike.
"""

from __future__ import annotations

import faiss
import numpy as np

from core.nesting import truncate_normalize_np

GPU_MAX_K = 2048
RERANK_BUDGET = 1 << 25
DENSE = 8  # scan_rows reads a window whole when at least 1 row in DENSE matches


def set_threads(threads: int | None) -> None:
    """Pin FAISS's OpenMP pool (None leaves FAISS's default: all cores)."""
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        faiss.omp_set_num_threads(threads)


def gpu_count() -> int:
    """GPUs FAISS can use (0 with faiss-cpu)."""
    get = getattr(faiss, "get_num_gpus", None)
    return int(get()) if get is not None else 0


def _check_dim(x: np.ndarray, dim: int, what: str) -> None:
    if x.ndim != 2:
        raise ValueError(f"{what} must be a 2-D array [n, width], got shape {x.shape}")
    if not 1 <= dim <= x.shape[1]:
        raise ValueError(f"dim {dim} is outside 1..{x.shape[1]} (the {what} width)")


def build_index(
    bank: np.ndarray,
    dim: int,
    *,
    use_gpu: bool | None = None,
    gpu_device: int = 0,
    add_chunk: int = 65536,
) -> faiss.Index:
    """IndexFlatIP over the bank's normalised `dim`-prefixes (GPU when available).

    use_gpu=None picks the GPU when FAISS sees one; gpu_device is the CUDA ordinal (a rank's
    own GPU under torchrun). The bank is normalised chunk by chunk, so a 1.28M x 2048 bank
    needs its own memory plus the index, never a second full copy.
    """
    _check_dim(bank, dim, "bank")
    if use_gpu is None:
        use_gpu = gpu_count() > 0
    if use_gpu:
        resources = faiss.StandardGpuResources()
        config = faiss.GpuIndexFlatConfig()
        config.device = gpu_device
        index = faiss.GpuIndexFlatIP(resources, dim, config)
        index.referenced_objects = [resources]
    else:
        index = faiss.IndexFlatIP(dim)
    for start in range(0, bank.shape[0], add_chunk):
        index.add(truncate_normalize_np(bank[start : start + add_chunk], dim))
    return index


def _on_gpu(index: faiss.Index) -> bool:
    return hasattr(faiss, "GpuIndex") and isinstance(index, faiss.GpuIndex)


def _order(scores: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sort each row by (score desc, id asc): one documented tie-break for every backend."""
    order = np.lexsort((ids, -scores), axis=-1)
    return np.take_along_axis(scores, order, -1), np.take_along_axis(ids, order, -1)


def search_index(
    index: faiss.Index,
    queries: np.ndarray,
    k: int,
    *,
    chunk_size: int = 4096,
    params: faiss.SearchParameters | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k of already-truncated queries against an index from build_index.

    Queries are normalised here, chunk by chunk. Returns float32 scores and int64 bank row
    ids, both [n_queries, k], best first. `params` (e.g. an IDSelector) go to every search;
    places no admitted row fills hold score -inf and id -1.
    """
    if queries.ndim != 2 or queries.shape[1] != index.d:
        raise ValueError(f"queries must have shape [n, {index.d}], got {queries.shape}")
    if not 1 <= k <= index.ntotal:
        raise ValueError(f"k={k} must be between 1 and the bank size {index.ntotal}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if k > GPU_MAX_K and _on_gpu(index):
        raise ValueError(f"GPU FAISS supports k <= {GPU_MAX_K}, got {k}")
    n = queries.shape[0]
    scores = np.empty((n, k), dtype=np.float32)
    ids = np.empty((n, k), dtype=np.int64)
    for start in range(0, n, chunk_size):
        q = truncate_normalize_np(queries[start : start + chunk_size], index.d)
        scores[start : start + len(q)], ids[start : start + len(q)] = _top_k(index, q, k, params)
    if params is not None:
        scores = np.where(ids >= 0, scores, -np.inf).astype(np.float32)
    return scores, ids


def _search(index: faiss.Index, q: np.ndarray, k: int, params) -> tuple[np.ndarray, np.ndarray]:
    scores, ids = index.search(q, k) if params is None else index.search(q, k, params=params)
    if params is not None:  # unfilled places (-1, -FLT_MAX) sort last
        scores = np.where(ids >= 0, scores, -np.inf)
        ids = np.where(ids >= 0, ids, np.iinfo(np.int64).max)
    return _order(scores, ids)


def _top_k(
    index: faiss.Index, q: np.ndarray, k: int, params: faiss.SearchParameters | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """FAISS top-k with ties at the k-th place broken by smallest id, not by FAISS's heap.

    Fetches one extra neighbour; rows whose k-th score ties the next one are searched again
    with a doubled window until the tie group is complete (GPU: up to GPU_MAX_K).
    """
    limit = min(index.ntotal, GPU_MAX_K if _on_gpu(index) else index.ntotal)
    fetch = min(limit, k + 1)
    scores, ids = _search(index, q, fetch, params)
    if fetch == k:
        return scores, ids
    pending = np.flatnonzero(scores[:, k] == scores[:, k - 1])
    while pending.size and fetch < limit:
        fetch = min(limit, 2 * fetch)
        s, i = _search(index, q[pending], fetch, params)
        scores[pending, :k], ids[pending, :k] = s[:, :k], i[:, :k]
        pending = pending[(s[:, -1] == s[:, k - 1]) & np.isfinite(s[:, -1])]
    ids = np.where(np.isfinite(scores), ids, -1)
    return scores[:, :k], ids[:, :k]


def rerank(
    bank: np.ndarray, queries: np.ndarray, candidates: np.ndarray, k: int, rerank_dim: int
) -> tuple[np.ndarray, np.ndarray]:
    """Exact cosine at `rerank_dim` over each query's candidate rows; keep the best k.

    Gathers only the candidate rows, in query chunks sized to a fixed element budget.
    Candidates of -1 (an ANN that found fewer) come back last with score -inf and id -1.
    """
    width = candidates.shape[1]
    return rerank_prefixes(bank, queries, candidates, k, rerank_dim, [width])[width]


def rerank_prefixes(
    bank: np.ndarray,
    queries: np.ndarray,
    candidates: np.ndarray,
    k: int,
    rerank_dim: int,
    sizes: list[int],
) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """For each s in `sizes`, what rerank(bank, queries, candidates[:, :s], k, rerank_dim)
    returns, with every candidate scored once: a calibration's shortlists of one search."""
    _check_dim(bank, rerank_dim, "bank")
    _check_dim(queries, rerank_dim, "queries")
    n, width = candidates.shape
    out = {
        s: (np.empty((n, min(k, s)), np.float32), np.empty((n, min(k, s)), np.int64)) for s in sizes
    }
    step = max(1, RERANK_BUDGET // max(1, width * rerank_dim))
    for start in range(0, n, step):
        stop = start + step
        scores, ids = _candidate_scores(
            bank, queries[start:stop], candidates[start:stop], rerank_dim
        )
        for s in sizes:
            out[s][0][start:stop], out[s][1][start:stop] = _best(scores[:, :s], ids[:, :s], k)
    return out


def _candidate_scores(
    bank: np.ndarray, queries: np.ndarray, cand: np.ndarray, rerank_dim: int
) -> tuple[np.ndarray, np.ndarray]:
    """Exact cosine of each query with its candidates; a -1 candidate scores -inf."""
    missing = cand < 0
    q = truncate_normalize_np(queries, rerank_dim)
    gather = np.where(missing, 0, cand).reshape(-1)
    rows = truncate_normalize_np(bank[gather, :rerank_dim], rerank_dim)
    scores = np.einsum("qd,qsd->qs", q, rows.reshape(*cand.shape, rerank_dim))
    scores = np.where(missing, -np.inf, scores).astype(np.float32)
    return scores, np.where(missing, np.iinfo(np.int64).max, cand)


def _best(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    s, i = _order(scores, ids)
    i = np.where(np.isfinite(s), i, -1)
    return s[:, :k], i[:, :k]


def _keep_top(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Best k per row by (score desc, id asc), ties at the k-th place included exactly."""
    if scores.shape[1] <= k:
        return _order(scores, ids)
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    out_s, out_i = np.take_along_axis(scores, part, 1), np.take_along_axis(ids, part, 1)
    kth = out_s.min(axis=1)
    for r in np.flatnonzero((scores >= kth[:, None]).sum(axis=1) > k):
        cand = np.flatnonzero(scores[r] >= kth[r])
        s, i = _order(scores[r, cand][None], ids[r, cand][None])
        out_s[r], out_i[r] = s[0, :k], i[0, :k]
    return _order(out_s, out_i)


def scan_top_k(
    bank: np.ndarray,
    queries: np.ndarray,
    k: int,
    dim: int,
    *,
    exclude: np.ndarray | None = None,
    budget: int = RERANK_BUDGET // 8,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact cosine top-k at `dim` by scanning `bank` (e.g. a memory map) chunk by chunk.

    No index and no copy of the bank: memory is one chunk of `budget` elements. Rows whose
    `exclude` flag is set (deleted items) never come back; fewer than k live rows pad with
    score -inf and id -1. Same order as search_index: (score desc, id asc).
    """
    _check_dim(bank, dim, "bank")
    q = truncate_normalize_np(queries, dim)
    best_s = np.empty((len(q), 0), np.float32)
    best_i = np.empty((len(q), 0), np.int64)
    step = max(1, budget // dim)
    for start in range(0, len(bank), step):
        x = truncate_normalize_np(np.asarray(bank[start : start + step, :dim]), dim)
        s = q @ x.T
        ids = np.arange(start, start + len(x), dtype=np.int64)
        if exclude is not None:
            s[:, exclude[start : start + len(x)]] = -np.inf
        best_s, best_i = _keep_top(
            np.concatenate([best_s, s], 1),
            np.concatenate([best_i, np.broadcast_to(ids, s.shape)], 1),
            k,
        )
    return _finish(best_s, best_i, k)


def scan_rows(
    bank: np.ndarray,
    queries: np.ndarray,
    k: int,
    dim: int,
    rows: np.ndarray,
    *,
    budget: int = RERANK_BUDGET // 8,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact cosine top-k at `dim` over the given sorted row ids only (a filter's matching
    rows), window by window of the bank: a window dense in matches (>= 1/DENSE) is read
    whole and subset (one sequential read beats a read per row), a sparse one gathers just
    its rows. Same order and padding as scan_top_k."""
    _check_dim(bank, dim, "bank")
    q = truncate_normalize_np(queries, dim)
    best_s = np.empty((len(q), 0), np.float32)
    best_i = np.empty((len(q), 0), np.int64)
    rows = np.asarray(rows, np.int64)
    window = max(1, budget // dim)
    cuts = np.searchsorted(rows, np.arange(0, len(bank) + window, window))
    for w, (lo, hi) in enumerate(zip(cuts[:-1].tolist(), cuts[1:].tolist(), strict=True)):
        if hi == lo:
            continue
        ids, start = rows[lo:hi], w * window
        end = min(start + window, len(bank))
        if (hi - lo) * DENSE >= end - start:
            x = np.asarray(bank[start:end, :dim])[ids - start]
        else:
            x = np.asarray(bank[ids, :dim])
        s = q @ truncate_normalize_np(x, dim).T
        best_s, best_i = _keep_top(
            np.concatenate([best_s, s], 1),
            np.concatenate([best_i, np.broadcast_to(ids, s.shape)], 1),
            k,
        )
    return _finish(best_s, best_i, k)


def _finish(best_s: np.ndarray, best_i: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Unfilled places as score -inf, id -1; padded to k."""
    best_i = np.where(np.isfinite(best_s), best_i, -1)
    if best_s.shape[1] < k:
        pad = k - best_s.shape[1]
        best_s = np.pad(best_s, ((0, 0), (0, pad)), constant_values=-np.inf)
        best_i = np.pad(best_i, ((0, 0), (0, pad)), constant_values=-1)
    return best_s.astype(np.float32), best_i
