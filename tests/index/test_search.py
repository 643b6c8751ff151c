"""index.search against brute-force numpy, with ties, chunking and the funnel."""

from __future__ import annotations

import numpy as np
import pytest
from search_reference import funnel_search, search

from index.search import build_index, search_index


def cosines(bank: np.ndarray, queries: np.ndarray, dim: int) -> np.ndarray:
    """float64 cosine of every (query, bank item) pair at dim."""
    b = bank[:, :dim].astype(np.float64)
    q = queries[:, :dim].astype(np.float64)
    b /= np.linalg.norm(b, axis=1, keepdims=True)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    return q @ b.T


def brute_force(bank: np.ndarray, queries: np.ndarray, k: int, dim: int):
    """Top-k by float64 cosine at dim, ordered by (score desc, id asc)."""
    sims = cosines(bank, queries, dim)
    ids = np.broadcast_to(np.arange(len(bank)), sims.shape)
    order = np.lexsort((ids, -sims), axis=-1)[:, :k]
    return np.take_along_axis(sims, order, 1), order


def sign_vectors(rng: np.random.Generator, n: int, width: int) -> np.ndarray:
    """+-1 entries: at dims 4, 16, 64 every cosine is exact in float32, so ties are real."""
    return rng.choice([-1.0, 1.0], size=(n, width)).astype(np.float32)


@pytest.mark.parametrize("dim", [4, 16, 64])
def test_search_breaks_ties_by_smallest_id(dim):
    rng = np.random.default_rng(0)
    bank, queries = sign_vectors(rng, 1500, 64), sign_vectors(rng, 300, 64)
    scores, ids = search(bank, queries, 40, dim, chunk_size=77, threads=1)
    ref_scores, ref_ids = brute_force(bank, queries, 40, dim)
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_array_equal(scores, ref_scores.astype(np.float32))


@pytest.mark.parametrize("dim", [8, 24, 64])
def test_search_matches_brute_force_on_gaussian_data(dim):
    rng = np.random.default_rng(1)
    bank = rng.standard_normal((2000, 64)).astype(np.float32)
    queries = rng.standard_normal((250, 64)).astype(np.float32)
    scores, ids = search(bank, queries, 25, dim, threads=1)
    ref_scores, ref_ids = brute_force(bank, queries, 25, dim)
    full = cosines(bank, queries, dim)
    # float32 may swap neighbours whose float64 cosines differ by ~1e-7; the cosine of
    # every returned id must still match the reference at its rank.
    np.testing.assert_allclose(np.take_along_axis(full, ids, 1), ref_scores, atol=1e-5)
    np.testing.assert_allclose(scores, ref_scores, atol=1e-5)
    assert (ids == ref_ids).mean() > 0.99


def test_chunked_search_equals_unchunked():
    rng = np.random.default_rng(2)
    bank = np.repeat(rng.standard_normal((400, 32)).astype(np.float32), 3, axis=0)
    queries = rng.standard_normal((333, 32)).astype(np.float32)
    whole = search(bank, queries, 30, 16, chunk_size=10_000, threads=1)
    for chunk in (1, 7, 100):
        parts = search(bank, queries, 30, 16, chunk_size=chunk, threads=1)
        np.testing.assert_array_equal(parts[1], whole[1])
        np.testing.assert_array_equal(parts[0], whole[0])


def test_k_equal_to_bank_returns_everything():
    rng = np.random.default_rng(3)
    bank, queries = sign_vectors(rng, 50, 16), sign_vectors(rng, 5, 16)
    _, ids = search(bank, queries, 50, 4, threads=1)
    assert sorted(ids[0]) == list(range(50))
    np.testing.assert_array_equal(ids, brute_force(bank, queries, 50, 4)[1])


