"""The columnar items (index.idmap, index.items): ids found by hash with collisions told apart,
items read back by line offset, and the store on top of them keeping its behaviour through
deletes, adds, WAL replay, compaction and filters, with every hash colliding."""

from __future__ import annotations

import functools
import json

import numpy as np
import pytest
from pydantic import TypeAdapter
from support import matryoshka_vectors

from index import items as items_module
from index import store as store_module
from index.filter import BoundedFilter
from index.idmap import IdMap
from index.items import read_items, write_items
from index.payload import PayloadIndex
from index.plan import SearchPlan
from index.store import IndexStore, write_generation

FP = "f" * 16
CREATE = {"checkpoint": "test.pt", "nesting_list": [8, 16, 32]}
parse = TypeAdapter(BoundedFilter).validate_python
IDS = ["a", "b", "ü-ß", "日本-7", "a b", 'q"uote', "x" * 300, *(f"r{i}" for i in range(200))]


def catalogue(ids: list[str]) -> list[dict]:
    return [
        {
            "id": item_id,
            "label": f"cat{n % 4}" if n % 5 else None,
            "metadata": {"price": n % 10, "colour": ["red", "blue"][n % 2]} if n % 7 else None,
        }
        for n, item_id in enumerate(ids)
    ]


@pytest.mark.parametrize("bits", [1, 2, 64])
def test_id_map_finds_every_id_whatever_the_collisions(bits):
    ids = IdMap.of(IDS, bits=bits)
    assert len(ids) == len(IDS)
    assert [ids[i] for i in IDS] == list(range(len(IDS)))
    assert list(ids) == IDS
    assert "nope" not in ids and ids.get("nope") is None and ids.get("nope", -1) == -1
    with pytest.raises(KeyError):
        ids["nope"]
    assert 3 not in ids  # not a string


@pytest.mark.parametrize("bits", [1, 64])
def test_id_map_deletes_and_adds(bits):
    ids = IdMap.of(IDS, bits=bits)
    assert ids.pop("b") == 1 and ids.pop("b") is None and ids.pop("b", -1) == -1
    assert "b" not in ids and ids["a"] == 0 and ids["ü-ß"] == 2
    ids.add("b", len(IDS))  # re-added after its delete: a new row
    ids.add("new", len(IDS) + 1)
    assert ids["b"] == len(IDS) and ids["new"] == len(IDS) + 1
    assert len(ids) == len(IDS) + 1
    assert ids.pop("new") == len(IDS) + 1 and "new" not in ids
    rows = ids.rows()
    assert rows.tolist() == sorted([r for r in range(len(IDS)) if r != 1] + [len(IDS)])
    assert ids.values() == rows.tolist()
    assert list(ids) == [*(i for i in IDS if i != "b"), "b"]  # row order, added ones last


@pytest.mark.parametrize("columns", [False, True], ids=["parsed", "columns-file"])
def test_read_items_gives_lines_ids_and_payload(tmp_path, monkeypatch, columns):
    """From the items file alone (a folder written before columns-<g>.npz) or from the columns
    written with it: the same rows, ids and filters."""
    monkeypatch.setattr(items_module, "CHUNK", 16)  # many chunks
    path = tmp_path / "items-0.jsonl"
    catalogue_items = catalogue(IDS)
    if columns:
        write_items(path, catalogue_items, len(IDS)).save(tmp_path / "columns-0.npz")
    else:
        path.write_text(
            "".join(json.dumps(it, ensure_ascii=False) + "\n" for it in catalogue_items)
        )
    table, ids, payload = read_items(
        path, len(IDS), tmp_path / "columns-0.npz" if columns else None, bits=3
    )
    assert list(table) == catalogue_items
    assert [ids[i] for i in IDS] == list(range(len(IDS)))
    expected = PayloadIndex(catalogue_items)
    node = parse(
        {"and": [{"field": "label", "eq": "cat1"}, {"field": "metadata.price", "range": {"lt": 5}}]}
    )
    np.testing.assert_array_equal(payload.mask(node), expected.mask(node))
    table.delete(4)
    table.append([{"id": "z", "label": None, "metadata": None}])
    assert table[4] is None and table[len(IDS)]["id"] == "z" and len(table) == len(IDS) + 1
    with pytest.raises(IndexError):
        table[len(IDS) + 1]
    for count in (len(IDS) - 1, len(IDS) + 1):
        with pytest.raises(ValueError, match="items"):
            read_items(path, count, tmp_path / "columns-0.npz" if columns else None)
        with pytest.raises(ValueError, match="items"):
            write_items(tmp_path / "other.jsonl", catalogue_items, count)


def open_store(path, writable=True):
    return IndexStore.open(path, FP, 32, writable=writable, create=CREATE if writable else None)


