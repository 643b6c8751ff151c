"""Approximate (ANN) indexes over one Matryoshka prefix: the cheap first stage of a funnel.

`AnnIndex` wraps any FAISS `index_factory` string over the L2-normalised `dim`-prefix with
inner-product metric, or, for factory strings starting with "B" (e.g. "BFlat", "BHNSW32"),
a binary index over the prefix's sign bits (Hamming distance). FAISS ids are the bank's row
numbers in insertion order; deleted rows stay in the index as tombstones and are filtered
out of each result (compaction rebuilds), so every factory supports deletes, even HNSW,
which has no remove_ids. Per-search knobs (`nprobe`, `ef_search`) go through
faiss.ParameterSpace, which reaches nested indexes (e.g. the HNSW quantizer of an IVF);
callers serialise searches (the server holds its store lock).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterable
from pathlib import Path

import faiss
import numpy as np

from core.atomic import atomic_write
from core.nesting import truncate_normalize_np
from index.plan import SearchKnobs
from index.search import GPU_MAX_K, _order, gpu_count

ADD_CHUNK = 65536
GPU_FACTORIES = re.compile(r"^(Flat|IVF\d+,(Flat|SQ8|SQ6|SQ4|SQfp16|PQ\d+(x\d+)?))$")


def is_binary(factory: str) -> bool:
    return factory.startswith("B")


def _sign_bits(x: np.ndarray, dim: int) -> np.ndarray:
    """Packed sign bits of the `dim`-prefix: [n, dim / 8] uint8 codes for a binary index."""
    return np.packbits(np.ascontiguousarray(x[:, :dim]) > 0, axis=1)


class AnnIndex:
    """An ANN index at one prefix dim, with tombstones, knobs and an optional GPU copy."""

    def __init__(self, index: faiss.Index | faiss.IndexBinary, dim: int, factory: str):
        self.index = index
        self.dim = dim
        self.factory = factory
        self.binary = is_binary(factory)
        self.dead: set[int] = set()
        self._gpu: faiss.Index | None = None
        self._ivf = None if self.binary else faiss.try_extract_index_ivf(index)

    # build --------------------------------------------------------------------------------

    @classmethod
    def create(cls, factory: str, dim: int) -> AnnIndex:
        """An empty, untrained index; a bad factory string is a ValueError naming it."""
        try:
            if is_binary(factory):
                if dim % 8:
                    raise ValueError(f"binary indexes need a dim divisible by 8, got {dim}")
                index = faiss.index_binary_factory(dim, factory)
            else:
                index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
        except RuntimeError as e:
            first = str(e).strip().splitlines()[-1][:200]
            raise ValueError(
                f"FAISS cannot build index {factory!r} at dim {dim} ({first}); examples: "
                "Flat, HNSW32, IVF1024,Flat, IVF1024,PQ16x4fs, SQ8, BFlat, BHNSW32"
            ) from None
        return cls(index, dim, factory)

    def encode(self, x: np.ndarray) -> np.ndarray:
        """Rows of the bank or queries (at least `dim` wide) in the index's input space."""
        return _sign_bits(x, self.dim) if self.binary else truncate_normalize_np(x, self.dim)

    @property
    def is_trained(self) -> bool:
        return bool(self.index.is_trained)

    def train(self, sample: np.ndarray) -> None:
        if not self.index.is_trained:
            self.index.train(self.encode(sample))

    def add(self, x: np.ndarray) -> None:
        """Append rows; they get ids ntotal, ntotal + 1, ... (the bank's next row numbers)."""
        for start in range(0, len(x), ADD_CHUNK):
            codes = self.encode(x[start : start + ADD_CHUNK])
            self.index.add(codes)
            if self._gpu is not None:
                self._gpu.add(codes)

    def delete(self, rows: Iterable[int]) -> None:
        self.dead.update(int(r) for r in rows)

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    @property
    def live(self) -> int:
        return self.ntotal - len(self.dead)

    # search -------------------------------------------------------------------------------

    def _apply(self, index: faiss.Index, knobs: SearchKnobs) -> None:
        if self.binary:
            if knobs.nprobe is not None and hasattr(index, "nprobe"):
                index.nprobe = knobs.nprobe
            if knobs.ef_search is not None and hasattr(index, "hnsw"):
                index.hnsw.efSearch = knobs.ef_search
            return
        space = faiss.GpuParameterSpace() if index is self._gpu else faiss.ParameterSpace()
        for name, value in (("nprobe", knobs.nprobe), ("efSearch", knobs.ef_search)):
            if value is not None:
                with contextlib.suppress(RuntimeError):  # no such knob here: ignored
                    space.set_index_parameter(index, name, value)

    @property
    def filters_inside(self) -> bool:
        """Whether a filter can go inside this index's search (an IDSelector): every float
        CPU index takes one; binary indexes take none."""
        return not self.binary

    def _params(self, knobs: SearchKnobs, allowed: np.ndarray) -> faiss.SearchParameters:
        """Search parameters carrying the filter as a bitmap IDSelector (bit r: row r may be
        returned); knobs set here too, since FAISS reads them from the parameters when given."""
        bits = np.packbits(allowed, bitorder="little")
        selector = faiss.IDSelectorBitmap(len(allowed), faiss.swig_ptr(bits))
        if self._ivf is not None:
            nprobe = knobs.nprobe if knobs.nprobe is not None else self._ivf.nprobe
            params = faiss.SearchParametersIVF(sel=selector, nprobe=int(nprobe))
        elif hasattr(self.index, "hnsw"):
            ef = knobs.ef_search if knobs.ef_search is not None else self.index.hnsw.efSearch
            params = faiss.SearchParametersHNSW(sel=selector, efSearch=int(ef))
        else:
            params = faiss.SearchParameters(sel=selector)
        params.referenced_objects = [selector, bits]  # alive while FAISS reads them
        return params

    def search(
        self,
        queries: np.ndarray,
        k: int,
        knobs: SearchKnobs | None = None,
        allowed: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k live rows per query: (scores, ids) [n, k], ids -1 where fewer are found.

        Scores are inner products (float indexes) or -Hamming distances (binary); rows are
        ordered by (score desc, id asc) like index.search. `allowed` (bool per row, tombstones
        already cleared) is applied inside the search (filters_inside), on the CPU index.
        """
        if queries.ndim != 2 or queries.shape[1] < self.dim:
            raise ValueError(f"queries must have shape [n, >= {self.dim}], got {queries.shape}")
        if allowed is not None:
            return self._search_allowed(queries, k, knobs or SearchKnobs(), allowed)
        index = self._gpu if self._gpu is not None else self.index
        self._apply(index, knobs or SearchKnobs())
        if self._ivf is not None:
            # FAISS splits an IVF search over queries (parallel_mode 0): one query would use
            # one thread; with fewer queries than threads, split each query's lists instead.
            few = len(queries) < faiss.omp_get_max_threads()
            self._ivf.parallel_mode = 1 if few else 0
        fetch = min(k + len(self.dead), max(self.ntotal, 1))
        if self._gpu is not None:
            fetch = min(fetch, GPU_MAX_K)
        scores, ids = index.search(self.encode(queries), fetch)
        scores = -scores.astype(np.float32) if self.binary else scores
        if self.dead:
            gone = np.isin(ids, np.fromiter(self.dead, np.int64, len(self.dead)))
            ids = np.where(gone, -1, ids)
        return self._ordered(scores, ids, k)

    def _search_allowed(
        self, queries: np.ndarray, k: int, knobs: SearchKnobs, allowed: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        if not self.filters_inside:
            raise ValueError(f"index {self.factory!r} cannot apply a filter inside its search")
        if len(allowed) != self.ntotal:
            raise ValueError(f"allowed has {len(allowed)} rows, the index {self.ntotal}")
        self._apply(self.index, knobs)
        if self._ivf is not None:
            self._ivf.parallel_mode = 1 if len(queries) < faiss.omp_get_max_threads() else 0
        params = self._params(knobs, allowed)
        fetch = min(k, max(self.ntotal, 1))
        scores, ids = self.index.search(self.encode(queries), fetch, params=params)
        return self._ordered(scores, ids, k)

    def _ordered(
        self, scores: np.ndarray, ids: np.ndarray, k: int
    ) -> tuple[np.ndarray, np.ndarray]:
        valid = ids >= 0
        scores = np.where(valid, scores, -np.inf).astype(np.float32)
        scores, ids = _order(scores, np.where(valid, ids, np.iinfo(np.int64).max))
        ids = np.where(np.isfinite(scores), ids, -1)
        out_s = np.full((len(ids), k), -np.inf, np.float32)
        out_i = np.full((len(ids), k), -1, np.int64)
        w = min(k, ids.shape[1])
        out_s[:, :w], out_i[:, :w] = scores[:, :w], ids[:, :w]
        return out_s, out_i

    # GPU ----------------------------------------------------------------------------------

    def gpu_supported(self) -> bool:
        return not self.binary and bool(GPU_FACTORIES.match(self.factory))

    def to_gpu(self, device: int = 0, *, count: Callable[[], int] = gpu_count) -> bool:
        """Search a GPU copy (flat and IVF factories) when FAISS sees a GPU; False otherwise.

        The CPU index stays the one that is saved; adds go to both. Results keep the same
        contract (ids, scores, tie order) since they pass through the same `search`.
        """
        if count() < 1 or not self.gpu_supported():
            return False
        resources = faiss.StandardGpuResources()
        gpu = faiss.index_cpu_to_gpu(resources, device, self.index)
        gpu.referenced_objects = [resources]
        self._gpu = gpu
        return True

    # files --------------------------------------------------------------------------------

    def save(self, path: Path) -> None:
        """Write the CPU index atomically (tombstones are not saved: compaction drops them),
        streamed into the file: serialising it to bytes first held a second copy of the
        whole ANN at the build's peak (0.5 GB more at 4M rows of an IVF at dim 32)."""
        write = faiss.write_index_binary if self.binary else faiss.write_index

        def stream(f) -> None:
            writer = faiss.PyCallbackIOWriter(f.write)
            write(self.index, writer)
            del writer  # flushes its buffer into f

        atomic_write(path, stream)

    @classmethod
    def load(cls, path: Path, dim: int, factory: str) -> AnnIndex:
        if is_binary(factory):
            index = faiss.read_index_binary(str(path))
        else:
            index = faiss.read_index(str(path))
        return cls(index, dim, factory)


def build_ann(
    factory: str,
    dim: int,
    bank: np.ndarray,
    *,
    train_size: int = 100_000,
    seed: int = 0,
    progress: Callable[[int], None] | None = None,
) -> AnnIndex:
    """Train on a random sample of the bank (at most `train_size` rows), then add it all.

    `bank` may be a memory map: rows are read chunk by chunk, never as one copy.
    """
    ann = AnnIndex.create(factory, dim)
    n = len(bank)
    if not ann.is_trained:
        if n == 0:
            raise ValueError(f"index {factory!r} needs training data; the bank is empty")
        rng = np.random.default_rng(seed)
        pick = np.sort(rng.choice(n, size=min(n, train_size), replace=False))
        ann.train(np.asarray(bank[pick, :dim], dtype=np.float32))
    for start in range(0, n, ADD_CHUNK):
        ann.add(np.asarray(bank[start : start + ADD_CHUNK, :dim], dtype=np.float32))
        if progress is not None:
            progress(min(ADD_CHUNK, n - start))
    return ann
