"""ANN shortlists (index.ann) against exact search: recall, tombstones, knobs, files, GPU path."""

from __future__ import annotations

import faiss
import numpy as np
import pytest
from search_reference import funnel_search, search
from support import matryoshka_vectors

from index import ann as ann_module
from index.ann import AnnIndex, build_ann
from index.plan import SearchKnobs
from index.search import rerank, scan_top_k

N, WIDTH, DIM = 4000, 64, 16


@pytest.fixture(scope="module")
def data():
    bank = matryoshka_vectors(N, WIDTH, seed=0)
    queries = matryoshka_vectors(100, WIDTH, seed=1)
    _, truth = search(bank, queries, 10, WIDTH, threads=1)
    return bank, queries, truth


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(
        np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth, strict=True)])
    )


def funnel(ann, bank, queries, shortlist, knobs=None):
    _, cand = ann.search(queries, shortlist, knobs)
    return rerank(bank, queries, cand, 10, WIDTH)


@pytest.mark.parametrize(
    ("factory", "dim", "shortlist", "floor"),
    [
        ("Flat", DIM, 400, 0.99),
        ("HNSW32", DIM, 400, 0.99),
        ("IVF16,Flat", DIM, 400, 0.99),
        ("IVF16,PQ8x4fs", DIM, 400, 0.97),
        ("SQ8", DIM, 400, 0.99),
        # sign bits drop the magnitudes Matryoshka concentrates in the prefix: weaker, and
        # well above chance (a random 1200 of 4000 holds 30%)
        ("BFlat", 64, 1200, 0.75),
        ("BHNSW16", 64, 1200, 0.75),
    ],
)
def test_ann_funnel_recall_matches_exact(data, factory, dim, shortlist, floor):
    """Every index type, at generous knobs, recovers exact full-dim top-10."""
    bank, queries, truth = data
    ann = build_ann(factory, dim, bank, train_size=N)
    assert ann.ntotal == N
    _, ids = funnel(ann, bank, queries, shortlist, SearchKnobs(nprobe=16, ef_search=shortlist))
    assert recall(ids, truth) >= floor, factory


def test_flat_ann_funnel_equals_exact_funnel(data):
    """A Flat 'ANN' is exact: the same ids and scores as index.search.funnel_search."""
    bank, queries, _ = data
    ann = build_ann("Flat", DIM, bank)
    s1, i1 = funnel(ann, bank, queries, 100)
    s2, i2 = funnel_search(bank, queries, 10, DIM, WIDTH, 100, threads=1)
    np.testing.assert_array_equal(i1, i2)
    np.testing.assert_allclose(s1, s2, rtol=1e-6)


def test_knobs_trade_recall_for_work(data):
    bank, queries, truth = data
    ivf = build_ann("IVF16,Flat", DIM, bank, train_size=N)
    low = recall(funnel(ivf, bank, queries, 100, SearchKnobs(nprobe=1))[1], truth)
    high = recall(funnel(ivf, bank, queries, 100, SearchKnobs(nprobe=16))[1], truth)
    exact = recall(funnel(build_ann("Flat", DIM, bank), bank, queries, 100)[1], truth)
    assert low < high == exact  # nprobe = nlist probes every list: exact
    hnsw = build_ann("HNSW32", DIM, bank)
    hnsw.search(queries[:1], 10, SearchKnobs(ef_search=77, nprobe=3))  # nprobe: no such knob
    assert hnsw.index.hnsw.efSearch == 77


@pytest.mark.parametrize("factory", ["HNSW32", "IVF16,Flat", "BFlat"])
def test_tombstones_never_come_back(data, factory):
    bank, queries, _ = data
    dim = 64 if factory.startswith("B") else DIM
    ann = build_ann(factory, dim, bank, train_size=N)
    _, before = ann.search(queries, 20, SearchKnobs(nprobe=16, ef_search=64))
    dead = set(before[:, :5].reshape(-1).tolist())
    ann.delete(dead)
    _, after = ann.search(queries, 20, SearchKnobs(nprobe=16, ef_search=64))
    assert not dead & set(after.reshape(-1).tolist())
    assert (after >= 0).all()  # over-fetching still fills every place
    small = build_ann(factory, dim, bank[:40], train_size=40) if factory != "IVF16,Flat" else None
    if small is not None:
        small.delete(range(35))
        s, i = small.search(queries[:2], 10)
        assert set(i[0, :5].tolist()) <= set(range(35, 40)) and (i[:, 5:] == -1).all()
        assert np.isneginf(s[:, 5:]).all()


def test_adds_get_the_next_row_ids(data):
    bank, _, _ = data
    ann = build_ann("HNSW32", DIM, bank[:1000])
    ann.add(bank[1000:1010])
    _, ids = ann.search(bank[1005:1006], 1)
    assert ids[0, 0] == 1005


