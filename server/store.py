"""The index folder and the live, mutable index the server searches.

Folder layout (one generation is current; manifest.json names its files):
  manifest.json        format, checkpoint fingerprint, width, count, generation, file names
  vectors-<g>.npy      raw full-dim float32 embeddings [N, D], the only copy (memory-mapped)
  items-<g>.jsonl      one {"id", "label", "metadata"} per row
  wal-<g>.jsonl        mutations since generation g (server.wal), replayed on open; the
                       manifest counts the records it must hold (server.folder)
  thumbnails.*         item thumbnails by id, across generations (server.thumbnails)
Per-dim FAISS indexes are not stored: exact flat indexes over normalised prefixes are
rebuilt lazily from the vectors, so one copy of the data serves every nesting dim.
Compaction writes generation g+1 and swaps manifest.json atomically (the commit point).
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from server.errors import Conflict, IndexFolderError, NotFound
from server.folder import check_log, publish_manifest, refuse_orphans, remove_stale
from server.thumbnails import Thumbnails
from server.wal import WriteAheadLog, decode_vectors, encode_vectors, read_records
from trainer.nesting import truncate_normalize_np
from trainer.search import funnel_search, search_index

FORMAT = "moco-matryoshka-index/1"
CHUNK = 65536


def write_generation(
    directory: Path,
    generation: int,
    width: int,
    count: int,
    vector_chunks: Iterable[np.ndarray],
    items: Iterable[dict[str, Any]],
    info: dict[str, Any],
) -> None:
    """Write one generation's files, fsync them, then publish it through manifest.json."""
    directory.mkdir(parents=True, exist_ok=True)
    vec_name, items_name = f"vectors-{generation}.npy", f"items-{generation}.jsonl"
    out = np.lib.format.open_memmap(
        directory / vec_name, mode="w+", dtype=np.float32, shape=(count, width)
    )
    row = 0
    for chunk in vector_chunks:
        out[row : row + len(chunk)] = chunk
        row += len(chunk)
    if row != count:
        raise ValueError(f"wrote {row} vectors, expected {count}")
    out.flush()
    del out
    with open(directory / items_name, "w") as f:
        for item in items:
            f.write(json.dumps(item, separators=(",", ":")) + "\n")
        f.flush()
        os.fsync(f.fileno())
    with open(directory / vec_name, "rb+") as f:
        os.fsync(f.fileno())
    with open(directory / f"wal-{generation}.jsonl", "wb") as f:
        os.fsync(f.fileno())
    manifest = {
        **info,
        "format": FORMAT,
        "width": width,
        "count": count,
        "generation": generation,
        "vectors": vec_name,
        "items": items_name,
        "wal": f"wal-{generation}.jsonl",
        "wal_records": 0,
    }
    publish_manifest(directory, manifest)


