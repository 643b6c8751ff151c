"""The index folder and the live, mutable index the server searches.

Folder layout (one generation is current; manifest.json names its files):
  manifest.json        format, checkpoint fingerprint, width, count, generation, file names
  vectors-<g>.npy      raw full-dim embeddings [N, D] (float32 or float16), the only copy
                       (read with pread, index.rowfile; index.vectors searches it at any dim)
  ann-<g>.faiss        optional ANN index over the normalised shortlist-dim prefix
                       (manifest "ann": factory, dim, train_size; index.ann)
  items-<g>.jsonl      one {"id", "label", "metadata"} per row; an item is read by pread of its line
  columns-<g>.npz      the items' line offsets, ids and payload columns (index.items), written
                       with them: what opening reads instead of parsing every line
  wal-<g>.jsonl        mutations since generation g (index.wal), replayed on open; the
                       manifest counts the records it must hold (index.folder)
  thumbnails.*         item thumbnails across generations: an added item carries its own
                       reference, a built one is found by id (index.thumbnails)
  dims.json            optional: per-dim quality (the checkpoint's eval) and build-time latency
Compaction writes generation g+1 (rebuilding the ANN over the live rows) and swaps
manifest.json atomically (the commit point).
"""

from __future__ import annotations

import io
import json
import logging
import os
import random
import threading
import time
import zlib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from index import calibration
from index.ann import AnnIndex, build_ann
from index.calibration import load as load_calibration
from index.errors import DuplicateIds, IndexFolderError, ItemNotFound, ThumbnailDamaged
from index.folder import check_log, publish_manifest, readable, refuse_orphans, remove_stale
from index.integrity import (
    check_storable,
    checksums,
    generation_files,
    nonfinite_rows,
    verify_once,
)
from index.items import read_items, write_items
from index.plan import SearchPlan
from index.planner import Route
from index.rowfile import RowFile
from index.thumbnails import Thumbnails
from index.vectors import Rows, VectorOptions, Vectors
from index.wal import WriteAheadLog, decode_vectors, encode_vectors, read_records

FORMAT = "moco-matryoshka-index/1"
CHUNK = 65536
STORE_DTYPES = ("float32", "float16")
PAGE = 4096
log = logging.getLogger("index.store")


class Hits(NamedTuple):
    """A search's answer: scores and row ids [n, k] (best first), the items of those rows, and
    the route it took (index.planner)."""

    scores: np.ndarray
    rows: np.ndarray
    items: dict[int, dict[str, Any]]
    route: Route = Route("exact")


