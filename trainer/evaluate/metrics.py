"""kNN top-1 and mAP@k from search results (neighbours sorted best first).

Both metrics read the same [n_queries, k_max] neighbour lists, so one search per dim serves
both. Definitions (also in docs/EVALUATION.md):

- weighted kNN: the k nearest bank items vote for their label with weight exp(cos / T),
  T = 0.07; the label with the largest summed weight wins, ties go to the smallest label.
- AP@k of a query: (sum of precision@i over the ranks i <= k holding a same-label item)
  / min(k, number of same-label items in the bank). A query whose label has no item in
  the bank has AP@k = 0 and still counts in the mean.
"""

from __future__ import annotations

import numpy as np

KNN_TEMPERATURE = 0.07
VOTE_CHUNK = 4096


def _check(ids: np.ndarray, k: int) -> None:
    if ids.ndim != 2:
        raise ValueError(f"neighbour ids must be [n_queries, k], got shape {ids.shape}")
    if not 1 <= k <= ids.shape[1]:
        raise ValueError(f"k={k} needs at least k neighbours per query, got {ids.shape[1]}")


def knn_predict(
    scores: np.ndarray,
    ids: np.ndarray,
    bank_labels: np.ndarray,
    k: int,
    temperature: float = KNN_TEMPERATURE,
) -> np.ndarray:
    """Weighted-vote label of each query from its first k neighbours.

    Weights are summed in float64 in rank order; np.argmax takes the first maximum over
    the sorted classes, which is the deterministic smallest-label tie-break.
    """
    _check(ids, k)
    classes, bank_class = np.unique(bank_labels, return_inverse=True)
    out = np.empty(ids.shape[0], dtype=classes.dtype)
    for start in range(0, ids.shape[0], VOTE_CHUNK):
        nbr = bank_class[ids[start : start + VOTE_CHUNK, :k]]
        weights = np.exp(scores[start : start + VOTE_CHUNK, :k].astype(np.float64) / temperature)
        votes = np.zeros((nbr.shape[0], classes.size), dtype=np.float64)
        rows = np.repeat(np.arange(nbr.shape[0]), k)
        np.add.at(votes, (rows, nbr.reshape(-1)), weights.reshape(-1))
        out[start : start + nbr.shape[0]] = classes[np.argmax(votes, axis=1)]
    return out


def average_precision_at_k(
    ids: np.ndarray, bank_labels: np.ndarray, query_labels: np.ndarray, k: int
) -> np.ndarray:
    """AP@k of every query (see the module docstring); 0 where the bank lacks the label."""
    _check(ids, k)
    relevant = bank_labels[ids[:, :k]] == query_labels[:, None]
    hits = np.cumsum(relevant, axis=1)
    precision = hits / np.arange(1, k + 1)
    classes, counts = np.unique(bank_labels, return_counts=True)
    pos = np.clip(np.searchsorted(classes, query_labels), 0, classes.size - 1)
    n_relevant = np.where(classes[pos] == query_labels, counts[pos], 0)
    denom = np.minimum(k, n_relevant)
    total = (precision * relevant).sum(axis=1)
    return np.divide(total, denom, out=np.zeros(len(total)), where=denom > 0)
