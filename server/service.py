"""The model and the index behind the API: validation against the checkpoint, embed, search."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import faiss
import numpy as np
import torch

from server.batcher import Batcher, Source, Timing
from server.dims import read_dims_report
from server.errors import BadInput, Conflict, NotFound
from server.images import decode_base64, decode_into, open_image
from server.metrics import Metrics
from server.runtime import serving_encoder
from server.schemas import (
    AddResponse,
    AnnInfo,
    DeleteResponse,
    DimInfo,
    DimsInfo,
    Hit,
    ImageItem,
    ImageSearch,
    ItemInfo,
    ItemSample,
    ModelInfo,
    SearchResponse,
    VectorItem,
    VectorSearch,
)
from server.settings import Settings
from server.store import IndexStore
from server.thumbnails import make_thumbnail
from trainer.ann import SearchKnobs
from trainer.checkpoint import load_checkpoint
from trainer.device import pick_device
from trainer.model import load_encoder
from trainer.nesting import truncate_normalize_np
from trainer.preprocess import EvalPreprocess, normalize
from trainer.search import gpu_count


@dataclass(frozen=True)
class Checked:
    """A request's dims, k and query vectors after the checkpoint's and the operator's rules."""

    dim: int
    rerank_dim: int | None
    k: int
    shortlist: int | None
    vectors: np.ndarray | None


