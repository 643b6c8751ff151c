"""Item id -> row without a Python object per item: what lets one node hold 10M items.

A dict of 10M id strings costs about 150 bytes an item; here a generation's ids are one UTF-8
blob with int64 offsets, and the lookup is a sorted array of their hashes (with the row of
each) searched with np.searchsorted: about 30 bytes an item in all. Hashes are the process's
own `hash()` (never stored, so its per-process seed does not matter); equal hashes are told
apart by comparing the ids themselves, so a collision costs a comparison, never a wrong row.
Ids added since the generation live in a small dict until compaction writes a new one.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from itertools import pairwise
from typing import TypeVar

import numpy as np

HASH_BITS = 64
T = TypeVar("T")


def id_hash(item_id: str, bits: int = HASH_BITS) -> int:
    """The id's hash kept to its low `bits` (fewer bits, more collisions)."""
    return hash(item_id) & ((1 << bits) - 1)


def id_hashes(ids: Iterable[str], count: int, bits: int = HASH_BITS) -> np.ndarray:
    """uint64[count]: id_hash of each id."""
    return np.fromiter((id_hash(i, bits) for i in ids), np.uint64, count)


class IdColumn:
    """A generation's ids in row order: one UTF-8 blob and the offsets of each id in it."""

    def __init__(self, blob: bytes, offsets: np.ndarray):
        self.blob = blob
        self.offsets = offsets  # int64[n + 1]

    @classmethod
    def of(cls, ids: list[str]) -> IdColumn:
        encoded = [i.encode() for i in ids]
        offsets = np.zeros(len(encoded) + 1, np.int64)
        np.cumsum([len(e) for e in encoded], out=offsets[1:])
        return cls(b"".join(encoded), offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, row: int) -> str:
        return self.blob[int(self.offsets[row]) : int(self.offsets[row + 1])].decode()

    def __iter__(self) -> Iterator[str]:
        offsets = self.offsets.tolist()
        for start, end in pairwise(offsets):
            yield self.blob[start:end].decode()


class IdMap(Mapping[str, int]):
    """The live ids and their rows: the generation's (column + sorted hashes, minus deleted
    rows) and those added since (a dict). Iterates in row order, the added ones last.
    `dead` marks the generation's deleted rows (index.items' table reads the same array)."""

    def __init__(self, column: IdColumn, hashes: np.ndarray, bits: int = HASH_BITS):
        if len(hashes) != len(column):
            raise ValueError(f"{len(hashes)} hashes for {len(column)} ids")
        self.column = column
        self.bits = bits
        order = np.argsort(hashes, kind="stable")
        self._keys = hashes[order]
        self._rows = order.astype(np.int32 if len(column) < 2**31 else np.int64)
        self.dead = np.zeros(len(column), bool)
        self._n_dead = 0
        self._added: dict[str, int] = {}

    @classmethod
    def of(cls, ids: list[str], bits: int = HASH_BITS) -> IdMap:
        return cls(IdColumn.of(ids), id_hashes(ids, len(ids), bits), bits)

    def _base_row(self, item_id: str) -> int | None:
        key = np.uint64(id_hash(item_id, self.bits))
        i = int(np.searchsorted(self._keys, key))
        while i < len(self._keys) and self._keys[i] == key:
            row = int(self._rows[i])
            if not self.dead[row] and self.column[row] == item_id:
                return row
            i += 1
        return None

    def get(self, item_id: str, default: T | None = None) -> int | T | None:  # type: ignore[override]
        row = self._added.get(item_id)
        if row is None:
            row = self._base_row(item_id)
        return default if row is None else row

    def __getitem__(self, item_id: str) -> int:
        row = self.get(item_id)
        if row is None:
            raise KeyError(item_id)
        return row

    def __contains__(self, item_id: object) -> bool:
        return isinstance(item_id, str) and self.get(item_id) is not None

    def __len__(self) -> int:
        return len(self.column) - self._n_dead + len(self._added)

    def __iter__(self) -> Iterator[str]:
        for row in np.flatnonzero(~self.dead).tolist():
            yield self.column[row]
        yield from list(self._added)

    def rows(self) -> np.ndarray:
        """int64: every live row, ascending."""
        added = np.fromiter(self._added.values(), np.int64, len(self._added))
        return np.sort(np.concatenate([np.flatnonzero(~self.dead), added]))

    def values(self) -> list[int]:  # type: ignore[override]
        return self.rows().tolist()

    def add(self, item_id: str, row: int) -> None:
        self._added[item_id] = row

    def pop(self, item_id: str, default: T | None = None) -> int | T | None:
        """Forget the id; its row (or `default` when it was not live)."""
        row = self._added.pop(item_id, None)
        if row is not None:
            return row
        row = self._base_row(item_id)
        if row is None:
            return default
        self.dead[row] = True
        self._n_dead += 1
        return row
