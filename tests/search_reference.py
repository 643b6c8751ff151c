"""Exact reference searches the tests compare the product's search paths against.

Composed only of index.search's product functions (build_index, search_index, rerank), so
a test of these exercises that code; the product itself searches through the server's
vector store and the evaluator.
"""

from __future__ import annotations

import faiss
import numpy as np

from index.search import (
    GPU_MAX_K,
    _check_dim,
    build_index,
    gpu_count,
    rerank,
    search_index,
    set_threads,
)


def search(
    bank: np.ndarray,
    queries: np.ndarray,
    k: int,
    dim: int,
    *,
    chunk_size: int = 4096,
    use_gpu: bool | None = None,
    threads: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact cosine top-k at `dim`: both sides truncated to `dim` and L2-normalised."""
    _check_dim(queries, dim, "queries")
    set_threads(threads)
    if use_gpu is None:
        use_gpu = gpu_count() > 0 and k <= GPU_MAX_K
    index = build_index(bank, dim, use_gpu=use_gpu)
    return search_index(index, queries[:, :dim], k, chunk_size=chunk_size)


def funnel_search(
    bank: np.ndarray,
    queries: np.ndarray,
    k: int,
    dim: int,
    rerank_dim: int,
    shortlist: int,
    *,
    index: faiss.Index | None = None,
    chunk_size: int = 4096,
    use_gpu: bool | None = None,
    threads: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Adaptive retrieval: shortlist at a cheap `dim`, rerank exactly at `rerank_dim`.

    `bank` and `queries` are full-width embeddings. `index` (from build_index at `dim`) is
    reused when given, e.g. by the server; otherwise one is built. The shortlist is clamped
    to [k, bank size]; with shortlist = bank size this equals search(..., rerank_dim).
    """
    _check_dim(bank, max(dim, rerank_dim), "bank")
    _check_dim(queries, max(dim, rerank_dim), "queries")
    n_bank = bank.shape[0]
    if not 1 <= k <= n_bank:
        raise ValueError(f"k={k} must be between 1 and the bank size {n_bank}")
    shortlist = min(max(shortlist, k), n_bank)
    set_threads(threads)
    if index is None:
        if use_gpu is None:
            use_gpu = gpu_count() > 0 and shortlist <= GPU_MAX_K
        index = build_index(bank, dim, use_gpu=use_gpu)
    elif index.d != dim:
        raise ValueError(f"the index was built at dim {index.d}, not {dim}")
    _, candidates = search_index(index, queries[:, :dim], shortlist, chunk_size=chunk_size)
    return rerank(bank, queries, candidates, k, rerank_dim)
