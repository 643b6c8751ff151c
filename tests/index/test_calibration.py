"""The recall table: every shortlist of one IVF (or exact) knob is measured from one search at
the largest, and must say exactly what searching at each shortlist would find."""

from __future__ import annotations

import numpy as np
import pytest
from support import matryoshka_vectors

from index import calibration
from index.search import scan_top_k
from index.store import IndexStore, write_generation

FP = "c" * 16
WIDTH, N = 32, 1200


def store_with(tmp_path, ann: dict | None) -> IndexStore:
    x = matryoshka_vectors(N, WIDTH, seed=3)
    items = ({"id": f"i{i}", "label": i % 7, "metadata": None} for i in range(N))
    info = {"fingerprint": FP, "nesting_list": [8, 16, 32], "store_dtype": "float16"}
    if ann is not None:
        info["ann"] = ann
    write_generation(tmp_path / "i", 0, WIDTH, N, [x], items, info)
    store = IndexStore.open(tmp_path / "i", FP, WIDTH, writable=True)
    for i in range(0, 40, 3):  # dead rows must stay out of truth and answers alike
        store.delete(f"i{i}")
    return store


def per_setting_recall(store: IndexStore, setting: calibration.Setting, queries: int):
    """What the table would say if each shortlist were searched on its own."""
    k = calibration.K
    own = np.sort(np.random.default_rng(0).choice(store.vectors.live_rows(), queries, False))
    q = store.vectors.rows[own]
    _, truth = scan_top_k(store.vectors.rows, q, k + 1, WIDTH, exclude=store.vectors.dead)
    rows = store.vectors.search(q, setting.plan(k + 1))[1]
    wrap = calibration._without_own
    return calibration._recall(wrap(rows, own, k), wrap(truth, own, k))


@pytest.mark.parametrize(
    "ann",
    [
        {"factory": "IVF16,Flat", "dim": 8, "train_size": N},
        None,  # no ANN: exact shortlists at the small nesting dims
    ],
)
def test_table_equals_searching_each_setting(tmp_path, ann):
    store = store_with(tmp_path, ann)
    table = calibration.calibrate(store, queries=60, timed=2)
    measured = table.settings[:-1]
    assert len(measured) > 5 and table.settings[-1].dim == WIDTH
    assert {s.shortlist for s in measured} >= {20, 50, 100}
    assert any(s.recall < 0.999 for s in measured)  # the small settings do miss
    for s in measured:
        assert (s.recall, s.recall_low) == per_setting_recall(store, s, 60), s
        assert s.ms > 0
    store.close()


def test_table_on_query_vectors_that_are_not_items(tmp_path):
    store = store_with(tmp_path, {"factory": "IVF16,Flat", "dim": 8, "train_size": N})
    sample = matryoshka_vectors(50, WIDTH, seed=11)
    table = calibration.calibrate(store, queries=40, timed=1, sample=sample)
    assert table.held_out and table.queries == 40
    _, truth = scan_top_k(store.vectors.rows, sample[:40], calibration.K, WIDTH,
                          exclude=store.vectors.dead)  # fmt: skip
    for s in table.settings[:-1]:
        rows = store.vectors.search(sample[:40], s.plan(calibration.K + 1))[1][:, : calibration.K]
        assert (s.recall, s.recall_low) == calibration._recall(rows, truth), s
    store.close()


def test_calibrate_cli_refuses_query_vectors_of_another_width(tmp_path):
    from index.calibrate import main

    store_with(tmp_path, None).close()
    np.save(tmp_path / "q.npy", np.zeros((5, WIDTH // 2), np.float32))
    with pytest.raises(SystemExit, match=r"shape \(5, 16\); expected \[n, 32\]"):
        main([str(tmp_path / "i"), "--queries-file", str(tmp_path / "q.npy")])


def test_a_query_sample_given_once_is_kept_for_compactions(tmp_path, caplog):
    """At 10M held-out items certified 0.99 where new queries got 0.9899: a table measured on
    real queries must not fall back to items at the next compaction."""
    from index.calibrate import main

    store_with(tmp_path, {"factory": "IVF16,Flat", "dim": 8, "train_size": N}).close()
    np.save(tmp_path / "q.npy", matryoshka_vectors(50, WIDTH, seed=11))
    main([str(tmp_path / "i"), "--queries-file", str(tmp_path / "q.npy")])
    (tmp_path / "q.npy").unlink()  # the folder keeps its own copy
    store = IndexStore.open(tmp_path / "i", FP, WIDTH, writable=True)
    assert store.calibration.held_out and store.calibration.queries == 50
    store.delete("i1")
    store.compact()
    assert store.calibration.held_out and store.calibration.queries == 50
    assert store.manifest["calibration_queries"] == calibration.SAMPLE_FILE
    (tmp_path / "i" / calibration.SAMPLE_FILE).write_bytes(b"not an array")
    store.compact()
    assert not store.calibration.held_out and store.calibration.queries == calibration.QUERIES
    assert "calibration-queries.npy is unreadable" in caplog.text
    store.close()
    reopened = IndexStore.open(tmp_path / "i", FP, WIDTH, writable=True)  # not a stale file
    assert (tmp_path / "i" / calibration.SAMPLE_FILE).exists()
    reopened.close()
