"""Every file a server trusts on start is verified: generation checksums, finite vectors, the
thumbnail log's record count and blob, each thumbnail's checksum; `python -m index.verify`."""

from __future__ import annotations

import json

import numpy as np
import pytest
from support import matryoshka_vectors

from core.cli import UsageError
from index import integrity, thumbnails
from index.errors import IndexFolderError
from index.store import IndexStore, read_manifest
from index.thumbnails import BLOB, LOG
from index.verify import main as verify_main

FP = "f" * 16
CREATE = {"checkpoint": "test.pt", "nesting_list": [8, 16, 32]}


def open_store(path, writable=True, verify=True):
    return IndexStore.open(
        path, FP, 32, writable=writable, create=CREATE if writable else None, verify=verify
    )


@pytest.fixture
def folder(tmp_path):
    """A compacted folder (checksummed generation 1) with thumbnails, then some logged edits."""
    path = tmp_path / "i"
    store = open_store(path)
    x = matryoshka_vectors(6, 32, seed=0)
    ids = [f"r{i}" for i in range(4)]
    items = [{"id": i, "label": n, "metadata": {"class": "rings"}} for n, i in enumerate(ids)]
    store.add(items, x[:4], {i: f"thumb-{i}".encode() for i in ids})
    store.compact()
    store.add([{"id": "late", "label": 9, "metadata": None}], x[4:5], {"late": b"late!"})
    store.close()
    integrity._verified.clear()  # each test opens its folder as a fresh process would
    thumbnails._checked.clear()
    return path


def reopen_refused(path, match):
    integrity._verified.clear()
    thumbnails._checked.clear()
    with pytest.raises(IndexFolderError, match=match):
        open_store(path, writable=False)
    with pytest.raises(UsageError):
        verify_main([str(path)])


def test_a_healthy_folder_opens_and_verifies(folder, capsys):
    manifest = read_manifest(folder)
    files = {manifest["vectors"], manifest["items"], manifest["columns"]}
    assert set(manifest["checksums"]) == files
    assert manifest["thumbnail_records"] == 2
    open_store(folder, writable=False).close()
    assert verify_main([str(folder)]) == 0
    assert "ok (generation 1, 4 rows + 1 logged edits, 5 thumbnails" in capsys.readouterr().out


def test_a_flipped_byte_in_the_items_is_refused(folder):
    items = folder / read_manifest(folder)["items"]
    items.write_bytes(items.read_bytes().replace(b"rings", b"rin=s", 1))
    reopen_refused(folder, "items-1.jsonl fails its checksum")


