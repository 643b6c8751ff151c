"""kNN top-1 and mAP@k against a plain-loop numpy reference, ties and missing classes included."""

from __future__ import annotations

import numpy as np
import pytest
from search_reference import search

from trainer.evaluate.metrics import average_precision_at_k, knn_predict


def reference_neighbours(bank: np.ndarray, queries: np.ndarray, dim: int) -> tuple:
    """Every bank item per query, by float64 cosine desc, ties by smallest id."""
    b = bank[:, :dim].astype(np.float64)
    q = queries[:, :dim].astype(np.float64)
    sims = (q / np.linalg.norm(q, axis=1, keepdims=True)) @ (
        b / np.linalg.norm(b, axis=1, keepdims=True)
    ).T
    order = [sorted(range(len(bank)), key=lambda j, r=r: (-r[j], j)) for r in sims]
    return sims, order


def reference_knn(bank, bank_y, queries, query_y, dim, k, temperature=0.07) -> float:
    sims, order = reference_neighbours(bank, queries, dim)
    correct = 0
    for qi, ranked in enumerate(order):
        votes: dict[int, float] = {}
        for j in ranked[:k]:
            votes[int(bank_y[j])] = votes.get(int(bank_y[j]), 0.0) + float(
                np.exp(np.float64(np.float32(sims[qi, j])) / temperature)
            )
        best = max(votes.values())
        correct += min(c for c, v in votes.items() if v == best) == query_y[qi]
    return correct / len(queries)


def reference_map(bank, bank_y, queries, query_y, dim, k) -> float:
    _, order = reference_neighbours(bank, queries, dim)
    aps = []
    for qi, ranked in enumerate(order):
        n_relevant = int(np.sum(bank_y == query_y[qi]))
        hits, total = 0, 0.0
        for i, j in enumerate(ranked[:k], start=1):
            if bank_y[j] == query_y[qi]:
                hits += 1
                total += hits / i
        aps.append(total / min(k, n_relevant) if n_relevant else 0.0)
    return float(np.mean(aps))


def tied_data(seed: int):
    """+-1 vectors (exact cosines at dims 4 and 16, so many exact ties), duplicated rows,
    bank classes 0..5 and 9 (9 never queried), query classes 0..6 (6 absent from the bank)."""
    rng = np.random.default_rng(seed)
    protos = rng.choice([-1.0, 1.0], size=(40, 16)).astype(np.float32)
    bank = protos[rng.integers(0, 40, 300)]
    bank_y = rng.choice([0, 1, 2, 3, 4, 5, 9], size=300)
    queries = rng.choice([-1.0, 1.0], size=(80, 16)).astype(np.float32)
    query_y = rng.integers(0, 7, 80)
    return bank, bank_y, queries, query_y


def gaussian_data(seed: int):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((5, 32))
    bank_y = rng.integers(0, 5, 400)
    query_y = rng.integers(0, 5, 60)
    bank = (centres[bank_y] + rng.standard_normal((400, 32))).astype(np.float32)
    queries = (centres[query_y] + rng.standard_normal((60, 32))).astype(np.float32)
    return bank, bank_y, queries, query_y


@pytest.mark.parametrize(
    ("data", "dim"), [(tied_data, 4), (tied_data, 16), (gaussian_data, 8), (gaussian_data, 32)]
)
@pytest.mark.parametrize("k", [1, 7, 20])
def test_metrics_match_reference(data, dim, k):
    bank, bank_y, queries, query_y = data(dim + k)
    map_k = 10
    scores, ids = search(bank, queries, max(k, map_k), dim, threads=1)
    assert np.mean(knn_predict(scores, ids, bank_y, k) == query_y) == pytest.approx(
        reference_knn(bank, bank_y, queries, query_y, dim, k), abs=1e-12
    )
    assert average_precision_at_k(ids, bank_y, query_y, map_k).mean() == pytest.approx(
        reference_map(bank, bank_y, queries, query_y, dim, map_k), abs=1e-12
    )


def test_knn_tie_goes_to_smallest_label():
    scores = np.zeros((1, 4), dtype=np.float32)
    ids = np.array([[0, 1, 2, 3]])
    labels = np.array([7, 3, 3, 7])
    assert knn_predict(scores, ids, labels, 4)[0] == 3


def test_knn_weights_favour_closer_neighbours():
    scores = np.array([[0.9, 0.5, 0.5]], dtype=np.float32)
    labels = np.array([1, 2, 2])
    assert knn_predict(scores, np.array([[0, 1, 2]]), labels, 3)[0] == 1


def test_ap_counts_relevant_items_up_to_k():
    ids = np.array([[0, 1, 2, 3]])
    bank_y = np.array([1, 0, 1, 1, 1, 1])
    # hits at ranks 1, 3, 4: (1 + 2/3 + 3/4) / min(4, 5)
    ap = average_precision_at_k(ids, bank_y, np.array([1]), 4)
    assert ap[0] == pytest.approx((1 + 2 / 3 + 3 / 4) / 4)
    # only two items of class 0 exist: one hit at rank 2 -> (1/2) / min(4, 1)
    assert average_precision_at_k(ids, bank_y, np.array([0]), 4)[0] == pytest.approx(0.5)


def test_query_class_absent_from_bank_scores_zero():
    ids = np.array([[0, 1], [1, 0]])
    bank_y = np.array([0, 1])
    ap = average_precision_at_k(ids, bank_y, np.array([5, 1]), 2)
    np.testing.assert_allclose(ap, [0.0, 1.0])


def test_k_larger_than_neighbour_lists_is_refused():
    with pytest.raises(ValueError, match="k=3"):
        average_precision_at_k(np.zeros((2, 2), dtype=np.int64), np.zeros(2), np.zeros(2), 3)
