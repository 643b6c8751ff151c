"""The items of an index, row -> {"id", "label", "metadata"}, without a Python dict per item.

A generation's items stay in its items-<g>.jsonl; beside it, columns-<g>.npz holds each line's
byte offset (8 bytes a row), the ids (index.idmap) and the payload columns (index.payload) the
filters need, written as the items are, so opening reads arrays and parses no line; an item is
read back with pread of its line when a hit is returned. Items added since the generation live
in RAM (a list) until compaction writes a new file. Deleted rows read as None, as they did in a
list.
"""

from __future__ import annotations

import json
import os
import weakref
import zipfile
from collections.abc import Iterable, Iterator
from itertools import islice
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from index.idmap import HASH_BITS, IdColumn, IdMap, id_hashes
from index.payload import PayloadIndex

CHUNK = 65536


class ItemTable:
    """Rows 0..n-1: the generation's lines (read with pread) then the rows added since."""

    def __init__(self, path: Path, line_offsets: np.ndarray, dead: np.ndarray):
        self.path = Path(path)
        self.line_offsets = line_offsets  # int64[n + 1]: line r is bytes [o[r], o[r + 1])
        self.base = len(line_offsets) - 1
        self.added: list[dict[str, Any] | None] = []
        self.dead = dead  # bool[n], shared with the ids' IdMap: one mark per deleted row
        self._fd = os.open(path, os.O_RDONLY)
        weakref.finalize(self, os.close, self._fd)

    def __len__(self) -> int:
        return self.base + len(self.added)

    def __getitem__(self, row: int) -> dict[str, Any] | None:
        if row < 0 or row >= len(self):
            raise IndexError(f"row {row} is not in 0..{len(self) - 1}")
        if row >= self.base:
            return self.added[row - self.base]
        if self.dead[row]:
            return None
        start, end = int(self.line_offsets[row]), int(self.line_offsets[row + 1])
        line = os.pread(self._fd, end - start, start)
        if len(line) != end - start:
            raise OSError(f"{self.path}: short read of row {row}")
        return json.loads(line)

    def __iter__(self) -> Iterator[dict[str, Any] | None]:
        for row in range(len(self)):
            yield self[row]

    def append(self, items: list[dict[str, Any]]) -> None:
        self.added.extend(items)

    def delete(self, row: int) -> None:
        if row >= self.base:
            self.added[row - self.base] = None
        else:
            self.dead[row] = True


class ColumnsBuilder:
    """A generation's line offsets, ids and payload, filled a chunk of lines at a time: as the
    items file is written (write_items) or, for a folder without columns, read (read_items)."""

    def __init__(self, count: int):
        self.count = count
        self.line_offsets = np.zeros(count + 1, np.int64)
        self.id_offsets = np.zeros(count + 1, np.int64)
        self.blobs: list[bytes] = []
        self.payload = PayloadIndex()
        self.row = 0

    def add(self, lines: list[bytes], items: list[dict[str, Any]]) -> None:
        end = self.row + len(lines)
        if end > self.count:
            raise ValueError(f"more than the {self.count} items announced")
        encoded = [item["id"].encode() for item in items]
        start = self.row
        self.line_offsets[start + 1 : end + 1] = self.line_offsets[start] + np.cumsum(
            [len(x) for x in lines]
        )
        self.id_offsets[start + 1 : end + 1] = self.id_offsets[start] + np.cumsum(
            [len(e) for e in encoded]
        )
        self.blobs.append(b"".join(encoded))
        self.payload.add(items)
        self.row = end

    def finish(self) -> ItemColumns:
        if self.row != self.count:
            raise ValueError(f"{self.row} items for {self.count} vectors")
        ids = IdColumn(b"".join(self.blobs), self.id_offsets)
        return ItemColumns(self.line_offsets, ids, self.payload)


class ItemColumns(NamedTuple):
    """What opening a generation needs of its items, kept beside them in columns-<g>.npz so a
    start reads a few arrays instead of parsing every line (5.2 s instead of 67 s at 10M items)."""

    line_offsets: np.ndarray
    ids: IdColumn
    payload: PayloadIndex

    def save(self, path: Path) -> None:
        arrays = {
            "line_offsets": self.line_offsets,
            "id_blob": np.frombuffer(self.ids.blob, np.uint8),
            "id_offsets": self.ids.offsets,
            **self.payload.arrays(),
        }
        with open(path, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())

    @classmethod
    def load(cls, path: Path, count: int) -> ItemColumns:
        try:
            with np.load(path, allow_pickle=False) as npz:
                arrays = {name: npz[name] for name in npz.files}
        except zipfile.BadZipFile as e:
            raise ValueError(f"{path.name} is damaged ({e})") from None
        line_offsets = arrays.pop("line_offsets")
        ids = IdColumn(arrays.pop("id_blob").tobytes(), arrays.pop("id_offsets"))
        if len(line_offsets) != count + 1 or len(ids) != count:
            raise ValueError(f"{path.name} holds {len(ids)} items for {count} vectors")
        return cls(line_offsets, ids, PayloadIndex.from_arrays(arrays, count))


def write_items(path: Path, items: Iterable[dict[str, Any]], count: int) -> ItemColumns:
    """Write (and fsync) a generation's items file, one JSON line per item, and return its
    columns, built from the items as they are written (no line parsed back)."""
    columns = ColumnsBuilder(count)
    items = iter(items)
    with open(path, "wb") as f:
        while chunk := list(islice(items, CHUNK)):
            lines = [json.dumps(it, separators=(",", ":")).encode() + b"\n" for it in chunk]
            f.write(b"".join(lines))
            columns.add(lines, chunk)
        f.flush()
        os.fsync(f.fileno())
    return columns.finish()


def read_items(
    path: Path, count: int, columns: Path | None = None, bits: int = HASH_BITS
) -> tuple[ItemTable, IdMap, PayloadIndex]:
    """A generation's rows, ids and payload: from its `columns` file, or, for a folder written
    before them, by streaming the items file once (memory: what it keeps, plus one chunk of
    parsed lines)."""
    if columns is not None:
        cols = ItemColumns.load(columns, count)
        if int(cols.line_offsets[-1]) != path.stat().st_size:
            raise ValueError(f"{columns.name} does not describe {path.name} (its size differs)")
    else:
        builder = ColumnsBuilder(count)
        with open(path, "rb") as f:
            while lines := list(islice(f, CHUNK)):
                builder.add(lines, [json.loads(line) for line in lines])
        cols = builder.finish()
    ids = IdMap(cols.ids, id_hashes(cols.ids, count, bits), bits)
    return ItemTable(path, cols.line_offsets, ids.dead), ids, cols.payload