def test_a_flipped_byte_in_the_item_columns_is_refused(folder):
    columns = folder / read_manifest(folder)["columns"]
    data = bytearray(columns.read_bytes())
    data[len(data) // 2] ^= 0x01
    columns.write_bytes(bytes(data))
    reopen_refused(folder, "columns-1.npz fails its checksum")


def test_a_nan_in_the_vectors_is_refused_even_without_checksums(folder):
    manifest = read_manifest(folder)
    vectors = np.load(folder / manifest["vectors"], mmap_mode="r+")
    vectors[2, 5] = np.nan
    vectors.flush()
    del vectors
    reopen_refused(folder, "fails its checksum")
    (folder / "manifest.json").write_text(json.dumps({**manifest, "checksums": None}))
    reopen_refused(folder, "row 2 holds NaN or inf")
    integrity._verified.clear()
    open_store(folder, writable=False, verify=False).close()  # MOCO_VERIFY_INDEX=false


@pytest.mark.parametrize(
    ("damage", "match"),
    [
        (lambda f: (f / BLOB).unlink(), "deleted or truncated"),
        (lambda f: (f / BLOB).write_bytes(b""), "deleted or truncated"),
        (lambda f: (f / BLOB).write_bytes((f / BLOB).read_bytes()[:10]), "deleted or truncated"),
        (lambda f: (f / LOG).unlink(), "thumbnails.jsonl is missing but manifest.json counts 2"),
        (lambda f: (f / LOG).write_bytes(b""), "holds 0 intact records"),
        (lambda f: (f / LOG).write_bytes(flip_last(f / LOG)), "holds 1 intact records"),
    ],
    ids=["blob-deleted", "blob-emptied", "blob-truncated", "log-deleted", "log-emptied", "flip"],
)
def test_damaged_thumbnail_files_are_refused_never_served(folder, damage, match):
    damage(folder)
    reopen_refused(folder, match)


def test_garbled_thumbnail_bytes_fail_their_checksum(folder, capsys):
    blob = folder / BLOB
    blob.write_bytes(b"X" * blob.stat().st_size)  # same length: only the checksums can tell
    store = open_store(folder, writable=False, verify=False)  # MOCO_VERIFY_INDEX=false
    with pytest.raises(Exception, match="checksum"):
        store.thumbnail("r1")
    store.close()
    with pytest.raises(UsageError):
        verify_main([str(folder)])
    assert "5 thumbnails fail their checksum" in capsys.readouterr().err


def flip_last(path) -> bytes:
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x01
    return bytes(data)


def test_a_float16_store_refuses_vectors_it_cannot_hold(tmp_path):
    """A finite float32 vector beyond float16's range was acknowledged, then compaction wrote
    it as inf and the folder refused to start ("rebuild the index"): refuse it at the add."""
    from index.errors import UnstorableVectors

    path = tmp_path / "i"
    create = {**CREATE, "store_dtype": "float16"}
    store = IndexStore.open(path, FP, 32, writable=True, create=create)
    x = matryoshka_vectors(3, 32, seed=1)
    huge, tiny = x[:1] * np.float32(1e6), x[1:2] * np.float32(1e-12)
    for bad, what in ((huge, "beyond"), (tiny, "to zero")):
        with pytest.raises(UnstorableVectors, match=f"item 'bad'.*float16.*{what}"):
            store.add([{"id": "bad"}], bad)
    store.add([{"id": "ok"}], x[2:] * np.float32(1000))
    with pytest.raises(UnstorableVectors, match="NaN or inf"):
        store.add([{"id": "nan"}], np.full((1, 32), np.nan, np.float32))
    store.compact()
    store.close()
    integrity._verified.clear()
    reopened = open_store(path, writable=False)
    assert len(reopened) == 1
    reopened.close()


def test_a_generation_with_non_finite_vectors_is_never_written(tmp_path):
    """An index build whose model emits NaN fails there, not at every later start."""
    from index.store import write_generation

    x = matryoshka_vectors(3, 32, seed=2)
    x[1, 4] = np.inf
    items = [{"id": f"r{i}"} for i in range(3)]
    with pytest.raises(ValueError, match=r"vectors-0\.npy row 1 holds NaN or inf"):
        write_generation(tmp_path, 0, 32, 3, [x], items, {"fingerprint": FP})
    assert not (tmp_path / "manifest.json").exists()


def test_the_writer_records_checksums_in_a_folder_written_before_them(folder):
    """An older folder (no checksums, no thumbnail count) opens; the writer records both once,
    so from then on a changed file or a deleted thumbnail log is refused, not served."""
    manifest = read_manifest(folder)
    old = {k: v for k, v in manifest.items() if k not in ("checksums", "thumbnail_records")}
    (folder / "manifest.json").write_text(json.dumps(old))
    open_store(folder, writable=False).close()  # read replicas open it as it is
    assert "checksums" not in read_manifest(folder)
    open_store(folder).close()
    upgraded = read_manifest(folder)
    assert upgraded["checksums"] == manifest["checksums"]
    assert upgraded["thumbnail_records"] == manifest["thumbnail_records"]
    (folder / LOG).unlink()
    reopen_refused(folder, "thumbnails.jsonl is missing but manifest.json counts 2")


def without_checksums(folder) -> dict:
    """The manifest of a folder written before checksums (only the loaders can tell)."""
    manifest = read_manifest(folder)
    manifest.pop("checksums")
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return manifest


def cut(path, keep: int) -> None:
    path.write_bytes(path.read_bytes()[:keep])


def edit_manifest(folder, **changes) -> None:
    manifest = {**read_manifest(folder), **changes}
    (folder / "manifest.json").write_text(json.dumps({k: v for k, v in manifest.items() if v}))


@pytest.mark.parametrize(
    ("damage", "match"),
    [
        (lambda f, m: cut(f / m["vectors"], 200), "cannot be read"),
        (lambda f, m: (f / m["vectors"]).unlink(), "cannot be read"),
        (lambda f, m: (f / m["items"]).unlink(), "cannot be read"),
        (lambda f, m: (f / m["items"]).write_text("{not json\n" * 4), "cannot be read"),
        (lambda f, m: cut(f / m["items"], 30), "cannot be read"),
        (lambda f, m: (f / m["columns"]).unlink(), "cannot be read"),
        (lambda f, m: cut(f / m["columns"], 100), "cannot be read"),
        (lambda f, m: (f / m["columns"]).write_bytes(b"PK\x03\x04" * 50), "cannot be read"),
        (lambda f, m: edit_manifest(f, vectors=None), "cannot be read.*vectors"),
        (lambda f, m: edit_manifest(f, wal_records="x"), "cannot be read"),
        (lambda f, m: edit_manifest(f, thumbnail_records="2"), "cannot be read"),
    ],
    ids=[
        "vectors-cut",
        "vectors-deleted",
        "items-deleted",
        "items-garbled",
        "items-cut",
        "columns-deleted",
        "columns-cut",
        "columns-garbled",
        "no-vectors-key",
        "count-not-a-number",
        "thumbnail-count-a-string",
    ],
)
def test_an_older_folders_damaged_files_are_one_line_refusals_also_offline(folder, damage, match):
    """Without checksums the loaders are the check: a traceback at start, and index.verify
    said `ok` for a folder the server refuses (it never loaded the items)."""
    damage(folder, without_checksums(folder))
    reopen_refused(folder, match)


def test_garbled_thumbnail_bytes_are_refused_at_start(folder):
    """Same length, garbled in place: only the per-thumbnail checksums can tell. The server
    started and answered 500 per thumbnail; now it refuses to start, naming the fix."""
    blob = folder / BLOB
    data = bytearray(blob.read_bytes())
    data[2] ^= 0xFF  # inside r0's thumbnail
    blob.write_bytes(bytes(data))
    reopen_refused(folder, "thumbnails.bin: 1 thumbnails fail their checksum.*'r0'.*VERIFY")


def test_thumbnails_are_checked_once_per_process_then_only_new_ones(folder, monkeypatch):
    """A read replica reopens the folder after every edit: it reads only thumbnails added
    since, not the whole blob again."""
    open_store(folder, writable=False).close()
    reads = []
    pread = thumbnails.os.pread
    monkeypatch.setattr(
        thumbnails.os, "pread", lambda fd, n, at: reads.append(at) or pread(fd, n, at)
    )
    open_store(folder, writable=False).close()
    assert reads == []
    writer = open_store(folder)
    x = matryoshka_vectors(1, 32, seed=7)
    writer.add([{"id": "new", "label": 0, "metadata": None}], x, {"new": b"new thumb"})
    writer.close()
    reads.clear()
    open_store(folder, writable=False).close()
    assert len(reads) == 1
