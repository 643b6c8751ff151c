"""The payload index: per field (the label, each top-level metadata key) one column over the rows,
so a filter becomes a row bitmap in a few vectorised compares instead of a walk over the items.

A column holds an int32 code per row (-1: the row has no scalar value there) for equality and
set membership, and, once the field has held a number, a float64 per row (NaN: no number) for
ranges. Codes come from one dictionary of (kind, value) keys, so "1", 1 and true stay apart
while 1 and 1.0 meet. Rows are the store's row ids: a generation's columns are written with its
items (index.items, columns-<g>.npz) and read back when it is opened (built from items-<g>.jsonl
for a folder written before them), appended to by every add (WAL replay included) and rebuilt
with compaction; deleted rows stay in it and are masked out by the store's tombstones.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import numpy as np

from index.filter import And, Condition, Filter, Not

MISSING = -1


def value_key(value: Any) -> tuple[str, Any] | None:
    """The dictionary key of a scalar (None for arrays, objects and null)."""
    if isinstance(value, bool):
        return ("b", value)
    if isinstance(value, int | float):
        return ("n", float(value))
    if isinstance(value, str):
        return ("s", value)
    return None


def _grow(array: np.ndarray, size: int, fill: Any) -> np.ndarray:
    if size <= len(array):
        return array
    grown = np.full(max(size, 2 * len(array), 1024), fill, dtype=array.dtype)
    grown[: len(array)] = array
    return grown


class Column:
    """One field's codes (and numbers, once it has held one) for rows 0..n-1."""

    def __init__(self) -> None:
        self.codes = np.empty(0, np.int32)
        self.numbers: np.ndarray | None = None

    def put(self, rows: np.ndarray, codes: np.ndarray) -> None:
        self.codes = _grow(self.codes, int(rows.max()) + 1, MISSING)
        self.codes[rows] = codes

    def put_numbers(self, rows: np.ndarray, numbers: np.ndarray) -> None:
        if self.numbers is None:
            self.numbers = np.full(len(self.codes), np.nan)
        self.numbers = _grow(self.numbers, int(rows.max()) + 1, np.nan)
        self.numbers[rows] = numbers

    def codes_for(self, n: int) -> np.ndarray:
        out = self.codes[:n]
        return out if len(out) == n else np.pad(out, (0, n - len(out)), constant_values=MISSING)

    def numbers_for(self, n: int) -> np.ndarray | None:
        if self.numbers is None:
            return None
        out = self.numbers[:n]
        return out if len(out) == n else np.pad(out, (0, n - len(out)), constant_values=np.nan)


class PayloadIndex:
    """Filter -> bool[n] over the rows added so far, in row-id order."""

    def __init__(self, items: Iterable[dict[str, Any] | None] = ()):
        self.n = 0
        self.columns: dict[str, Column] = {}
        self.dictionary: dict[tuple[str, Any], int] = {}
        self.add(list(items))

    def add(self, items: list[dict[str, Any] | None]) -> None:
        """Append rows n, n+1, ... (None: a row already deleted, indexed as empty)."""
        values: dict[str, tuple[list[int], list[int], list[int], list[float]]] = {}
        for i, item in enumerate(items):
            if item is None:
                continue
            fields = [("label", item.get("label"))]
            fields.extend((item.get("metadata") or {}).items())
            for name, value in fields:
                key = value_key(value)
                if key is None:
                    continue
                code = self.dictionary.setdefault(key, len(self.dictionary))
                rows, codes, num_rows, nums = values.setdefault(name, ([], [], [], []))
                rows.append(self.n + i)
                codes.append(code)
                if key[0] == "n":
                    num_rows.append(self.n + i)
                    nums.append(key[1])
        for name, (rows, codes, num_rows, nums) in values.items():
            column = self.columns.setdefault(name, Column())
            column.put(np.asarray(rows), np.asarray(codes, np.int32))
            if nums:
                column.put_numbers(np.asarray(num_rows), np.asarray(nums))
        self.n += len(items)

    def arrays(self) -> dict[str, np.ndarray]:
        """The index as named arrays (index.items saves them beside the generation)."""
        fields = sorted(self.columns)
        meta = {
            "n": self.n,
            "fields": fields,
            "dictionary": [list(key) for key in self.dictionary],
            "numbers": [f for f in fields if self.columns[f].numbers is not None],
        }
        out = {"payload": np.frombuffer(json.dumps(meta).encode(), np.uint8)}
        for i, name in enumerate(fields):
            column = self.columns[name]
            out[f"codes_{i}"] = column.codes_for(self.n)
            numbers = column.numbers_for(self.n)
            if numbers is not None:
                out[f"numbers_{i}"] = numbers
        return out

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], n: int) -> PayloadIndex:
        meta = json.loads(arrays["payload"].tobytes())
        if meta["n"] != n:
            raise ValueError(f"the payload columns hold {meta['n']} rows, not {n}")
        index = cls()
        index.n = n
        index.dictionary = {
            (kind, value): code for code, (kind, value) in enumerate(meta["dictionary"])
        }
        numbered = set(meta["numbers"])
        for i, name in enumerate(meta["fields"]):
            column = Column()
            column.codes = arrays[f"codes_{i}"]
            if name in numbered:
                column.numbers = arrays[f"numbers_{i}"]
            index.columns[name] = column
        return index

    def mask(self, node: Filter, n: int | None = None) -> np.ndarray:
        """bool[n] (default: every row added): the rows the filter admits."""
        n = self.n if n is None else n
        if isinstance(node, Condition):
            return self._leaf(node, n)
        if isinstance(node, Not):
            return ~self.mask(node.not_, n)
        children = node.and_ if isinstance(node, And) else node.or_
        out = self.mask(children[0], n)
        for child in children[1:]:
            if isinstance(node, And):
                if not out.any():
                    break
                out &= self.mask(child, n)
            else:
                out |= self.mask(child, n)
        return out

    def _leaf(self, cond: Condition, n: int) -> np.ndarray:
        column = self.columns.get(cond.key)
        if column is None:
            return np.zeros(n, bool)
        if cond.range is not None:
            numbers = column.numbers_for(n)
            if numbers is None:
                return np.zeros(n, bool)
            r = cond.range
            with np.errstate(invalid="ignore"):
                out = ~np.isnan(numbers)
                for bound, test in (
                    (r.gt, np.greater),
                    (r.gte, np.greater_equal),
                    (r.lt, np.less),
                    (r.lte, np.less_equal),
                ):
                    if bound is not None:
                        out &= test(numbers, float(bound))
            return out
        wanted = [cond.eq] if cond.in_ is None else cond.in_
        codes = [self.dictionary.get(value_key(v)) for v in wanted]  # type: ignore[arg-type]
        codes = [c for c in codes if c is not None]
        if not codes:
            return np.zeros(n, bool)
        column_codes = column.codes_for(n)
        if len(codes) == 1:
            return column_codes == codes[0]
        return np.isin(column_codes, np.asarray(codes, np.int32))

    def fields(self) -> list[str]:
        return sorted(self.columns)
