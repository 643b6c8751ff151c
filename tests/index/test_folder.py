"""Damaged index folders: refused with a clear message and left untouched, or repaired."""

from __future__ import annotations

import json

import numpy as np
import pytest
from support import matryoshka_vectors

from index.errors import IndexFolderError
from index.store import IndexStore

FP = "f" * 16
CREATE = {"checkpoint": "test.pt", "nesting_list": [8, 16, 32]}


def open_store(path, writable=True, create=True):
    return IndexStore.open(
        path, FP, 32, writable=writable, create=CREATE if writable and create else None
    )


def items(ids):
    return [{"id": i, "label": None, "metadata": None} for i in ids]


def folder_bytes(path):
    return {p.name: p.read_bytes() for p in sorted(path.iterdir())}


def three_adds(path):
    store = open_store(path)
    x = matryoshka_vectors(3, 32, seed=0)
    for i in range(3):
        store.add(items([f"v{i}"]), x[i : i + 1])
    store.close()
    return store.manifest


def test_index_files_without_manifest_are_refused_and_untouched(tmp_path):
    index = tmp_path / "i"
    three_adds(index)
    open_store(index).compact()
    (index / "manifest.json").unlink()
    before = folder_bytes(index)
    with pytest.raises(IndexFolderError, match=r"no manifest\.json.*refusing") as e:
        open_store(index)  # even a writer allowed to create an index
    assert "vectors-1.npy" in str(e.value)
    assert folder_bytes(index) == before


def test_creating_an_index_is_explicit(tmp_path):
    with pytest.raises(IndexFolderError, match="--create-index"):
        open_store(tmp_path / "new", create=False)
    assert not (tmp_path / "new").exists()
    (tmp_path / "new").mkdir()
    (tmp_path / "new" / "README").write_text("not an index file")
    assert len(open_store(tmp_path / "new")) == 0
    assert json.loads((tmp_path / "new" / "manifest.json").read_text())["wal_records"] == 0


def test_manifest_counts_acknowledged_log_records(tmp_path):
    manifest = three_adds(tmp_path / "i")
    on_disk = json.loads((tmp_path / "i" / "manifest.json").read_text())
    assert on_disk["wal_records"] == manifest["wal_records"] == 3
    open_store(tmp_path / "i").compact()
    assert json.loads((tmp_path / "i" / "manifest.json").read_text())["wal_records"] == 0


@pytest.mark.parametrize("writable", [True, False])
def test_deleted_log_with_acknowledged_writes_is_refused(tmp_path, writable):
    manifest = three_adds(tmp_path / "i")
    (tmp_path / "i" / manifest["wal"]).unlink()
    before = folder_bytes(tmp_path / "i")
    with pytest.raises(IndexFolderError, match=r"is missing but manifest\.json counts 3"):
        open_store(tmp_path / "i", writable=writable)
    assert folder_bytes(tmp_path / "i") == before


def test_log_shortened_at_a_record_boundary_is_refused(tmp_path):
    manifest = three_adds(tmp_path / "i")
    wal = tmp_path / "i" / manifest["wal"]
    lines = wal.read_bytes().splitlines(keepends=True)
    wal.write_bytes(b"".join(lines[:2]))
    before = folder_bytes(tmp_path / "i")
    with pytest.raises(IndexFolderError, match=r"holds 2 intact records .* counts 3"):
        open_store(tmp_path / "i")
    assert folder_bytes(tmp_path / "i") == before


def test_complete_last_record_without_newline_is_kept(tmp_path):
    manifest = three_adds(tmp_path / "i")
    wal = tmp_path / "i" / manifest["wal"]
    wal.write_bytes(wal.read_bytes().rstrip(b"\n"))
    assert len(open_store(tmp_path / "i", writable=False)) == 3
    store = open_store(tmp_path / "i")
    assert sorted(store.row_of) == ["v0", "v1", "v2"]
    store.add(items(["v3"]), matryoshka_vectors(1, 32, seed=9))
    store.close()
    assert wal.read_bytes().count(b"\n") == 4
    assert sorted(open_store(tmp_path / "i").row_of) == ["v0", "v1", "v2", "v3"]


def test_stale_generations_removed_by_the_writer_only(tmp_path):
    index = tmp_path / "i"
    three_adds(index)
    store = open_store(index)
    store.compact()
    store.close()
    live = set(folder_bytes(index))
    stale = ["vectors-0.npy", "items-0.jsonl", "wal-0.jsonl", "ann-0.faiss"]
    stale += ["vectors-2.npy", "items-2.jsonl", "columns-2.npz", ".manifest.json.k2j3.tmp"]
    for name in stale:
        (index / name).write_bytes(b"x" * 100)
    kept = ["thumbnails.bin", "notes.txt"]
    for name in kept:
        (index / name).write_bytes(b"keep")
    reader = open_store(index, writable=False)
    assert set(stale) <= set(folder_bytes(index))
    writer = open_store(index)
    present = set(folder_bytes(index))
    assert not present & set(stale) and live | set(kept) <= present
    np.testing.assert_array_equal(sorted(writer.row_of), sorted(reader.row_of))
