"""The index's vectors: one stored full-dim copy, exact search at any dim, ANN funnel.

The full-dim vectors exist once, in the generation's vectors file (float32 or float16),
read row by row with pread (index.rowfile: nothing of it stays mapped, so it never counts
in the process's resident memory); rows added since live in RAM until compaction folds
them in. Exact search at a dim below the full one keeps an in-RAM flat index of that
prefix while it fits in `flat_cache_bytes` (fast for small indexes); beyond that, and
always at the full dim, it scans the file chunk by chunk, so no second full copy is ever
held. An optional ANN
index (index.ann) at one shortlist dim makes adaptive search sublinear: shortlist from
the ANN, rerank exactly from the stored vectors.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import faiss
import numpy as np

from core.nesting import truncate_normalize_np
from index.ann import AnnIndex
from index.plan import SearchPlan
from index.planner import Route, plan_filtered
from index.rowfile import RowFile
from index.search import rerank, scan_rows, scan_top_k, search_index

CHUNK = 65536
# From this index size adaptive searches shortlist from the ANN: bench_search --threshold
# measured the ANN shortlist faster than the exact one from 10,000 rows on, at equal recall.
ANN_MIN_ROWS = 10_000


class Rows:
    """Read-only [N, D] float32 view over the stored base rows plus rows added since.

    index.search gathers `bank[rows, :d]` and slices `bank[a:b, :d]`; this serves both
    without concatenating (and so copying) the stored file.
    """

    def __init__(self, base: RowFile, width: int):
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
        if isinstance(rows, slice):
            rows = np.arange(*rows.indices(len(self)))
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        n0 = len(self.base)
        in_base = rows < n0
        if in_base.all():
            return self.base.read(rows, cols).astype(np.float32)
        width = len(range(*cols.indices(self.width)))
        out = np.empty((len(rows), width), dtype=np.float32)
        out[in_base] = self.base.read(rows[in_base], cols)
        out[~in_base] = self.extra[rows[~in_base] - n0, cols]
        return out


class Vectors:
    """Row ids are positions in `rows`; deleted rows stay until compaction, flagged dead."""

    def __init__(
        self,
        base: RowFile,
        width: int,
        ann: AnnIndex | None = None,
        *,
        flat_cache_bytes: int = 256 << 20,
        ann_min_rows: int = ANN_MIN_ROWS,
    ):
        self.rows = Rows(base, width)
        self.width = width
        self.ann = ann
        self.flat_cache_bytes = flat_cache_bytes
        self.ann_min_rows = ann_min_rows
        self.dead = np.zeros(len(base), dtype=bool)
        self.n_dead = 0
        self._flat: dict[int, faiss.Index] = {}
        if ann is not None and ann.ntotal != len(base):
            raise ValueError(f"the ANN index holds {ann.ntotal} rows, the vectors {len(base)}")

    def __len__(self) -> int:
        return len(self.rows) - self.n_dead

    def live_rows(self) -> np.ndarray:
        return np.flatnonzero(~self.dead)

    # mutations -------------------------------------------------------------------------

    def add(self, vectors: np.ndarray) -> np.ndarray:
        """Append rows (raw full-dim float32); returns their row ids."""
        start = len(self.rows)
        self.rows.append(vectors)
        ids = np.arange(start, start + len(vectors), dtype=np.int64)
        self.dead = np.concatenate([self.dead, np.zeros(len(vectors), dtype=bool)])
        for dim, index in self._flat.items():
            index.add_with_ids(truncate_normalize_np(vectors, dim), ids)
        if self.ann is not None:
            self.ann.add(vectors)
        return ids

    def delete(self, row: int) -> None:
        if self.dead[row]:
            return
        self.dead[row] = True
        self.n_dead += 1
        for index in self._flat.values():
            index.remove_ids(np.array([row], dtype=np.int64))
        if self.ann is not None:
            self.ann.delete([row])

    # search ----------------------------------------------------------------------------

    def _flat_index(self, dim: int) -> faiss.Index | None:
        """The cached exact index of the `dim`-prefix, or None when it would not fit."""
        index = self._flat.get(dim)
        if index is not None or dim >= self.width:
            return index
        used = sum(i.ntotal * i.d * 4 for i in self._flat.values())
        if used + len(self.rows) * dim * 4 > self.flat_cache_bytes:
            return None
        index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        live = self.live_rows()
        for i in range(0, len(live), CHUNK):
            rows = live[i : i + CHUNK]
            index.add_with_ids(truncate_normalize_np(self.rows[rows, :dim], dim), rows)
        self._flat[dim] = index
        return index

    def warm(self, dim: int) -> None:
        self._flat_index(dim)

    def exact(
        self, queries: np.ndarray, k: int, dim: int, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Exact cosine top-k at `dim` over the live rows (and, given `allowed`, only those);
        k must be <= len(self). Places no admitted row fills hold id -1."""
        index = self._flat_index(dim)
        if index is not None:
            params = None
            if allowed is not None:
                bits = np.packbits(allowed, bitorder="little")
                selector = faiss.IDSelectorBitmap(len(allowed), faiss.swig_ptr(bits))
                params = faiss.SearchParameters(sel=selector)
                params.referenced_objects = [selector, bits]
            return search_index(index, queries[:, :dim], k, params=params)
        exclude = ~allowed if allowed is not None else self.dead if self.n_dead else None
        return scan_top_k(self.rows, queries, k, dim, exclude=exclude)

    def uses_ann(self, dim: int, use_ann: bool | None) -> bool:
        """Whether a shortlist at `dim` comes from the ANN (auto: when it is big enough)."""
        if self.ann is None or self.ann.dim != dim:
            return False
        return use_ann if use_ann is not None else len(self) >= self.ann_min_rows

    def search(
        self, queries: np.ndarray, plan: SearchPlan, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray, Route]:
        """(scores, row ids) [n, plan.k] and the route taken; plan.k <= len(self). Rows an
        ANN missed (or fewer admitted rows than k) come back -1.

        Exact at `dim` unless the plan reranks at another dim or asks for the ANN; the ANN path
        shortlists at its dim and reranks exactly at the final dim. `allowed` (bool per row,
        a filter's rows) restricts every stage; index.planner decides when the matching rows
        are few enough to scan exactly instead.
        """
        if allowed is not None:
            return self._search_filtered(queries, plan, allowed & ~self.dead)
        if not plan.adaptive and plan.use_ann is not True:
            return (*self.exact(queries, plan.k, plan.dim), Route("exact"))
        candidates, kind = self.shortlist(queries, plan)
        return (*rerank(self.rows, queries, candidates, plan.k, plan.final_dim), Route(kind))

    def shortlist(self, queries: np.ndarray, plan: SearchPlan) -> tuple[np.ndarray, str]:
        """The funnel's first stage: candidate rows [n, shortlist] from the ANN at its dim,
        or exactly at `plan.dim`, and which of the two it was."""
        size = plan.shortlist_size(len(self))
        if self.uses_ann(plan.dim, plan.use_ann if plan.adaptive else True):
            assert self.ann is not None
            return self.ann.search(queries, size, plan.knobs)[1], "ann"
        return self.exact(queries, size, plan.dim)[1], "exact_shortlist"

    def _search_filtered(
        self, queries: np.ndarray, plan: SearchPlan, allowed: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, Route]:
        matched = int(allowed.sum())
        shortlist = min(plan.shortlist_size(len(self)), max(matched, 1))
        use_ann = self.uses_ann(plan.dim, plan.use_ann if plan.adaptive else True)
        ann = self.ann if use_ann else None
        chosen = plan_filtered(matched, shortlist, ann, plan.knobs)
        if plan.use_ann is True and ann is not None and ann.filters_inside:
            chosen = replace(chosen, scan=matched == 0)  # asked for: the ANN, widened
        if chosen.scan:
            rows = np.flatnonzero(allowed)
            k = min(plan.k, max(matched, 1))
            scores, ids = scan_rows(self.rows, queries, k, plan.final_dim, rows)
            return (*_pad(scores, ids, plan.k), Route("matching_rows", matched))
        if not plan.adaptive and plan.use_ann is not True:
            scores, ids = self.exact(queries, plan.k, plan.dim, allowed)
            return scores, ids, Route("exact", matched)
        if ann is not None and ann.filters_inside:
            _, candidates = ann.search(queries, shortlist, chosen.knobs, allowed)
            route = Route("ann", matched, chosen.knobs)
            short = (candidates >= 0).sum(axis=1) < min(shortlist, matched)
            if short.any():
                # The probed lists held fewer admitted rows than the shortlist: a filter that
                # follows the vectors (a class far from the query). Widening the probe is a
                # guess; the exact shortlist over the admitted rows at the ANN's dim is not.
                exact = self.exact(queries[short], shortlist, plan.dim, allowed)[1]
                candidates = np.array(candidates)
                candidates[short] = -1
                candidates[short, : exact.shape[1]] = exact
                if short.all():
                    route = Route("exact_shortlist", matched)
        else:
            _, candidates = self.exact(queries, shortlist, plan.dim, allowed)
            route = Route("exact_shortlist", matched)
        scores, ids = rerank(self.rows, queries, candidates, plan.k, plan.final_dim)
        return (*_pad(scores, ids, plan.k), route)


def _pad(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """[n, k] results, places past what was found as score -inf and id -1."""
    if scores.shape[1] >= k:
        return scores, ids
    pad = ((0, 0), (0, k - scores.shape[1]))
    return (
        np.pad(scores, pad, constant_values=-np.inf).astype(np.float32),
        np.pad(ids, pad, constant_values=-1),
    )


@dataclass(frozen=True)
class VectorOptions:
    """How the server searches an index folder's vectors (from server.settings)."""

    flat_cache_bytes: int = 256 << 20
    ann_min_rows: int = ANN_MIN_ROWS
    gpu: bool = False
