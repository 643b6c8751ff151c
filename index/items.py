"""The items of an index, row -> {"id", "label", "metadata"}, without a Python dict per item.

A generation's items stay in its items-<g>.jsonl: opening it streams the file once, keeping
each line's byte offset (8 bytes a row), the ids (index.idmap) and the payload columns
(index.payload) the filters need, and parses no line twice; an item is read back with pread
of its line when a hit is returned. Items added since the generation live in RAM (a list)
until compaction writes a new file. Deleted rows read as None, as they did in a list.
"""

from __future__ import annotations

import json
import os
import weakref
from collections.abc import Iterator
from itertools import islice
from pathlib import Path
from typing import Any

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


def read_items(
    path: Path, count: int, payload: PayloadIndex, bits: int = HASH_BITS
) -> tuple[ItemTable, IdMap]:
    """Stream a generation's items file once: its rows, its ids, and `payload` filled.

    Memory: the offsets, ids and columns it keeps, plus one chunk of parsed lines at a time.
    """
    line_offsets = np.empty(count + 1, np.int64)
    id_offsets = np.empty(count + 1, np.int64)
    hashes = np.empty(count, np.uint64)
    line_offsets[0] = id_offsets[0] = 0
    blobs: list[bytes] = []
    row = 0
    with open(path, "rb") as f:
        while True:
            lines = list(islice(f, CHUNK))
            if not lines:
                break
            if row + len(lines) > count:
                raise ValueError(f"{path.name} holds more than the {count} items announced")
            items = [json.loads(line) for line in lines]
            ids = [item["id"] for item in items]
            encoded = [i.encode() for i in ids]
            end = row + len(lines)
            line_offsets[row + 1 : end + 1] = line_offsets[row] + np.cumsum([len(x) for x in lines])
            id_offsets[row + 1 : end + 1] = id_offsets[row] + np.cumsum([len(e) for e in encoded])
            hashes[row:end] = id_hashes(ids, len(ids), bits)
            blobs.append(b"".join(encoded))
            payload.add(items)
            row = end
    if row != count:
        raise ValueError(f"{row} items for {count} vectors")
    ids = IdMap(IdColumn(b"".join(blobs), id_offsets), hashes, bits)
    return ItemTable(path, line_offsets, ids.dead), ids
