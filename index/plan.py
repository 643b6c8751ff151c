"""One search request as the index runs it, and the defaults a request leaves to the index.

The service builds a `SearchPlan` once; the store, the vectors and the ANN read it whole, so
what a search does is written in one place. bench/bench_search.py measured the defaults.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from index.filter import Filter

SHORTLIST_FACTOR = 20  # adaptive shortlist = factor x k
NPROBE = 64  # IVF lists probed
EF_SEARCH = 128  # HNSW candidate list


@dataclass(frozen=True)
class SearchKnobs:
    """Per-search ANN parameters; None leaves the index's built-in value."""

    nprobe: int | None = None
    ef_search: int | None = None


DEFAULT_KNOBS = SearchKnobs(nprobe=NPROBE, ef_search=EF_SEARCH)


@dataclass(frozen=True)
class SearchPlan:
    """Top-k by cosine at `dim`, exact; or a funnel: a shortlist at `dim` (from the ANN when
    the index has one at that dim), reranked exactly at `rerank_dim`."""

    k: int
    dim: int
    rerank_dim: int | None = None
    shortlist: int | None = None  # candidates the rerank sees; None: SHORTLIST_FACTOR x k
    knobs: SearchKnobs = field(default_factory=lambda: DEFAULT_KNOBS)
    use_ann: bool | None = None  # None: the ANN once the index is big enough
    filter: Filter | None = None  # only items it admits (index.filter); None: every item

    @property
    def final_dim(self) -> int:
        return self.rerank_dim or self.dim

    @property
    def adaptive(self) -> bool:
        return self.final_dim != self.dim

    @property
    def mode(self) -> str:
        return "adaptive" if self.adaptive else "exact"

    def shortlist_size(self, rows: int) -> int:
        """Candidates to rerank: at least k, at most every row."""
        wanted = self.shortlist if self.shortlist is not None else SHORTLIST_FACTOR * self.k
        return min(max(wanted, self.k), rows)

    def at_most(self, rows: int) -> SearchPlan:
        """The same plan asking for no more results than the index holds."""
        return self if self.k <= rows else replace(self, k=rows)