def write_generation(
    directory: Path,
    generation: int,
    width: int,
    count: int,
    vector_chunks: Iterable[np.ndarray],
    items: Iterable[dict[str, Any]],
    info: dict[str, Any],
    trained_ann: AnnIndex | None = None,
) -> None:
    """Write one generation's files, fsync them, then publish it through manifest.json.

    `info["store_dtype"]` (default float32) is the vectors file's dtype; `info["ann"]`
    ({"factory", "dim", "train_size"}), when set, builds that ANN over the written rows:
    read back from the file, or, given `trained_ann` (an empty index of that factory and dim,
    trained on a sample), filled chunk by chunk as the rows are written (one pass over the
    rows: what a build too big for the page cache needs).
    """
    directory.mkdir(parents=True, exist_ok=True)
    vec_name, items_name = f"vectors-{generation}.npy", f"items-{generation}.jsonl"
    columns_name = f"columns-{generation}.npz"
    dtype = info.get("store_dtype", "float32")
    if dtype not in STORE_DTYPES:
        raise ValueError(f"store dtype {dtype!r} is not one of {', '.join(STORE_DTYPES)}")
    ann = info.get("ann")
    streamed = trained_ann is not None and ann is not None
    if streamed:
        assert trained_ann is not None and trained_ann.ntotal == 0
        if (trained_ann.factory, trained_ann.dim) != (ann["factory"], int(ann["dim"])):
            raise ValueError(f"the trained ANN is not the {ann['factory']} @ {ann['dim']} asked")
    try:
        vectors_crc = write_vectors(
            directory / vec_name,
            dtype,
            count,
            width,
            vector_chunks,
            on_block=(lambda b: trained_ann.add(b[:, : trained_ann.dim].astype(np.float32)))
            if streamed
            else None,
        )
    except ValueError:
        (directory / vec_name).unlink(missing_ok=True)  # never left for a later start
        raise
    write_items(directory / items_name, items, count).save(directory / columns_name)
    with open(directory / vec_name, "rb+") as f:
        os.fsync(f.fileno())
    with open(directory / f"wal-{generation}.jsonl", "wb") as f:
        os.fsync(f.fileno())
    if ann is not None:
        ann = {**ann, "file": f"ann-{generation}.faiss"}
        if streamed:
            index = trained_ann
        else:
            rows = Rows(RowFile(directory / vec_name), width)  # pread: nothing stays mapped
            index = build_ann(ann["factory"], int(ann["dim"]), rows, train_size=ann["train_size"])
        index.save(directory / ann["file"])
    manifest = {
        **info,
        "store_dtype": dtype,
        "ann": ann,
        "format": FORMAT,
        "width": width,
        "count": count,
        "generation": generation,
        "vectors": vec_name,
        "items": items_name,
        "columns": columns_name,
        "wal": f"wal-{generation}.jsonl",
        "wal_records": 0,
    }
    manifest["checksums"] = checksums(directory, manifest, known={vec_name: vectors_crc})
    publish_manifest(directory, manifest)


def write_vectors(
    path: Path,
    dtype: str,
    count: int,
    width: int,
    chunks: Iterable[np.ndarray],
    on_block: Callable[[np.ndarray], None] | None = None,
) -> str:
    """The [count, width] vectors file, written chunk by chunk with plain writes (a memory map
    would keep every written page in the builder's resident set: memory growing with the item
    count), refusing NaN/inf (also from a float16 overflow): a generation holding one would
    be refused at every start, so it is never written. Each block goes, as stored,
    to `on_block`; returns the file's checksum, computed as it is written (index.integrity),
    so a file larger than the page cache is not read back for it."""
    header = {
        "descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
        "fortran_order": False,
        "shape": (count, width),
    }
    row = 0
    with open(path, "wb") as f:
        head = page_aligned_header(header)
        f.write(head)
        crc = zlib.crc32(head)
        for chunk in chunks:
            with np.errstate(over="ignore"):
                block = np.ascontiguousarray(chunk, dtype=dtype).reshape(-1, width)
            bad = nonfinite_rows(block)
            if len(bad):
                raise ValueError(
                    f"{path.name} row {row + int(bad[0])} holds NaN or inf (as {dtype}): no "
                    "search could find it; refusing to write the generation"
                )
            if row + len(block) > count:
                raise ValueError(f"more than the {count} vectors announced")
            data = block.tobytes()
            f.write(data)
            crc = zlib.crc32(data, crc)
            row += len(block)
            if on_block is not None:
                on_block(block)
    if row != count:
        raise ValueError(f"wrote {row} vectors, expected {count}")
    return f"crc32:{crc:08x}"


