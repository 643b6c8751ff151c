"""The index folder: write-ahead log replay, torn tails, compaction, checkpoint refusal."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from support import matryoshka_vectors

from core.cli import UsageError
from index import thumbnails
from index.errors import DuplicateIds, IndexFolderError, ItemNotFound
from index.plan import SearchPlan
from index.store import IndexStore
from trainer.build_index import main as index_main

FP = "f" * 16
CREATE = {"checkpoint": "test.pt", "nesting_list": [8, 16, 32]}


def open_store(path, writable=True, fingerprint=FP, width=32):
    return IndexStore.open(
        path, fingerprint, width, writable=writable, create=CREATE if writable else None
    )


def items(ids):
    return [{"id": i, "label": n, "metadata": None} for n, i in enumerate(ids)]


def snapshot(store):
    live = sorted(store.row_of)
    return live, np.stack([store.vector(i) for i in live]) if live else None


def test_unclosed_writer_is_replayed_exactly(tmp_path):
    store = open_store(tmp_path / "i")
    x = matryoshka_vectors(10, 32, seed=0)
    store.add(items([f"a{i}" for i in range(5)]), x[:5])
    store.search(
        x[:2], SearchPlan(3, 8, None, 10)
    )  # builds an index that the next edits must update
    store.add(items([f"b{i}" for i in range(5)]), x[5:])
    store.delete("a2")
    before = snapshot(store)
    # no close(): as after kill -9, only the fsync'ed log remains
    again = open_store(tmp_path / "i")
    after = snapshot(again)
    assert before[0] == after[0] and len(again) == 9
    np.testing.assert_array_equal(before[1], after[1])
    s1, r1, *_ = store.search(x, SearchPlan(3, 16, 32, 6))
    s2, r2, *_ = again.search(x, SearchPlan(3, 16, 32, 6))
    np.testing.assert_allclose(s1, s2, rtol=1e-6)
    assert [[store.item(r)["id"] for r in row] for row in r1] == [
        [again.item(r)["id"] for r in row] for row in r2
    ]


def test_torn_tail_dropped_and_cut_but_mid_log_damage_refused(tmp_path):
    store = open_store(tmp_path / "i")
    x = matryoshka_vectors(3, 32, seed=1)
    for i in range(3):
        store.add(items([f"v{i}"]), x[i : i + 1])
    wal = tmp_path / "i" / store.manifest["wal"]
    good = wal.read_bytes()
    wal.write_bytes(good + b'0badf00d {"op":"add","ite')  # a write cut short by a crash
    assert len(open_store(tmp_path / "i", writable=False)) == 3
    reopened = open_store(tmp_path / "i")
    assert wal.read_bytes() == good and len(reopened) == 3
    lines = good.splitlines(keepends=True)
    wal.write_bytes(lines[0] + lines[1].replace(b'"v1"', b'"v9"') + lines[2])
    with pytest.raises(IndexFolderError, match="corrupt"):
        open_store(tmp_path / "i", writable=False)


def test_compaction_keeps_live_items_and_drops_old_files(tmp_path):
    store = open_store(tmp_path / "i")
    x = matryoshka_vectors(20, 32, seed=2)
    store.add(items([f"v{i}" for i in range(20)]), x)
    for i in range(0, 20, 3):
        store.delete(f"v{i}")
    store.search(x, SearchPlan(5, 8, None, 5))
    before = snapshot(store)
    scores, rows, *_ = store.search(x, SearchPlan(5, 8, 32, 10))
    ids = [[store.item(r)["id"] for r in row] for row in rows]
    store.compact()
    assert sorted(p.name for p in (tmp_path / "i").iterdir()) == [
        "calibration-1.json",  # the recall table, remeasured with every compaction
        "columns-1.npz",
        "items-1.jsonl",
        "manifest.json",
        "vectors-1.npy",
        "wal-1.jsonl",
    ]
    for s in (store, open_store(tmp_path / "i", writable=False)):
        after = snapshot(s)
        assert before[0] == after[0]
        np.testing.assert_array_equal(before[1], after[1])
        s2, r2, *_ = s.search(x, SearchPlan(5, 8, 32, 10))
        np.testing.assert_allclose(scores, s2, rtol=1e-6)
        assert ids == [[s.item(r)["id"] for r in row] for row in r2]
    store.add(items(["new"]), x[:1])
    assert len(open_store(tmp_path / "i")) == len(before[0]) + 1


def test_refuses_other_checkpoint_width_and_missing_folder(tmp_path):
    open_store(tmp_path / "i").close()
    with pytest.raises(IndexFolderError, match="fingerprint") as e:
        open_store(tmp_path / "i", fingerprint="0" * 16)
    assert "python -m trainer.build_index --force" in str(e.value)
    with pytest.raises(IndexFolderError, match="64"):
        open_store(tmp_path / "i", width=64)
    with pytest.raises(IndexFolderError, match=r"no manifest\.json"):
        open_store(tmp_path / "missing", writable=False)
    (tmp_path / "i" / "manifest.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(IndexFolderError, match="manifest"):
        open_store(tmp_path / "i", writable=False)


def test_edit_errors_and_empty_search(tmp_path):
    store = open_store(tmp_path / "i")
    x = matryoshka_vectors(2, 32, seed=3)
    scores, *_ = store.search(x, SearchPlan(5, 8, None, 10))
    assert scores.shape == (2, 0)
    store.add(items(["a"]), x[:1])
    with pytest.raises(DuplicateIds, match="a"):
        store.add(items(["a"]), x[:1])
    with pytest.raises(ItemNotFound, match="zz"):
        store.delete("zz")
    reader = open_store(tmp_path / "i", writable=False)
    with pytest.raises(RuntimeError, match="read-only"):
        reader.add(items(["b"]), x[1:])


def test_rows_view_gathers_base_and_added_rows(tmp_path):
    store = open_store(tmp_path / "i")
    x = matryoshka_vectors(6, 32, seed=4)
    store.add(items(list("abc")), x[:3])
    store.compact()
    store.add(items(list("def")), x[3:])
    rows = store.vectors.rows
    np.testing.assert_array_equal(rows[np.array([5, 0, 3, 2]), :8], x[[5, 0, 3, 2], :8])
    assert store.vectors.rows.shape == (6, 32)


def test_index_cli_errors(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        index_main(
            [
                "--checkpoint",
                str(tmp_path / "no.pt"),
                "--dataset",
                "shapes",
                "--out",
                str(tmp_path / "o"),
            ]
        )
    with pytest.raises(UsageError, match="--checkpoint: Field required"):
        index_main(["--dataset", "shapes"])


ANN_KINDS = [
    ("HNSW32", 8, "float32"),
    ("IVF4,Flat", 8, "float16"),
    ("SQ8", 16, "float32"),
    ("BFlat", 16, "float16"),
]


def ann_store(path, factory, dim, dtype, n=600, min_rows=0):
    from index.store import write_generation
    from index.vectors import VectorOptions

    x = matryoshka_vectors(n, 32, seed=7)
    info = {
        **CREATE,
        "fingerprint": FP,
        "store_dtype": dtype,
        "ann": {"factory": factory, "dim": dim, "train_size": n},
    }
    write_generation(path, 0, 32, n, [x], items([f"r{i}" for i in range(n)]), info)
    options = VectorOptions(ann_min_rows=min_rows)
    return IndexStore.open(path, FP, 32, writable=True, options=options), x


def ids_of(store, rows):
    return [[store.item(r)["id"] for r in row if r >= 0] for row in rows]


@pytest.mark.parametrize(("factory", "dim", "dtype"), ANN_KINDS)
def test_ann_store_edits_replay_and_compaction(tmp_path, factory, dim, dtype):
    """Adds and deletes reach the ANN, survive a crash (log replay) and a compaction."""
    from index.plan import SearchKnobs

    store, x = ann_store(tmp_path / "i", factory, dim, dtype)
    assert store.ann is not None and store.ann.factory == factory
    assert store.vectors.rows.base.dtype == np.dtype(dtype)
    extra = matryoshka_vectors(20, 32, seed=8)
    store.add(items([f"n{i}" for i in range(20)]), extra)
    store.delete("r3")
    store.delete("n4")
    knobs = SearchKnobs(nprobe=4, ef_search=64)
    q = np.concatenate([x[[3, 10]], extra[[4, 5]]])
    args = (q, SearchPlan(5, dim, 32, 200, knobs=knobs, use_ann=True))
    before = store.search(*args)
    found = ids_of(store, before[1])
    assert not {"r3", "n4"} & {i for row in found for i in row}
    assert found[1][0] == "r10" and found[3][0] == "n5"  # a stored row finds itself
    again = open_store(tmp_path / "i")  # no close(): replay the log
    np.testing.assert_array_equal(again.search(*args)[1], before[1])
    store.compact()
    files = sorted(p.name for p in (tmp_path / "i").iterdir())
    assert "ann-1.faiss" in files and "ann-0.faiss" not in files
    assert store.ann is not None and store.ann.ntotal == len(store) == 618
    assert ids_of(store, store.search(*args)[1]) == found
    reopened = open_store(tmp_path / "i", writable=False)
    assert ids_of(reopened, reopened.search(*args)[1]) == found


def test_ann_funnel_recall_and_exact_default_on_small_indexes(tmp_path):
    """The ANN funnel finds what the exact funnel finds (recall@10 >= 0.99 against it), and
    below ann_min_rows an adaptive request shortlists exactly unless use_ann says so."""
    from search_reference import search

    from index.plan import SearchKnobs

    store, x = ann_store(tmp_path / "i", "HNSW32", 16, "float16", n=3000, min_rows=10_000)
    q = matryoshka_vectors(50, 32, seed=9)
    _, truth = search(x.astype(np.float16).astype(np.float32), q, 10, 32, threads=1)
    exact_path = store.search(q, SearchPlan(10, 16, 32, 600))
    ann_path = store.search(
        q, SearchPlan(10, 16, 32, 600, knobs=SearchKnobs(ef_search=1200), use_ann=True)
    )
    assert not store.vectors.uses_ann(16, None) and store.vectors.uses_ann(16, True)

    def recall(rows, ref):
        return np.mean([len(set(r) & set(t)) / 10 for r, t in zip(rows, ref, strict=True)])

    assert recall(ann_path[1], exact_path[1]) >= 0.99
    assert recall(exact_path[1], truth) >= 0.95
    full = store.search(
        q, SearchPlan(10, 32, None, 10)
    )  # exact at full dim: a scan of the stored rows
    np.testing.assert_array_equal(full[1], truth)


def test_exact_search_beyond_the_flat_cache_scans_the_store(tmp_path):
    from index.vectors import VectorOptions

    store = open_store(tmp_path / "i")
    x = matryoshka_vectors(300, 32, seed=5)
    store.add(items([f"v{i}" for i in range(300)]), x)
    store.delete("v1")
    cached = store.search(x[:20], SearchPlan(7, 16, None, 7))
    assert 16 in store.vectors._flat
    tight = IndexStore.open(
        tmp_path / "i", FP, 32, writable=False, options=VectorOptions(flat_cache_bytes=0)
    )
    scanned = tight.search(x[:20], SearchPlan(7, 16, None, 7))
    assert not tight.vectors._flat
    np.testing.assert_array_equal(cached[1], scanned[1])
    np.testing.assert_allclose(cached[0], scanned[0], atol=1e-6)
    assert 1 not in scanned[1]


@pytest.mark.parametrize(("dtype", "version"), [("float16", (1, 0)), ("float32", (2, 0))])
def test_row_file_reads_what_the_array_holds(tmp_path, monkeypatch, dtype, version):
    """pread gathers (scattered, runs, repeats, any order, column spans) equal a[rows, cols]."""
    from index import rowfile

    a = matryoshka_vectors(500, 24, seed=11).astype(dtype)
    path = tmp_path / "v.npy"
    with open(path, "wb") as f:
        np.lib.format.write_array(f, a, version=version)
    monkeypatch.setattr(rowfile, "BLOCK_BYTES", 7 * a.itemsize * 24)  # runs span blocks
    rf = rowfile.RowFile(path)
    assert rf.shape == a.shape and rf.dtype == a.dtype
    rng = np.random.default_rng(0)
    patterns = [
        rng.choice(500, 40, replace=False),
        np.arange(100, 260),
        np.array([5, 6, 7, 7, 3, 2, 400, 401, 402, 499, 0]),
        np.array([0, 2, 1, 3]),
        np.array([], dtype=np.int64),
    ]
    for rows in patterns:
        for cols in (slice(None), slice(0, 8), slice(3, 17), slice(None, None, 5)):
            np.testing.assert_array_equal(rf.read(rows, cols), a[rows, cols])
    with pytest.raises(IndexError, match=r"0\.\.499"):
        rf.read(np.array([500]), slice(None))


def test_searches_leave_nothing_of_the_vectors_file_mapped(tmp_path):
    """Reranks and full-dim scans read the store with pread: no page of it stays resident
    in the serving process (a memory map's touched pages count in its RSS)."""
    maps = "/proc/self/maps"
    if not os.path.exists(maps):
        pytest.skip("needs /proc (Linux)")
    from index.plan import SearchKnobs

    store, x = ann_store(tmp_path / "i", "IVF4,Flat", 8, "float16")
    store.search(x[:5], SearchPlan(10, 8, 32, 100, knobs=SearchKnobs(nprobe=4), use_ann=True))
    store.search(x[:5], SearchPlan(10, 32, None, 10))
    store.delete("r0")
    store.compact()
    store.search(x[:5], SearchPlan(10, 8, 32, 100, knobs=SearchKnobs(nprobe=4), use_ann=True))
    with open(maps) as f:
        assert "vectors-" not in f.read()


def test_a_deleted_items_thumbnail_never_comes_back(tmp_path):
    """A thumbnail belongs to one add: an id deleted and re-added as a vector has none, after
    a restart (log replay), after compaction and on a read replica."""
    from index.errors import ThumbnailDamaged

    x = matryoshka_vectors(3, 32, seed=3)
    store = open_store(tmp_path / "i")
    store.add(items(["secret-1", "keep"]), x[:2], {"secret-1": b"image-1", "keep": b"k"})
    assert store.thumbnail("secret-1")[0] == b"image-1"
    store.delete("secret-1")
    with pytest.raises(ItemNotFound):
        store.thumbnail("secret-1")
    store.add(items(["secret-1"]), x[2:])
    assert store.thumbnail("secret-1") is None and store.thumbnail("keep")[0] == b"k"
    replica = open_store(tmp_path / "i", writable=False)
    assert replica.thumbnail("secret-1") is None
    replica.close()
    again = open_store(tmp_path / "i")  # no close(): the log is replayed
    assert again.thumbnail("secret-1") is None
    again.compact()
    again.close()
    reopened = open_store(tmp_path / "i", writable=False)
    assert reopened.thumbnail("secret-1") is None and reopened.thumbnail("keep")[0] == b"k"
    etag = reopened.thumbnail("keep")[1]
    assert etag == f'"{__import__("zlib").crc32(b"k"):08x}"'  # the content's checksum
    reopened.close()
    # The blob replaced underneath: the checksum refuses the bytes instead of serving them.
    (tmp_path / "i" / "thumbnails.bin").write_bytes(b"Z" * 20)
    thumbnails._checked.clear()  # a fresh process: it checks every thumbnail at start
    with pytest.raises(IndexFolderError, match="fail their checksum"):
        open_store(tmp_path / "i", writable=False)
    damaged = IndexStore.open(tmp_path / "i", FP, 32, writable=False, verify=False)
    with pytest.raises(ThumbnailDamaged, match="checksum"):
        damaged.thumbnail("keep")
    damaged.close()