@pytest.mark.parametrize("factory", ["HNSW32", "IVF16,PQ8x4fs", "BFlat"])
def test_save_load_round_trip(data, tmp_path, factory):
    bank, queries, _ = data
    dim = 64 if factory.startswith("B") else DIM
    ann = build_ann(factory, dim, bank, train_size=N)
    ann.save(tmp_path / "a.faiss")
    again = AnnIndex.load(tmp_path / "a.faiss", dim, factory)
    knobs = SearchKnobs(nprobe=4, ef_search=32)
    for a, b in zip(ann.search(queries, 20, knobs), again.search(queries, 20, knobs), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("factory", ["IVF16,Flat", "IVF16,SQ8"])
def test_one_query_at_a_time_equals_a_batch(data, factory):
    """A single query's IVF search splits its lists over threads (parallel_mode 1), a batch
    splits its queries (parallel_mode 0): the same ids and scores either way."""
    bank, queries, _ = data
    ann = build_ann(factory, DIM, bank, train_size=N)
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(2)
    try:
        knobs = SearchKnobs(nprobe=4)
        s_batch, i_batch = ann.search(queries, 50, knobs)
        assert ann._ivf.parallel_mode == 0
        one = [ann.search(queries[r : r + 1], 50, knobs) for r in range(len(queries))]
        assert ann._ivf.parallel_mode == 1
    finally:
        faiss.omp_set_num_threads(threads)
    np.testing.assert_array_equal(np.concatenate([i for _, i in one]), i_batch)
    np.testing.assert_allclose(np.concatenate([s for s, _ in one]), s_batch, rtol=1e-6)


def test_bad_factory_is_a_clear_error():
    with pytest.raises(ValueError, match=r"FAISS cannot build index 'Nope'.*examples"):
        AnnIndex.create("Nope", 16)
    with pytest.raises(ValueError, match="divisible by 8"):
        AnnIndex.create("BFlat", 12)


def test_scan_top_k_equals_index_search_with_exclusions(data):
    bank, queries, _ = data
    for dim in (8, 64):
        s1, i1 = scan_top_k(bank, queries, 25, dim, budget=3000)
        s2, i2 = search(bank, queries, 25, dim, threads=1)
        np.testing.assert_array_equal(i1, i2)
        np.testing.assert_allclose(s1, s2, atol=1e-6)
    exclude = np.zeros(N, bool)
    exclude[i2[:, :3].reshape(-1)] = True
    _, i3 = scan_top_k(bank, queries, 25, 64, exclude=exclude)
    assert not exclude[i3].any()


class FakeGpuResources:
    pass


def test_gpu_path_selection_and_contract(data, monkeypatch):
    """With a 'GPU' (a CPU clone standing in for faiss.index_cpu_to_gpu), flat and IVF
    indexes search the copy, adds reach both, and results keep the same contract."""
    bank, queries, _ = data
    hnsw = build_ann("HNSW32", DIM, bank[:500])
    assert not hnsw.to_gpu(count=lambda: 1)  # HNSW has no GPU twin here
    ivf = build_ann("IVF16,Flat", DIM, bank[:3000], train_size=3000)
    assert not ivf.to_gpu(count=lambda: 0)  # no GPU visible: stays on the CPU
    reference = build_ann("IVF16,Flat", DIM, bank[:3000], train_size=3000)
    calls = []

    def fake_to_gpu(resources, device, index):
        calls.append(device)
        return faiss.clone_index(index)

    monkeypatch.setattr(faiss, "StandardGpuResources", FakeGpuResources, raising=False)
    monkeypatch.setattr(faiss, "index_cpu_to_gpu", fake_to_gpu, raising=False)
    monkeypatch.setattr(faiss, "GpuParameterSpace", faiss.ParameterSpace, raising=False)
    assert ivf.to_gpu(device=0, count=lambda: 1) and calls == [0]
    assert ivf._gpu is not None
    for a in (ivf, reference):
        a.add(bank[3000:])
        a.delete([7])
    knobs = SearchKnobs(nprobe=4)
    for x, y in zip(
        ivf.search(queries, 30, knobs), reference.search(queries, 30, knobs), strict=True
    ):
        np.testing.assert_array_equal(x, y)
    assert ivf._gpu.ntotal == ivf.index.ntotal == N


def test_gpu_factories():
    assert AnnIndex.create("Flat", 8).gpu_supported()
    assert AnnIndex.create("IVF4,PQ4", 8).gpu_supported()
    assert not AnnIndex.create("HNSW32", 8).gpu_supported()
    assert not AnnIndex.create("BFlat", 8).gpu_supported()
    assert ann_module.GPU_FACTORIES.match("IVF1024,SQ8")