def page_aligned_header(header: dict[str, Any]) -> bytes:
    """A .npy 1.0 header padded with spaces to 4 KiB (numpy and index.rowfile read it as any
    other), so a row of 4 KiB (2048 float16) sits in one page: a rerank read from disk then
    costs one page per row, not two."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, header)
    head = buf.getvalue()
    pad = -len(head) % PAGE
    length = int.from_bytes(head[8:10], "little") + pad
    return head[:8] + length.to_bytes(2, "little") + head[10:-1] + b" " * pad + b"\n"


def read_manifest(directory: Path) -> dict[str, Any]:
    path = directory / "manifest.json"
    if not path.is_file():
        raise IndexFolderError(
            f"{directory} is not an index folder (no manifest.json); build one with "
            "`python -m trainer.build_index --checkpoint C --dataset D --out DIR`, or start "
            "the writer with --create-index to begin an empty index there"
        )
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise IndexFolderError(f"{path} is unreadable ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise IndexFolderError(f"{path} is not a {FORMAT} manifest")
    return manifest


class IndexStore:
    """Items (id, label, metadata, full-dim vector), exact search at any dim, durable edits.

    All access goes through one lock: FAISS indexes must not be searched while being
    mutated, and edits are rare next to searches.
    """

    def __init__(
        self,
        directory: Path,
        manifest: dict[str, Any],
        writable: bool,
        options: VectorOptions | None = None,
    ):
        self.directory = directory
        self.manifest = manifest
        self.width = int(manifest["width"])
        self.writable = writable
        self.options = options or VectorOptions()
        self.lock = threading.RLock()
        self.ops_since_compaction = 0
        self._load_generation(manifest)
        records, valid = read_records(directory / manifest["wal"])
        check_log(directory / manifest["wal"], len(records), manifest)
        for record in records:
            self._apply(record)
        self.ops_since_compaction = len(records)
        self._wal = WriteAheadLog(directory / manifest["wal"], valid) if writable else None
        self.thumbnails = Thumbnails(directory, writable, manifest.get("thumbnail_records"))

    @classmethod
    def open(
        cls,
        directory: Path,
        fingerprint: str,
        width: int,
        *,
        writable: bool,
        create: dict[str, Any] | None = None,
        options: VectorOptions | None = None,
        verify: bool = True,
    ) -> IndexStore:
        """Open (or, writable and given `create` info, start empty) and check the checkpoint
        and, with `verify`, every generation file's checksum (index.integrity).

        The writer then removes generation files no manifest names (left by a kill).
        """
        directory = Path(directory)
        if not (directory / "manifest.json").exists():
            refuse_orphans(directory)
            if writable and create is not None:
                info = {**create, "fingerprint": fingerprint, "thumbnail_records": 0}
                write_generation(directory, 0, width, 0, [], [], info)
        for attempt in range(3):
            try:
                store = cls._open_checked(directory, fingerprint, width, writable, options, verify)
                break
            except IndexFolderError:
                if attempt == 2 or writable:
                    raise
                time.sleep(0.05)  # a reader may race the writer's compaction: read again
        if writable:
            remove_stale(directory, store.manifest)
            store.record_missing_checks()
        return store

    @classmethod
    def _open_checked(
        cls,
        directory: Path,
        fingerprint: str,
        width: int,
        writable: bool,
        options: VectorOptions | None = None,
        verify: bool = True,
    ) -> IndexStore:
        manifest = read_manifest(directory)
        if manifest.get("fingerprint") != fingerprint:
            raise IndexFolderError(
                f"index {directory} was built with checkpoint {manifest.get('checkpoint')} "
                f"(fingerprint {manifest.get('fingerprint')}), not the loaded one "
                f"(fingerprint {fingerprint}); rebuild it with"
                " `python -m trainer.build_index --force ...`"
            )
        if int(manifest.get("width", -1)) != width:
            raise IndexFolderError(
                f"index {directory} holds {manifest.get('width')}-dim vectors but the "
                f"checkpoint embeds at {width}"
            )
        with readable(directory):
            if verify:
                verify_once(directory, manifest)
            store = cls(directory, manifest, writable, options)
        if verify:
            try:
                store.thumbnails.check_once()
            except IndexFolderError:
                store.close()
                raise
        return store

    def _load_generation(self, manifest: dict[str, Any]) -> None:
        base = RowFile(self.directory / manifest["vectors"])
        if base.shape[1] != self.width or base.dtype.name not in STORE_DTYPES:
            raise ValueError(f"vectors file has shape {base.shape} and dtype {base.dtype}")
        columns = manifest.get("columns")  # absent in folders written before it
        items, row_of, payload = read_items(
            self.directory / manifest["items"],
            len(base),
            self.directory / columns if columns else None,
        )
        ann = None
        spec = manifest.get("ann")
        if spec is not None:
            ann = AnnIndex.load(self.directory / spec["file"], int(spec["dim"]), spec["factory"])
            if self.options.gpu:
                ann.to_gpu()
        self.vectors = Vectors(
            base,
            self.width,
            ann,
            flat_cache_bytes=self.options.flat_cache_bytes,
            ann_min_rows=self.options.ann_min_rows,
        )
        self.items = items
        self.row_of = row_of
        self.payload = payload
        self.calibration = load_calibration(self.directory, manifest)

    def __len__(self) -> int:
        return len(self.row_of)

    def record_missing_checks(self) -> None:
        """A folder written before checksums gets them once, from its files as they are now
        (opened and checked): from then on a changed generation file or a shortened
        thumbnail log is refused at start instead of served."""
        missing: dict[str, Any] = {}
        if not self.manifest.get("checksums"):
            missing["checksums"] = checksums(self.directory, self.manifest)
        if "thumbnail_records" not in self.manifest:
            missing["thumbnail_records"] = self.thumbnails.records
        if missing:
            log.warning("recording %s in %s/manifest.json", " and ".join(missing), self.directory)
            self.manifest = {**self.manifest, **missing}
            publish_manifest(self.directory, self.manifest)

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
                raise DuplicateIds(f"ids already in the index: {', '.join(taken[:10])}")
            smallest = int((self.manifest.get("nesting_list") or [self.width])[0])
            dtype = self.manifest.get("store_dtype", "float32")
            check_storable([it["id"] for it in items], vectors, dtype, smallest)
            refs = self.thumbnails.add(thumbnails.items()) if thumbnails else {}
            items = [{**it, "thumbnail": refs.get(it["id"])} for it in items]
            record = {"op": "add", "items": items, "vectors": encode_vectors(vectors)}
            self._log(record)
            self._apply_add(items, np.asarray(vectors, np.float32))

    def thumbnail(self, item_id: str) -> tuple[bytes, str] | None:
        """(bytes, ETag) of a live item's own thumbnail, None when it has none; stored bytes
        that fail their checksum are refused, never served."""
        with self.lock:
            row = self.row_of.get(item_id)
            if row is None:
                raise ItemNotFound(f"no item with id {item_id!r} in the index")
            item = self.item(row)
            ref = item["thumbnail"] if "thumbnail" in item else self.thumbnails.by_id(item_id)
            if ref is None:
                return None
            data = self.thumbnails.read(ref)
        if data is None:
            raise ThumbnailDamaged(
                f"the thumbnail of item {item_id!r} in {self.directory} is missing or damaged "
                "(its bytes in thumbnails.bin fail their checksum); rebuild the index to restore it"
            )
        return data, self.thumbnails.etag(ref)

    def delete(self, item_id: str) -> None:
        with self.lock:
            if item_id not in self.row_of:
                raise ItemNotFound(f"no item with id {item_id!r} in the index")
            self._log({"op": "delete", "id": item_id})
            self._apply_delete(item_id)

    def _log(self, record: dict[str, Any]) -> None:
        """Append durably, then count it in the manifest: the log may never hold fewer."""
        if self._wal is None:
            raise RuntimeError("this index store was opened read-only")
        self._wal.append(record)
        self.ops_since_compaction += 1
        self.manifest = {
            **self.manifest,
            "wal_records": self.ops_since_compaction,
            "thumbnail_records": self.thumbnails.records,
        }
        publish_manifest(self.directory, self.manifest)

    def _apply(self, record: dict[str, Any]) -> None:
        if record["op"] == "add":
            self._apply_add(record["items"], decode_vectors(record["vectors"], self.width))
        elif record["op"] == "delete":
            self._apply_delete(record["id"])

    def _apply_add(self, items: list[dict[str, Any]], vectors: np.ndarray) -> None:
        ids = self.vectors.add(vectors)
        self.items.append(items)
        for r, item in zip(ids.tolist(), items, strict=True):
            self.row_of.add(item["id"], r)
        self.payload.add(items)

    def _apply_delete(self, item_id: str) -> None:
        row = self.row_of.pop(item_id, None)
        if row is None:
            return
        self.items.delete(row)
        self.vectors.delete(row)

    def compact(self) -> None:
        """Fold the log into a new generation (live rows only) and start an empty log."""
        with self.lock:
            if self._wal is None:
                raise RuntimeError("this index store was opened read-only")
            live = self.row_of.rows()
            old = self.manifest
            gen = int(old["generation"]) + 1
            info = {
                k: v
                for k, v in old.items()
                if k not in ("vectors", "items", "columns", "wal", "calibration")
            }
            rows = self.vectors.rows
            chunks = (rows[live[i : i + CHUNK]] for i in range(0, len(live), CHUNK))
            write_generation(
                self.directory,
                gen,
                self.width,
                len(live),
                chunks,
                (self.items[r] for r in live.tolist()),
                info,
            )
            dims = list(self.vectors._flat)
            self._wal.close()
            self.manifest = read_manifest(self.directory)
            self._load_generation(self.manifest)
            self._wal = WriteAheadLog(self.directory / self.manifest["wal"], 0)
            self.ops_since_compaction = 0
            old_table = [old["calibration"]] if old.get("calibration") else []
            for name in (*generation_files(old), old["wal"], *old_table):
                (self.directory / name).unlink(missing_ok=True)
            for dim in dims:
                self.vectors.warm(dim)
            self.recalibrate()

    def recalibrate(self) -> None:
        """Measure and save the recall table of the current generation (index.calibration)."""
        with self.lock:
            sample = calibration.load_sample(self.directory, self.manifest, self.width)
            table = calibration.calibrate(self, sample=sample)
            calibration.save(self, table)
            self.calibration = table

    def close(self) -> None:
        if self._wal is not None:
            self._wal.close()
        self.thumbnails.close()

    # search ----------------------------------------------------------------------------

    def warm(self, dims: Iterable[int]) -> None:
        with self.lock:
            for dim in dims:
                self.vectors.warm(dim)

    def search(self, queries: np.ndarray, plan: SearchPlan) -> Hits:
        """Top-k rows and their items, read under one hold of the lock. At most plan.k per
        query (fewer when the index is smaller); a place an ANN shortlist could not fill holds
        row id -1."""
        with self.lock:
            plan = plan.at_most(len(self))
            if plan.k == 0:
                empty = np.empty((len(queries), 0))
                return Hits(empty.astype(np.float32), empty.astype(np.int64), {})
            allowed = None
            if plan.filter is not None:
                allowed = self.payload.mask(plan.filter, len(self.vectors.rows))
            scores, rows, route = self.vectors.search(queries, plan, allowed)
            items = {r: self.item(r) for r in np.unique(rows).tolist() if r >= 0}
            return Hits(scores, rows, items, route)

    @property
    def ann(self) -> AnnIndex | None:
        return self.vectors.ann

    def item(self, row: int) -> dict[str, Any]:
        item = self.items[row]
        assert item is not None
        return item

    def sample(self, n: int) -> list[dict[str, Any]]:
        """Up to n live items drawn at random (without listing every id)."""
        with self.lock:
            rows = self.row_of.rows()
            picks = random.sample(range(len(rows)), min(n, len(rows)))
            return [self.item(int(rows[i])) for i in picks]

    def vector(self, item_id: str) -> np.ndarray | None:
        with self.lock:
            row = self.row_of.get(item_id)
            return None if row is None else self.vectors.rows[[row]][0]