def state(store, queries, node):
    """Everything a client can see: live ids, items, vectors, filtered and plain hits."""
    live = sorted(store.row_of)
    out = {
        "ids": live,
        "items": [store.item(store.row_of[i]) for i in live],
        "vectors": np.stack([store.vector(i) for i in live]).tolist(),
    }
    for name, plan in (("plain", SearchPlan(5, 32)), ("filtered", SearchPlan(5, 32, filter=node))):
        hits = store.search(queries, plan)
        out[name] = [[hits.items[r]["id"] for r in row if r >= 0] for row in hits.rows.tolist()]
    return out


def test_store_on_colliding_hashes_through_edits_replay_and_compaction(tmp_path, monkeypatch):
    monkeypatch.setattr(store_module, "read_items", functools.partial(read_items, bits=2))
    folder = tmp_path / "i"
    x = matryoshka_vectors(len(IDS) + 3, 32, seed=1)
    info = {**CREATE, "fingerprint": FP, "store_dtype": "float32"}
    write_generation(folder, 0, 32, len(IDS), [x[: len(IDS)]], catalogue(IDS), info)
    store = open_store(folder)
    node = parse(
        {
            "or": [
                {"field": "label", "in": ["cat1", "cat3"]},
                {"not": {"field": "metadata.colour", "eq": "red"}},
            ]
        }
    )
    store.delete("ü-ß")
    store.delete("r5")
    added = [
        {"id": "ü-ß", "label": "cat1", "metadata": {"colour": "red", "price": 3}},
        {"id": "fresh", "label": "cat3", "metadata": None},
        {"id": "gone", "label": None, "metadata": {"colour": "blue"}},
    ]
    store.add(added, x[len(IDS) :])
    store.delete("gone")
    assert len(store) == len(IDS)
    assert store.items[2] is None and store.items[len(IDS)]["id"] == "ü-ß"
    assert store.row_of["ü-ß"] == len(IDS) and "gone" not in store.row_of
    queries = matryoshka_vectors(4, 32, seed=2)
    before = state(store, queries, node)
    expected_ids = sorted((set(IDS) - {"r5"}) | {"fresh"})
    assert before["ids"] == expected_ids
    admitted = [
        it
        for it in before["items"]
        if it["label"] in ("cat1", "cat3") or (it["metadata"] or {}).get("colour") != "red"
    ]
    bank = np.stack([store.vector(it["id"]) for it in admitted])
    bank /= np.linalg.norm(bank, axis=1, keepdims=True)
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    best = np.argsort(-(q @ bank.T), axis=1, kind="stable")[:, :5]
    assert before["filtered"] == [[admitted[j]["id"] for j in row] for row in best.tolist()]
    store.close()
    assert state(open_store(folder, writable=False), queries, node) == before  # WAL replay
    store = open_store(folder)
    store.compact()
    assert state(store, queries, node) == before
    assert store.items.base == len(IDS) and not store.items.added
    store.add([{"id": "r5", "label": "cat0", "metadata": None}], x[:1])
    assert store.row_of["r5"] == len(IDS) and store.item(len(IDS))["label"] == "cat0"
    store.close()
    again = open_store(folder, writable=False)
    assert again.row_of["r5"] == len(IDS) and len(again) == len(IDS) + 1


def test_store_sample_draws_live_items(tmp_path):
    folder = tmp_path / "i"
    x = matryoshka_vectors(len(IDS), 32, seed=1)
    info = {**CREATE, "fingerprint": FP, "store_dtype": "float32"}
    write_generation(folder, 0, 32, len(IDS), [x], catalogue(IDS), info)
    store = open_store(folder)
    store.delete("a")
    drawn = store.sample(50)
    assert len(drawn) == 50 and len({it["id"] for it in drawn}) == 50
    assert "a" not in {it["id"] for it in drawn}
    assert len(store.sample(10_000)) == len(IDS) - 1


def test_a_folder_written_before_the_columnar_items_opens(tmp_path):
    """The old writer's items file: ASCII-escaped JSON (json.dumps default), no thumbnail
    key, null label and metadata; every id and item reads back as the old dict store did."""
    folder = tmp_path / "i"
    old = catalogue(IDS)
    x = matryoshka_vectors(len(IDS), 32, seed=1)
    info = {**CREATE, "fingerprint": FP, "store_dtype": "float32"}
    write_generation(folder, 0, 32, len(IDS), [x], old, info)  # then the old items file:
    manifest = json.loads((folder / "manifest.json").read_text())
    (folder / manifest["items"]).write_text("".join(json.dumps(it) + "\n" for it in old))
    (folder / manifest.pop("columns")).unlink()  # the old writer wrote no columns file
    manifest.pop("checksums")  # as before checksums: recorded once by the writer
    (folder / "manifest.json").write_text(json.dumps(manifest))
    store = open_store(folder)
    assert [store.item(store.row_of[i]) for i in IDS] == old
    assert list(store.items) == old
    np.testing.assert_allclose(store.vector("日本-7"), x[3])