@pytest.mark.parametrize(("dim", "rerank_dim"), [(4, 16), (8, 64), (16, 16)])
def test_funnel_with_whole_bank_shortlist_equals_exact_search(dim, rerank_dim):
    rng = np.random.default_rng(4)
    bank = rng.standard_normal((800, 64)).astype(np.float32)
    queries = rng.standard_normal((120, 64)).astype(np.float32)
    exact = search(bank, queries, 10, rerank_dim, threads=1)
    funnel = funnel_search(bank, queries, 10, dim, rerank_dim, shortlist=len(bank), threads=1)
    np.testing.assert_array_equal(funnel[1], exact[1])
    np.testing.assert_allclose(funnel[0], exact[0], atol=1e-5)


def test_funnel_with_ties_and_prebuilt_index():
    rng = np.random.default_rng(5)
    bank, queries = sign_vectors(rng, 600, 16), sign_vectors(rng, 90, 16)
    index = build_index(bank, 4, use_gpu=False)
    funnel = funnel_search(bank, queries, 15, 4, 16, shortlist=600, index=index)
    np.testing.assert_array_equal(funnel[1], brute_force(bank, queries, 15, 16)[1])


def test_funnel_only_returns_shortlisted_items():
    rng = np.random.default_rng(6)
    bank = rng.standard_normal((500, 32)).astype(np.float32)
    queries = rng.standard_normal((20, 32)).astype(np.float32)
    _, shortlist = search(bank, queries, 50, 8, threads=1)
    _, ids = funnel_search(bank, queries, 5, 8, 32, shortlist=50, threads=1)
    for row, cand in zip(ids, shortlist, strict=True):
        assert set(row) <= set(cand)


def test_search_index_normalises_queries():
    rng = np.random.default_rng(7)
    bank = rng.standard_normal((100, 16)).astype(np.float32)
    index = build_index(bank, 16, use_gpu=False)
    scores, ids = search_index(index, 5 * bank[:3], 1)
    np.testing.assert_array_equal(ids[:, 0], [0, 1, 2])
    np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-5)


@pytest.mark.parametrize(
    ("k", "dim", "message"),
    [(0, 8, "k=0"), (101, 8, "k=101"), (5, 17, "dim 17"), (5, 0, "dim 0")],
)
def test_bad_arguments_raise_value_error(k, dim, message):
    bank = np.ones((100, 16), dtype=np.float32)
    with pytest.raises(ValueError, match=message):
        search(bank, bank[:2], k, dim)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_truncate_normalize_np_never_writes_its_input(dtype):
    """It divides in place only into its own copy: the caller's rows stay as they were."""
    from core.nesting import truncate_normalize_np

    x = np.random.default_rng(0).standard_normal((6, 16)).astype(dtype)
    before = x.copy()
    for dim in (16, 8):
        out = truncate_normalize_np(x, dim)
        np.testing.assert_array_equal(x, before)
        ref = before[:, :dim].astype(np.float64)
        ref /= np.linalg.norm(ref, axis=1, keepdims=True)
        np.testing.assert_allclose(out, ref, rtol=1e-3 if dtype == "float16" else 1e-6)
        assert out.dtype == np.float32 and out.flags.c_contiguous


def test_rerank_prefixes_equals_reranking_each_prefix():
    from index.search import rerank, rerank_prefixes

    rng = np.random.default_rng(5)
    bank = rng.standard_normal((300, 16)).astype(np.float32)
    bank[7] = bank[3]  # a tie: broken by the smaller id in both
    queries = rng.standard_normal((9, 16)).astype(np.float32)
    candidates = rng.choice(300, (9, 40)).astype(np.int64)
    candidates[:, 5] = 7
    candidates[:, 6] = 3
    candidates[2, 30:] = -1  # an ANN that found fewer
    sizes = [1, 4, 7, 20, 40]
    got = rerank_prefixes(bank, queries, candidates, 5, 12, sizes)
    for s in sizes:
        want = rerank(bank, queries, candidates[:, :s], 5, 12)
        np.testing.assert_array_equal(got[s][1], want[1])
        np.testing.assert_array_equal(got[s][0], want[0])