@dataclass(frozen=True)
class Embedded:
    """Embeddings at the asked dim (unit L2 norm), and where the time went."""

    dim: int
    vectors: np.ndarray
    timing: Timing


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
        self.model = serving_encoder(
            self.encoder, self.checkpoint.model.image_size, self.device, settings.model_runtime
        )
        self.store = self.open_store() if settings.index_dir is not None else None
        size = self.checkpoint.model.image_size
        self.batcher = Batcher(
            self._decode,
            self._forward,
            (3, size, size),
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
            create=create if writable and self.settings.create_index else None,
            options=self.settings.vector_options(gpu_count()),
        )

    def _decode(self, out: torch.Tensor, sources: list[Source], first: int) -> None:
        decode_into(out, sources, first, self.preprocess, self.settings.max_pixels)

    def _forward(self, images: torch.Tensor) -> np.ndarray:
        """uint8 batch -> raw embeddings; normalised once per batch, on the model's device."""
        pre = self.preprocess
        with torch.inference_mode():
            x = normalize(images.to(self.device), pre.mean, pre.std)
            return self.model(x).float().cpu().numpy()

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

    def check(
        self,
        n: int,
        what: str,
        *,
        dim: int | None = None,
        rerank_dim: int | None = None,
        k: int = 1,
        shortlist: int | None = None,
        vectors: list[list[float]] | None = None,
        full_dim_only: bool = False,
        dim_name: str = "dim",
    ) -> Checked:
        """Every rule that depends on the checkpoint or the operator's limits, in one place.

        The static rules (k >= 1, list sizes, finite float32 values) are in server.schemas.
        """
        limit = self.settings.max_images
        if n > limit:
            raise BadInput(f"batch too large: {n} {what}, the limit is {limit}")
        dim = self._allowed_dim(dim, dim_name)
        if rerank_dim is not None:
            rerank_dim = self._allowed_dim(rerank_dim, "rerank_dim")
            if rerank_dim < dim:
                raise BadInput(f"rerank_dim {rerank_dim} must be at least dim {dim}")
        max_k = self.settings.max_k
        if k > max_k:
            raise BadInput(f"k={k} is out of range; allowed 1..{max_k}")
        if shortlist is not None and not k <= shortlist <= 100 * max_k:
            raise BadInput(f"shortlist must be between k={k} and {100 * max_k}")
        x = None
        if vectors is not None:
            if full_dim_only:  # stored: findable at every nesting dim
                x = self._vectors(vectors, {self.full_dim}, self.nesting_list[0])
            else:
                x = self._vectors(vectors, {max(dim, rerank_dim or 0), self.full_dim}, dim)
        return Checked(dim, rerank_dim, k, shortlist, x)

    def _allowed_dim(self, dim: int | None, what: str) -> int:
        if dim is None:
            return self.full_dim
        if dim not in self.nesting_list:
            allowed = ", ".join(map(str, self.nesting_list))
            raise BadInput(f"{what} {dim} is not allowed; allowed dims: {allowed}")
        return dim

    @staticmethod
    def _vectors(vectors: list[list[float]], lengths: set[int], dim: int) -> np.ndarray:
        """Float32 [n, L] with every L in `lengths` and a direction in its first `dim` values."""
        shown = " or ".join(map(str, sorted(lengths)))
        for i, v in enumerate(vectors):
            if len(v) not in lengths:
                raise BadInput(f"vector {i} has length {len(v)}; expected {shown}")
        if len({len(v) for v in vectors}) > 1:
            raise BadInput("all vectors in a request must have the same length")
        x = np.asarray(vectors, dtype=np.float32)
        flat = np.flatnonzero(np.abs(x[:, :dim]).max(axis=1) == 0)
        if len(flat):
            raise BadInput(
                f"vector {flat[0]} is all zeros in its first {dim} values: it has no "
                f"direction at dim {dim}, so no search there could find or rank it"
            )
        return x

    def require_index(self) -> IndexStore:
        if self.store is None:
            raise Conflict("this server has no index; start it with --index-dir DIR")
        return self.store

    # requests --------------------------------------------------------------------------

    def model_info(self) -> ModelInfo:
        ckpt = self.checkpoint
        return ModelInfo(
            arch=ckpt.model.arch,
            nesting_list=self.nesting_list,
            full_dim=self.full_dim,
            image_size=ckpt.model.image_size,
            step=ckpt.step,
            epoch=ckpt.epoch,
            fingerprint=self.fingerprint,
            rotation="none" if ckpt.rotation is None else "pca",
            index_size=len(self.store) if self.store is not None else None,
            read_only=self.settings.read_only,
        )

    async def embed(
        self, images: list[str] | list[bytes], dim: int | None, dim_name: str = "dim"
    ) -> Embedded:
        """Base64 text (JSON) or raw file bytes (multipart) -> embeddings at `dim`."""
        checked = self.check(len(images), "images", dim=dim, dim_name=dim_name)
        raw, timing = await self.embed_images(images)
        return Embedded(checked.dim, self.at_dim(raw, checked.dim), timing)

    async def search(
        self, body: ImageSearch | VectorSearch
    ) -> tuple[SearchResponse, Timing | None, float]:
        """Results, the embedding's timing (None for vectors) and the search's seconds."""
        queries = body.images if isinstance(body, ImageSearch) else body.vectors
        c = self.check(
            len(queries),
            "queries",
            dim=body.dim,
            rerank_dim=body.rerank_dim,
            k=body.k,
            shortlist=body.shortlist,
            vectors=body.vectors if isinstance(body, VectorSearch) else None,
        )
        store = self.require_index()
        ann = store.ann
        if body.use_ann and (ann is None or ann.dim != c.dim):
            have = f"its ANN is at dim {ann.dim} ({ann.factory})" if ann else "it has no ANN"
            raise BadInput(f"use_ann: this index cannot shortlist at dim {c.dim} by ANN; {have}")
        knobs = SearchKnobs(
            nprobe=body.nprobe or self.settings.nprobe,
            ef_search=body.ef_search or self.settings.ef_search,
        )
        timing = None
        if c.vectors is not None:
            x = c.vectors
        else:
            x, timing = await self.embed_images(body.images)
        start = time.perf_counter()
        scores, rows, items = await self._search(
            x, c.k, c.dim, c.rerank_dim, c.shortlist, knobs, body.use_ann
        )
        searched = time.perf_counter() - start
        response = SearchResponse(
            dim=c.dim,
            rerank_dim=c.rerank_dim,
            results=[
                [
                    Hit.of(items[r], s)
                    for s, r in zip(srow.tolist(), rrow.tolist(), strict=True)
                    if r >= 0  # an ANN shortlist may hold fewer than k live items
                ]
                for srow, rrow in zip(scores, rows, strict=True)
            ],
        )
        return response, timing, searched

    def dims_info(self) -> DimsInfo:
        """Per nesting dim: the checkpoint's evaluated quality and the measured latency."""
        store = self.store
        measured = read_dims_report(store.directory) if store is not None else {}
        rows = {int(r["dim"]): r for r in measured.get("dims", [])}
        ann = store.ann if store is not None else None
        return DimsInfo(
            dims=[DimInfo(**{**rows.get(d, {}), "dim": d}) for d in self.nesting_list],
            index_size=len(store) if store is not None else None,
            store_dtype=store.manifest.get("store_dtype") if store is not None else None,
            ann=AnnInfo(
                factory=ann.factory,
                dim=ann.dim,
                min_rows=self.settings.ann_min_rows,
                default_nprobe=self.settings.nprobe,
                default_ef_search=self.settings.ef_search,
                default_shortlist_factor=self.settings.shortlist_factor,
            )
            if ann is not None
            else None,
            eval_source=measured.get("eval_source"),
            latency_measured=measured.get("latency_measured"),
        )

    async def add_items(self, items: list[ImageItem | VectorItem]) -> AddResponse:
        """Embed (images) or take (full-dim vectors), then log durably before answering."""
        self.require_index()
        ids = [it.id for it in items]
        if len(set(ids)) != len(ids):
            raise BadInput("duplicate ids in the request")
        with_images = [i for i, it in enumerate(items) if isinstance(it, ImageItem)]
        with_vectors = [i for i, it in enumerate(items) if isinstance(it, VectorItem)]
        given = [v.vector for v in items if isinstance(v, VectorItem)]
        checked = self.check(len(items), "items", vectors=given or None, full_dim_only=True)
        vectors = np.empty((len(ids), self.full_dim), dtype=np.float32)
        if checked.vectors is not None:
            vectors[with_vectors] = checked.vectors
        thumbnails = {}
        if with_images:
            blobs = [it.image for it in items if isinstance(it, ImageItem)]
            vectors[with_images], _ = await self.embed_images(blobs)
            made = await anyio.to_thread.run_sync(self._thumbnails, blobs)
            thumbnails = {ids[i]: t for i, t in zip(with_images, made, strict=True)}
        records = [{"id": it.id, "label": it.label, "metadata": it.metadata} for it in items]
        size = await self._mutate(lambda store: store.add(records, vectors, thumbnails))
        return AddResponse(added=len(records), size=size)

    async def delete(self, item_id: str) -> DeleteResponse:
        size = await self._mutate(lambda store: store.delete(item_id))
        return DeleteResponse(deleted=item_id, size=size)

    # items (the search page) ---------------------------------------------------------

    def sample_items(self, n: int) -> ItemSample:
        store = self.require_index()
        with store.lock:
            ids = random.sample(list(store.row_of), min(n, len(store)))
            return ItemSample(items=[ItemInfo.of(store.item(store.row_of[i])) for i in ids])

    def item_info(self, item_id: str) -> ItemInfo:
        """The live item with its raw full-dim vector."""
        store = self.require_index()
        with store.lock:
            vector = store.vector(item_id)
            if vector is None:
                raise NotFound(f"no item with id {item_id!r} in the index")
            return ItemInfo.of(store.item(store.row_of[item_id]), vector.tolist())

    def thumbnail(self, item_id: str) -> tuple[bytes, str]:
        """(WebP bytes, ETag) of a live item."""
        store = self.require_index()
        with store.lock:
            if item_id not in store.row_of:
                raise NotFound(f"no item with id {item_id!r} in the index")
            data, etag = store.thumbnails.get(item_id), store.thumbnails.etag(item_id)
        if data is None or etag is None:
            raise NotFound(
                f"item {item_id!r} has no thumbnail (added as a vector, or indexed with "
                "--thumbnail-size 0)"
            )
        return data, etag

    # work ------------------------------------------------------------------------------

    async def embed_images(self, images: Sequence[Source]) -> tuple[np.ndarray, Timing]:
        """Full-dim raw embeddings of base64 text (data: URLs too) or raw image bytes.

        Decoding happens in the batcher, per batch, off the event loop.
        """
        return await self.batcher.embed(list(images))

    def _thumbnails(self, images: list[str]) -> list[bytes]:
        """Thumbnails of base64 images that embedding has already accepted."""
        limit = self.settings.max_pixels
        return [
            make_thumbnail(open_image(decode_base64(text, i), i, limit))
            for i, text in enumerate(images)
        ]

    @staticmethod
    def at_dim(raw: np.ndarray, dim: int) -> np.ndarray:
        return truncate_normalize_np(raw, dim)

    async def _search(
        self,
        queries: np.ndarray,
        k: int,
        dim: int,
        rerank_dim: int | None,
        shortlist: int | None,
        knobs: SearchKnobs | None = None,
        use_ann: bool | None = None,
    ) -> tuple[np.ndarray, np.ndarray, dict[int, dict[str, Any]]]:
        """(scores, row ids, {row: item}) for queries [n, >= the dims used]."""
        store = self.require_index()
        if shortlist is None:
            shortlist = self.settings.shortlist_factor * k
        mode = "adaptive" if rerank_dim not in (None, dim) else "exact"

        def run() -> tuple[np.ndarray, np.ndarray, dict[int, dict[str, Any]]]:
            start = time.perf_counter()
            with store.lock:
                scores, rows = store.search(
                    queries, k, dim, rerank_dim, shortlist, knobs=knobs, use_ann=use_ann
                )
                items = {r: store.item(r) for r in np.unique(rows).tolist() if r >= 0}
            self.metrics.search_seconds.labels(mode).observe(time.perf_counter() - start)
            return scores, rows, items

        return await anyio.to_thread.run_sync(run)

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
