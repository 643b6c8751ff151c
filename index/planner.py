"""Where a filtered search runs: inside the ANN (its IDSelector skips rows the filter refuses)
or as an exact scan of just the matching rows.

An ANN with a filter inside still visits what it would visit unfiltered: an IVF probes
`nprobe` of its `nlist` lists, so it meets about matched x nprobe / nlist admitted rows; when
that is not several times the shortlist, the true filtered neighbours sit in lists it never
opens and recall falls (HNSW's graph walk thins out the same way). Exact scanning the matching
rows costs time linear in their count and is exact. So the planner scans exactly when
  - the filter admits at most EXACT_SCAN_ROWS rows (a scan that cheap beats the funnel), or
  - an IVF would meet fewer than IVF_VISIT_FACTOR x shortlist admitted rows, or
  - an HNSW's share of admitted rows is below HNSW_MIN_SHARE, or
  - the ANN cannot take a filter inside (binary indexes),
as Qdrant (full_scan_threshold) and Milvus do. docs/SEARCH.md "Filters" has the measurement
behind the numbers (bench/bench_filter.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import faiss

from index.ann import AnnIndex

# bench_filter (1M rows, dim 32 IVF4096): the exact scan of the matching rows at the final dim
# costs about as much as the filtered funnel at ~20,000 rows (see docs/SEARCH.md).
EXACT_SCAN_ROWS = 20_000
IVF_VISIT_FACTOR = 4
HNSW_MIN_SHARE = 0.05

RouteKind = Literal["exact", "exact_shortlist", "ann", "matching_rows"]


@dataclass(frozen=True)
class Route:
    """How one search ran: `kind`, and with a filter, how many live rows it admitted."""

    kind: RouteKind
    matched: int | None = None


def scan_matching(matched: int, shortlist: int, ann: AnnIndex | None, nprobe: int | None) -> bool:
    """Whether a filtered search admitting `matched` live rows scans them exactly instead of
    searching the ANN with the filter inside (module docstring: why each test)."""
    if matched <= EXACT_SCAN_ROWS:
        return True
    if ann is None or not ann.filters_inside:
        return False  # no ANN to miss with: the exact shortlist path filters exactly
    ivf = faiss.try_extract_index_ivf(ann.index)
    if ivf is not None:
        probes = nprobe if nprobe is not None else ivf.nprobe
        return matched * min(probes, ivf.nlist) / ivf.nlist < IVF_VISIT_FACTOR * shortlist
    if hasattr(ann.index, "hnsw"):
        return matched / max(ann.live, 1) < HNSW_MIN_SHARE
    return False
