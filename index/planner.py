"""Where a filtered search runs: inside the ANN (its IDSelector skips rows the filter refuses,
with the probe widened to make up for them) or as an exact scan of just the matching rows.

An ANN with a filter inside visits what it would visit unfiltered: an IVF probes `nprobe` of
its `nlist` lists and so meets about matched x nprobe / nlist admitted rows. When that is not
several times the shortlist, the true filtered neighbours sit in lists it never opens and
recall falls (bench_filter, 1M rows: 0.96-0.97 at 0.1% with the request's nprobe). So the
planner widens the probe to meet IVF_VISIT_FACTOR x shortlist admitted rows (recall 1.000
there), and scans the matching rows exactly instead when that is cheaper. Costs, measured:
the scan reads and scores one full-dim row per match, as the funnel's rerank does per
shortlisted row; the probe costs one row's worth per SCAN_COST_RATIO codes visited. So the
scan wins when matched <= shortlist + visited / SCAN_COST_RATIO (about 2,000 rows at 1M with
a shortlist of 1,000 and every list probed; measured crossover 2,000-5,000). HNSW's graph walk
thins out the same way: below HNSW_MIN_SHARE of admitted rows it scans (not measured here),
above it widens ef_search to shortlist / share. A filter admitting at most EXACT_SCAN_ROWS
rows is always scanned. Binary ANNs cannot take a filter inside: the exact shortlist filters
exactly. Qdrant (full_scan_threshold) and Milvus plan the same way. docs/SEARCH.md "Filters"
has the table.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import faiss

from index.ann import AnnIndex
from index.plan import SearchKnobs

EXACT_SCAN_ROWS = 1000
IVF_VISIT_FACTOR = 4
SCAN_COST_RATIO = 1000  # one full-dim row scanned costs about this many IVF codes probed
HNSW_MIN_SHARE = 0.05
MAX_EF_SEARCH = 4096

RouteKind = Literal["exact", "exact_shortlist", "ann", "matching_rows"]


@dataclass(frozen=True)
class Route:
    """How one search ran: `kind`; with a filter, how many live rows it admitted and the knobs
    the ANN ran with (widened from the request's)."""

    kind: RouteKind
    matched: int | None = None
    knobs: SearchKnobs | None = None


@dataclass(frozen=True)
class FilteredPlan:
    """The planner's answer: scan the matching rows, or search the ANN with these knobs."""

    scan: bool
    knobs: SearchKnobs


def plan_filtered(
    matched: int, shortlist: int, ann: AnnIndex | None, knobs: SearchKnobs
) -> FilteredPlan:
    """Scan or ANN (and its widened knobs) for a filter admitting `matched` live rows."""
    if ann is None or not ann.filters_inside:
        # no ANN to miss with: the exact shortlist filters exactly
        return FilteredPlan(matched <= EXACT_SCAN_ROWS, knobs)
    ivf = faiss.try_extract_index_ivf(ann.index)
    if ivf is not None:
        base = knobs.nprobe if knobs.nprobe is not None else ivf.nprobe
        need = math.ceil(IVF_VISIT_FACTOR * shortlist * ivf.nlist / max(matched, 1))
        nprobe = min(ivf.nlist, max(base, need))
        visited = nprobe * ann.ntotal / ivf.nlist
        scan = matched <= max(EXACT_SCAN_ROWS, shortlist + visited / SCAN_COST_RATIO)
        return FilteredPlan(scan, SearchKnobs(nprobe=nprobe, ef_search=knobs.ef_search))
    if hasattr(ann.index, "hnsw"):
        share = max(matched, 1) / max(ann.live, 1)
        base = knobs.ef_search if knobs.ef_search is not None else ann.index.hnsw.efSearch
        ef = min(MAX_EF_SEARCH, max(base, math.ceil(shortlist / share)))
        scan = matched <= EXACT_SCAN_ROWS or share < HNSW_MIN_SHARE
        return FilteredPlan(scan, SearchKnobs(nprobe=knobs.nprobe, ef_search=ef))
    return FilteredPlan(matched <= EXACT_SCAN_ROWS, knobs)  # flat-like: every row is scored
