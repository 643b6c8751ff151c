"""The model and the index behind the API: validation against the checkpoint, embed, search."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import faiss
import numpy as np
import torch

from server.batcher import Batcher
from server.errors import BadInput, Conflict
from server.images import decode_base64, preprocess_all
from server.metrics import Metrics
from server.settings import Settings
from server.store import IndexStore
from trainer.checkpoint import load_checkpoint
from trainer.device import pick_device
from trainer.model import load_encoder
from trainer.nesting import truncate_normalize_np
from trainer.preprocess import EvalPreprocess


class Service:
    """Loaded once per process (by the lifespan or by `python -m server` before uvicorn)."""

    def __init__(self, settings: Settings, metrics: Metrics | None = None):
        self.settings = settings
        self.metrics = metrics or Metrics()
        torch_threads, faiss_threads = settings.thread_split()
        torch.set_num_threads(torch_threads)
        faiss.omp_set_num_threads(faiss_threads)
        self.checkpoint = load_checkpoint(settings.checkpoint)
        self.nesting_list = list(self.checkpoint.model.nesting_list)
        self.full_dim = self.checkpoint.model.full_dim
        self.fingerprint = self.checkpoint.fingerprint
        self.device = pick_device(settings.device)
        self.encoder = load_encoder(self.checkpoint, self.device)
        self.preprocess = EvalPreprocess.of(self.checkpoint.model)
        self.store = self.open_store() if settings.index_dir is not None else None
        self.batcher = Batcher(
            self._forward,
            self.metrics,
            max_batch_size=settings.max_batch_size,
            max_wait_ms=settings.max_wait_ms,
            max_queue=settings.max_queue,
            retry_after_s=settings.retry_after_s,
        )
        self._update_size()

    def open_store(self) -> IndexStore:
        writable = not self.settings.read_only
        create = {"checkpoint": str(self.settings.checkpoint), "nesting_list": self.nesting_list}
        assert self.settings.index_dir is not None
        return IndexStore.open(
            Path(self.settings.index_dir),
            self.fingerprint,
            self.full_dim,
            writable=writable,
            create=create if writable else None,
        )

    def _forward(self, images: torch.Tensor) -> np.ndarray:
        with torch.inference_mode():
            return self.encoder(images.to(self.device)).float().cpu().numpy()

    def _update_size(self) -> None:
        self.metrics.index_size.set(len(self.store) if self.store is not None else 0)

    def close(self) -> None:
        if self.store is not None:
            self.store.close()

    def index_signature(self) -> tuple:
        """Changes whenever a new index is published or the writer logs a mutation."""
        directory = Path(self.settings.index_dir or ".")
        try:
            m = (directory / "manifest.json").stat()
            wal = self.store.manifest["wal"] if self.store is not None else ""
            wal_size = (directory / wal).stat().st_size if (directory / wal).is_file() else 0
            manifest_gen = (directory / "manifest.json").read_bytes()
        except OSError:
            return ()
        return (m.st_ino, m.st_mtime_ns, manifest_gen, wal_size)

    async def reload(self) -> None:
        """Read replicas: reopen the published index (and the writer's log) and swap it in."""
        store = await anyio.to_thread.run_sync(self.open_store)
        old, self.store = self.store, store
        if old is not None:
            old.close()
        self._update_size()

    # validation ------------------------------------------------------------------------

    def check_dim(self, dim: int | None, what: str = "dim") -> int:
        if dim is None:
            return self.full_dim
        if dim not in self.nesting_list:
            allowed = ", ".join(map(str, self.nesting_list))
            raise BadInput(f"{what} {dim} is not allowed; allowed dims: {allowed}")
        return dim

    def check_count(self, n: int, what: str) -> None:
        if n == 0:
            raise BadInput(f"empty batch: give at least one {what[:-1]}")
        if n > self.settings.max_images:
            raise BadInput(f"batch too large: {n} {what}, the limit is {self.settings.max_images}")

    def check_vectors(self, vectors: list[list[float]], lengths: set[int]) -> np.ndarray:
        """Float32 [n, L] with every L in `lengths`, all finite."""
        shown = " or ".join(map(str, sorted(lengths)))
        for i, v in enumerate(vectors):
            if len(v) not in lengths:
                raise BadInput(f"vector {i} has length {len(v)}; expected {shown}")
            if not all(math.isfinite(x) for x in v):
                raise BadInput(f"vector {i} contains NaN or infinity")
        if len({len(v) for v in vectors}) > 1:
            raise BadInput("all vectors in a request must have the same length")
        x = np.asarray(vectors, dtype=np.float64)
        if (np.abs(x) > np.finfo(np.float32).max).any():
            raise BadInput("a vector has values too large for float32")
        if (np.abs(x).max(axis=1) == 0).any():
            raise BadInput("a vector is all zeros (it has no direction)")
        return x.astype(np.float32)

    def require_index(self) -> IndexStore:
        if self.store is None:
            raise Conflict("this server has no index; start it with --index-dir DIR")
        return self.store

    # work ------------------------------------------------------------------------------

    async def embed_base64(self, images: list[str]) -> np.ndarray:
        self.check_count(len(images), "images")
        blobs = [decode_base64(text, i) for i, text in enumerate(images)]
        return await self.embed_bytes(blobs)

    async def embed_bytes(self, blobs: list[bytes]) -> np.ndarray:
        self.check_count(len(blobs), "images")
        x = await anyio.to_thread.run_sync(
            preprocess_all, blobs, self.preprocess, self.settings.max_pixels
        )
        return await self.batcher.embed(x)

    @staticmethod
    def at_dim(raw: np.ndarray, dim: int) -> np.ndarray:
        return truncate_normalize_np(raw, dim)

    def check_k(self, k: int) -> None:
        if not 1 <= k <= self.settings.max_k:
            raise BadInput(f"k={k} is out of range; allowed 1..{self.settings.max_k}")

    async def search(
        self,
        queries: np.ndarray,
        k: int,
        dim: int,
        rerank_dim: int | None,
        shortlist: int | None,
    ) -> tuple[np.ndarray, np.ndarray, dict[int, dict[str, Any]]]:
        """(scores, row ids, {row: item}) for queries [n, >= the dims used]."""
        store = self.require_index()
        if shortlist is None:
            shortlist = self.settings.shortlist_factor * k
        mode = "adaptive" if rerank_dim not in (None, dim) else "exact"

        def run() -> tuple[np.ndarray, np.ndarray, dict[int, dict[str, Any]]]:
            start = time.perf_counter()
            with store.lock:
                scores, rows = store.search(queries, k, dim, rerank_dim, shortlist)
                items = {r: store.item(r) for r in np.unique(rows).tolist()}
            self.metrics.search_seconds.labels(mode).observe(time.perf_counter() - start)
            return scores, rows, items

        return await anyio.to_thread.run_sync(run)

    async def add(self, items: list[dict[str, Any]], vectors: np.ndarray) -> int:
        return await self._mutate(lambda store: store.add(items, vectors))

    async def delete(self, item_id: str) -> int:
        return await self._mutate(lambda store: store.delete(item_id))

    async def _mutate(self, change: Callable[[IndexStore], object]) -> int:
        """Apply one durable edit off the event loop, compacting the log when it is long."""
        store = self.require_index()

        def run() -> int:
            change(store)
            if store.ops_since_compaction >= self.settings.compact_every:
                store.compact()
            return len(store)

        size = await anyio.to_thread.run_sync(run)
        self._update_size()
        return size
