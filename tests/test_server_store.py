"""The index folder: write-ahead log replay, torn tails, compaction, checkpoint refusal."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_server_helpers import matryoshka_vectors

from server.errors import Conflict, IndexFolderError, NotFound
from server.index import main as index_main
from server.store import IndexStore
from trainer.errors import UsageError

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
    store.search(x[:2], 3, 8, None, 10)  # builds an index that the next edits must update
    store.add(items([f"b{i}" for i in range(5)]), x[5:])
    store.delete("a2")
    before = snapshot(store)
    # no close(): as after kill -9, only the fsync'ed log remains
    again = open_store(tmp_path / "i")
    after = snapshot(again)
    assert before[0] == after[0] and len(again) == 9
    np.testing.assert_array_equal(before[1], after[1])
    s1, r1 = store.search(x, 3, 16, 32, 6)
    s2, r2 = again.search(x, 3, 16, 32, 6)
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
    store.search(x, 5, 8, None, 5)
    before = snapshot(store)
    scores, rows = store.search(x, 5, 8, 32, 10)
    ids = [[store.item(r)["id"] for r in row] for row in rows]
    store.compact()
    assert sorted(p.name for p in (tmp_path / "i").iterdir()) == [
        "items-1.jsonl",
        "manifest.json",
        "vectors-1.npy",
        "wal-1.jsonl",
    ]
    for s in (store, open_store(tmp_path / "i", writable=False)):
        after = snapshot(s)
        assert before[0] == after[0]
        np.testing.assert_array_equal(before[1], after[1])
        s2, r2 = s.search(x, 5, 8, 32, 10)
        np.testing.assert_allclose(scores, s2, rtol=1e-6)
        assert ids == [[s.item(r)["id"] for r in row] for row in r2]
    store.add(items(["new"]), x[:1])
    assert len(open_store(tmp_path / "i")) == len(before[0]) + 1


def test_refuses_other_checkpoint_width_and_missing_folder(tmp_path):
    open_store(tmp_path / "i").close()
    with pytest.raises(IndexFolderError, match="fingerprint") as e:
        open_store(tmp_path / "i", fingerprint="0" * 16)
    assert "server.index build" in str(e.value)
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
    scores, _ = store.search(x, 5, 8, None, 10)
    assert scores.shape == (2, 0)
    store.add(items(["a"]), x[:1])
    with pytest.raises(Conflict, match="a"):
        store.add(items(["a"]), x[:1])
    with pytest.raises(NotFound, match="zz"):
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
    np.testing.assert_array_equal(store.vectors.rows[np.array([5, 0, 3, 2]), :8], x[[5, 0, 3, 2], :8])
    assert store.vectors.rows.shape == (6, 32)


def test_index_cli_errors(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        index_main(
            [
                "build",
                "--checkpoint",
                str(tmp_path / "no.pt"),
                "--dataset",
                "shapes",
                "--out",
                str(tmp_path / "o"),
            ]
        )
    with pytest.raises(SystemExit) as e:
        index_main(["build", "--dataset", "shapes"])
    assert e.value.code == 2
