"""Quality per (nesting dim, output type): what each compressed embedding costs.

Both splits go through the output type as a client gets it (core.quantize: truncate to d,
L2-normalise, quantise) and are decoded to what that client compares: the grid's values for
int8/uint8 (uint8 is int8 + 128: the same quality), +-1 sign vectors for binary/ubinary
(cosine of these is 1 - 2 x Hamming / d). Then the same kNN top-1 and mAP@k as float.
`binary+rerank` is the funnel a client builds from the table: a shortlist of
RERANK_FACTOR x k by Hamming distance at d, reranked by the full-dim float cosine.
"""

from __future__ import annotations

import numpy as np

from core.quantize import OUTPUT_DTYPES, Calibration, bytes_per_vector, decoded
from index.search import build_index, rerank, search_index
from trainer.evaluate.metrics import average_precision_at_k, knn_predict

RERANK_FACTOR = 10
FUNNEL = "binary+rerank"


def _scores(train_x, test_x, dim, k_max, shortlist=None, full=None):
    index = build_index(train_x, dim, use_gpu=False)
    scores, ids = search_index(index, test_x, shortlist or k_max)
    if shortlist is not None:
        bank, queries = full
        scores, ids = rerank(bank, queries, ids, k_max, bank.shape[1])
    return scores, ids


def score_dtypes(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    dims: list[int],
    calibration: Calibration,
    k: int = 20,
    map_k: int = 10,
) -> list[dict]:
    """One row per (dim, type) and per dim for the binary funnel: dim, dtype, bytes (per
    vector as sent; the funnel's also needs the float vectors to rerank), kNN top-1, mAP@k."""
    k_max = max(k, map_k)
    rows = []
    for dim in dims:
        cache: dict[str, tuple[float, float]] = {}
        for dtype in (*OUTPUT_DTYPES, FUNNEL):
            base = {"int8": "uint8", "binary": "ubinary"}.get(dtype, dtype)  # same decoded vectors
            if base not in cache:
                if dtype == FUNNEL:
                    shortlist = min(len(train_x), RERANK_FACTOR * k_max)
                    bank = decoded(train_x, dim, "binary")
                    query = decoded(test_x, dim, "binary")
                    s, i = _scores(bank, query, dim, k_max, shortlist, (train_x, test_x))
                else:
                    bank = decoded(train_x, dim, base, calibration)
                    query = decoded(test_x, dim, base, calibration)
                    s, i = _scores(bank, query, dim, k_max)
                knn = float(np.mean(knn_predict(s, i, train_y, k) == test_y))
                ap = float(np.mean(average_precision_at_k(i, train_y, test_y, map_k)))
                cache[base] = (knn, ap)
            knn, ap = cache[base]
            sent = "binary" if dtype == FUNNEL else dtype
            rows.append(
                {
                    "dim": dim,
                    "dtype": dtype,
                    "bytes": bytes_per_vector(dim, sent),
                    "knn_top1": knn,
                    "map_at_k": ap,
                }
            )
    return rows