def read_manifest(directory: Path) -> dict[str, Any]:
    path = directory / "manifest.json"
    if not path.is_file():
        raise IndexFolderError(
            f"{directory} is not an index folder (no manifest.json); build one with "
            "`python -m server.index build --checkpoint C --dataset D --out DIR`, or start "
            "the writer with --create-index to begin an empty index there"
        )
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise IndexFolderError(f"{path} is unreadable ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise IndexFolderError(f"{path} is not a {FORMAT} manifest")
    return manifest


class Rows:
    """Read-only [N, D] view over the memory-mapped base rows plus rows added since.

    trainer.search.rerank gathers `bank[rows, :d]`; this serves that without ever
    concatenating (and so copying) the memory-mapped file.
    """

    def __init__(self, base: np.ndarray, width: int):
        self.base = base
        self.width = width
        self.extra = np.empty((0, width), dtype=np.float32)
        self.n_extra = 0

    @property
    def shape(self) -> tuple[int, int]:
        return (len(self.base) + self.n_extra, self.width)

    ndim = 2

    def __len__(self) -> int:
        return self.shape[0]

    def append(self, x: np.ndarray) -> None:
        need = self.n_extra + len(x)
        if need > len(self.extra):
            grown = np.empty((max(need, 2 * len(self.extra), 1024), self.width), np.float32)
            grown[: self.n_extra] = self.extra[: self.n_extra]
            self.extra = grown
        self.extra[self.n_extra : need] = x
        self.n_extra = need

    def __getitem__(self, key: Any) -> np.ndarray:
        rows, cols = key if isinstance(key, tuple) else (key, slice(None))
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        n0 = len(self.base)
        width = len(range(*cols.indices(self.width)))
        out = np.empty((len(rows), width), dtype=np.float32)
        in_base = rows < n0
        out[in_base] = self.base[rows[in_base], cols]
        out[~in_base] = self.extra[rows[~in_base] - n0, cols]
        return out


class IndexStore:
    """Items (id, label, metadata, full-dim vector), exact search at any dim, durable edits.

    All access goes through one lock: FAISS indexes must not be searched while being
    mutated, and edits are rare next to searches.
    """

    def __init__(self, directory: Path, manifest: dict[str, Any], writable: bool):
        self.directory = directory
        self.manifest = manifest
        self.width = int(manifest["width"])
        self.writable = writable
        self.lock = threading.RLock()
        self.ops_since_compaction = 0
        self._indexes: dict[int, faiss.Index] = {}
        self._load_generation(manifest)
        records, valid = read_records(directory / manifest["wal"])
        check_log(directory / manifest["wal"], len(records), manifest)
        for record in records:
            self._apply(record)
        self.ops_since_compaction = len(records)
        self._wal = WriteAheadLog(directory / manifest["wal"], valid) if writable else None
        self.thumbnails = Thumbnails(directory, writable)

    @classmethod
    def open(
        cls,
        directory: Path,
        fingerprint: str,
        width: int,
        *,
        writable: bool,
        create: dict[str, Any] | None = None,
    ) -> IndexStore:
        """Open (or, writable and given `create` info, start empty) and check the checkpoint.

        The writer then removes generation files no manifest names (left by a kill).
        """
        directory = Path(directory)
        if not (directory / "manifest.json").exists():
            refuse_orphans(directory)
            if writable and create is not None:
                info = {**create, "fingerprint": fingerprint}
                write_generation(directory, 0, width, 0, [], [], info)
        for attempt in range(3):
            try:
                store = cls._open_checked(directory, fingerprint, width, writable)
                break
            except IndexFolderError:
                if attempt == 2 or writable:
                    raise
                time.sleep(0.05)  # a reader may race the writer's compaction: read again
        if writable:
            remove_stale(directory, store.manifest)
        return store

    @classmethod
    def _open_checked(
        cls, directory: Path, fingerprint: str, width: int, writable: bool
    ) -> IndexStore:
        manifest = read_manifest(directory)
        if manifest.get("fingerprint") != fingerprint:
            raise IndexFolderError(
                f"index {directory} was built with checkpoint {manifest.get('checkpoint')} "
                f"(fingerprint {manifest.get('fingerprint')}), not the loaded one "
                f"(fingerprint {fingerprint}); rebuild it with `python -m server.index build`"
            )
        if int(manifest.get("width", -1)) != width:
            raise IndexFolderError(
                f"index {directory} holds {manifest.get('width')}-dim vectors but the "
                f"checkpoint embeds at {width}"
            )
        try:
            return cls(directory, manifest, writable)
        except (OSError, ValueError, KeyError) as e:
            raise IndexFolderError(f"index {directory} cannot be read ({e})") from None

    def _load_generation(self, manifest: dict[str, Any]) -> None:
        base = np.load(self.directory / manifest["vectors"], mmap_mode="r")
        if base.ndim != 2 or base.shape[1] != self.width or base.dtype != np.float32:
            raise ValueError(f"vectors file has shape {base.shape} and dtype {base.dtype}")
        with open(self.directory / manifest["items"]) as f:
            items = [json.loads(line) for line in f]
        if len(items) != len(base):
            raise ValueError(f"{len(items)} items for {len(base)} vectors")
        self.rows = Rows(base, self.width)
        self.items: list[dict[str, Any] | None] = items
        self.row_of = {item["id"]: r for r, item in enumerate(items)}
        self._indexes.clear()

    def __len__(self) -> int:
        return len(self.row_of)

    # mutations -------------------------------------------------------------------------

    def add(
        self,
        items: list[dict[str, Any]],
        vectors: np.ndarray,
        thumbnails: dict[str, bytes] | None = None,
    ) -> None:
        """Durably add items with their raw full-dim vectors (and thumbnails); all or nothing."""
        with self.lock:
            taken = [it["id"] for it in items if it["id"] in self.row_of]
            if taken:
                raise Conflict(f"ids already in the index: {', '.join(taken[:10])}")
            if thumbnails:
                self.thumbnails.add(thumbnails.items())
            record = {"op": "add", "items": items, "vectors": encode_vectors(vectors)}
            self._log(record)
            self._apply_add(items, np.asarray(vectors, np.float32))

    def delete(self, item_id: str) -> None:
        with self.lock:
            if item_id not in self.row_of:
                raise NotFound(f"no item with id {item_id!r} in the index")
            self._log({"op": "delete", "id": item_id})
            self._apply_delete(item_id)

    def _log(self, record: dict[str, Any]) -> None:
        """Append durably, then count it in the manifest: the log may never hold fewer."""
        if self._wal is None:
            raise RuntimeError("this index store was opened read-only")
        self._wal.append(record)
        self.ops_since_compaction += 1
        self.manifest = {**self.manifest, "wal_records": self.ops_since_compaction}
        publish_manifest(self.directory, self.manifest)

    def _apply(self, record: dict[str, Any]) -> None:
        if record["op"] == "add":
            self._apply_add(record["items"], decode_vectors(record["vectors"], self.width))
        elif record["op"] == "delete":
            self._apply_delete(record["id"])

    def _apply_add(self, items: list[dict[str, Any]], vectors: np.ndarray) -> None:
        start = len(self.rows)
        self.rows.append(vectors)
        ids = np.arange(start, start + len(items), dtype=np.int64)
        for r, item in zip(ids.tolist(), items, strict=True):
            self.items.append(item)
            self.row_of[item["id"]] = r
        for dim, index in self._indexes.items():
            index.add_with_ids(truncate_normalize_np(vectors, dim), ids)

    def _apply_delete(self, item_id: str) -> None:
        row = self.row_of.pop(item_id, None)
        if row is None:
            return
        self.items[row] = None
        for index in self._indexes.values():
            index.remove_ids(np.array([row], dtype=np.int64))

    def compact(self) -> None:
        """Fold the log into a new generation (live rows only) and start an empty log."""
        with self.lock:
            if self._wal is None:
                raise RuntimeError("this index store was opened read-only")
            live = np.array(sorted(self.row_of.values()), dtype=np.int64)
            old = self.manifest
            gen = int(old["generation"]) + 1
            info = {k: v for k, v in old.items() if k not in ("vectors", "items", "wal")}
            chunks = (self.rows[live[i : i + CHUNK]] for i in range(0, len(live), CHUNK))
            write_generation(
                self.directory,
                gen,
                self.width,
                len(live),
                chunks,
                (self.items[r] for r in live.tolist()),
                info,
            )
            dims = list(self._indexes)
            self._wal.close()
            self.manifest = read_manifest(self.directory)
            self._load_generation(self.manifest)
            self._wal = WriteAheadLog(self.directory / self.manifest["wal"], 0)
            self.ops_since_compaction = 0
            for name in (old["vectors"], old["items"], old["wal"]):
                (self.directory / name).unlink(missing_ok=True)
            for dim in dims:
                self._index(dim)

    def close(self) -> None:
        if self._wal is not None:
            self._wal.close()
        self.thumbnails.close()

    # search ----------------------------------------------------------------------------

    def _index(self, dim: int) -> faiss.Index:
        """Exact inner-product index over the live rows' normalised `dim`-prefixes."""
        index = self._indexes.get(dim)
        if index is None:
            index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
            live = np.array(sorted(self.row_of.values()), dtype=np.int64)
            for i in range(0, len(live), CHUNK):
                rows = live[i : i + CHUNK]
                index.add_with_ids(truncate_normalize_np(self.rows[rows, :dim], dim), rows)
            self._indexes[dim] = index
        return index

    def search(
        self, queries: np.ndarray, k: int, dim: int, rerank_dim: int | None, shortlist: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Scores and row ids [n, min(k, size)]; adaptive when rerank_dim is given."""
        with self.lock:
            size = len(self)
            k = min(k, size)
            if k == 0:
                empty = np.empty((len(queries), 0))
                return empty.astype(np.float32), empty.astype(np.int64)
            index = self._index(dim)
            if rerank_dim is None or rerank_dim == dim:
                return search_index(index, queries[:, :dim], k)
            shortlist = min(max(shortlist, k), size)
            return funnel_search(
                self.rows,
                queries,
                k,
                dim,
                rerank_dim,
                shortlist,
                index=index,  # type: ignore[arg-type]
            )

    def item(self, row: int) -> dict[str, Any]:
        item = self.items[row]
        assert item is not None
        return item

    def vector(self, item_id: str) -> np.ndarray | None:
        with self.lock:
            row = self.row_of.get(item_id)
            return None if row is None else self.rows[[row]][0]
