"""The index half of the service: the open index store, searched and edited off the event
loop, reloaded on read replicas; its errors become HTTP answers in server.app."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import anyio
import numpy as np

from core.quantize import OUTPUT_DTYPES, bytes_per_vector
from index.calibration import Setting
from index.dims import percentile_of, read_dims_report
from index.plan import SearchKnobs, SearchPlan
from index.search import gpu_count
from index.store import Hits, IndexStore
from server.embedding import Checked, EmbeddingService
from server.errors import BadInput, Conflict, NotFound
from server.metrics import Metrics
from server.schemas import (
    AddResponse,
    AnnInfo,
    CalibrationInfo,
    DeleteResponse,
    DimInfo,
    DimsInfo,
    DtypeInfo,
    Hit,
    ImageItem,
    ImageSearch,
    ItemInfo,
    ItemSample,
    SearchInfo,
    SearchOptions,
    SearchResponse,
    VectorItem,
    VectorSearch,
)
from server.settings import Settings
from server.timing import Timing


def dtype_infos(dims: list[int], evaluated: list[dict]) -> list[DtypeInfo]:
    """Every (dim, output type) with its bytes; quality from the build's eval.json rows."""
    quality = {(r["dim"], r["dtype"]): r for r in evaluated}
    kinds = [*OUTPUT_DTYPES, *sorted({t for _, t in quality} - set(OUTPUT_DTYPES))]
    return [
        DtypeInfo(
            **{
                **quality.get((d, t), {}),
                "dim": d,
                "dtype": t,
                "bytes": bytes_per_vector(d, "binary" if t == "binary+rerank" else t),
            }
        )
        for d in dims
        for t in kinds
        if t in OUTPUT_DTYPES or (d, t) in quality
    ]


class IndexService:
    """The index folder the server searches (None: an embed-only server)."""

    def __init__(self, settings: Settings, metrics: Metrics, embedding: EmbeddingService):
        self.settings = settings
        self.metrics = metrics
        self.embedding = embedding
        self.store = self.open_store() if settings.index_dir is not None else None
        self.neighbour_quantiles = self._neighbour_quantiles()
        self._update_size()

    def open_store(self) -> IndexStore:
        writable = not self.settings.read_only
        create = {
            "checkpoint": str(self.settings.checkpoint),
            "nesting_list": self.embedding.nesting_list,
        }
        assert self.settings.index_dir is not None
        return IndexStore.open(
            Path(self.settings.index_dir),
            self.embedding.fingerprint,
            self.embedding.full_dim,
            writable=writable,
            create=create if writable and self.settings.create_index else None,
            options=self.settings.vector_options(gpu_count()),
            verify=self.settings.verify_index,
        )

    def _neighbour_quantiles(self) -> dict[int, list[float]]:
        """Per dim, the index's own nearest-neighbour score quantiles from its dims.json
        ({} for folders built before they were measured: hits then carry no percentile)."""
        if self.store is None:
            return {}
        measured = read_dims_report(self.store.directory).get("neighbour_score_quantiles")
        if not isinstance(measured, dict):
            return {}
        return {int(d): q for d, q in measured.items() if isinstance(q, list)}

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
        self.neighbour_quantiles = self._neighbour_quantiles()
        if old is not None:
            old.close()
        self._update_size()

    def require_index(self) -> IndexStore:
        if self.store is None:
            raise Conflict("this server has no index; start it with --index-dir DIR")
        return self.store

    async def search(
        self, body: ImageSearch | VectorSearch | SearchOptions, uploads: list[bytes] | None = None
    ) -> tuple[SearchResponse, Timing | None, float]:
        """Results, the embedding's timing (None for vectors) and the search's seconds.

        `uploads`: the image files of POST /v1/search/files, searched with `body`'s options
        exactly as the JSON route searches its base64 images."""
        vectors = self.embedding.query_vectors(body) if isinstance(body, VectorSearch) else None
        images: list[str] | list[bytes] = (
            uploads if uploads is not None else body.images if isinstance(body, ImageSearch) else []
        )
        c = self.embedding.check(
            len(vectors) if vectors is not None else len(images),
            "queries",
            dim=body.dim,
            rerank_dim=body.rerank_dim,
            k=body.k,
            shortlist=body.shortlist,
            vectors=vectors,
        )
        plan, picked = self.plan(body, c)
        timing = None
        if c.vectors is not None:
            x = c.vectors
            if x.shape[1] < plan.final_dim:
                raise BadInput(
                    f"recall_target chose dim {plan.dim} -> {plan.final_dim}, wider than the "
                    f"{x.shape[1]}-dim query vectors; send full-dim ({self.embedding.full_dim}) "
                    "vectors with recall_target, or give dim and rerank_dim"
                )
        else:
            x, timing = await self.embedding.embed_images(images)
        start = time.perf_counter()
        hits = await self._search(x, plan)
        searched = time.perf_counter() - start
        quantiles = self.neighbour_quantiles.get(plan.final_dim)
        ran = hits.route.knobs or plan.knobs  # a filter may have widened the ANN's knobs
        response = SearchResponse(
            dim=plan.dim,
            rerank_dim=plan.rerank_dim,
            results=self.results(hits.scores, hits.rows, hits.items, quantiles),
            search=SearchInfo(
                route=hits.route.kind,
                shortlist=plan.shortlist if plan.adaptive or plan.use_ann else None,
                nprobe=ran.nprobe if hits.route.kind == "ann" else None,
                ef_search=ran.ef_search if hits.route.kind == "ann" else None,
                matched=hits.route.matched,
                recall_target=body.recall_target,
                calibrated_recall=picked.recall if picked is not None else None,
            ),
        )
        return response, timing, searched

    def plan(self, body: SearchOptions, c: Checked) -> tuple[SearchPlan, Setting | None]:
        """The request as the index runs it: the operator's defaults filled in, or with
        `recall_target` the calibration's pick, any knob the request gave winning over it."""
        store = self.require_index()
        ann = store.ann
        picked = None
        dim, rerank_dim, shortlist = c.dim, c.rerank_dim, c.shortlist
        nprobe, ef_search, use_ann = body.nprobe, body.ef_search, body.use_ann
        if body.recall_target is not None:
            picked = self.pick(store, body.recall_target, c.k)
            given = body.model_fields_set
            dim = c.dim if "dim" in given else picked.dim
            rerank_dim = c.rerank_dim if "rerank_dim" in given else picked.rerank_dim
            shortlist = c.shortlist if "shortlist" in given else picked.shortlist
            nprobe = body.nprobe if "nprobe" in given else picked.nprobe
            ef_search = body.ef_search if "ef_search" in given else picked.ef_search
            if "use_ann" not in given and picked.rerank_dim is not None:
                use_ann = picked.use_ann
            if rerank_dim is not None and rerank_dim <= dim:
                rerank_dim = None if rerank_dim == dim else rerank_dim
        if use_ann and (ann is None or ann.dim != dim):
            have = f"its ANN is at dim {ann.dim} ({ann.factory})" if ann else "it has no ANN"
            raise BadInput(f"use_ann: this index cannot shortlist at dim {dim} by ANN; {have}")
        plan = SearchPlan(
            k=c.k,
            dim=dim,
            rerank_dim=rerank_dim,
            shortlist=shortlist or self.settings.shortlist_factor * c.k,
            knobs=SearchKnobs(
                nprobe=nprobe or self.settings.nprobe,
                ef_search=ef_search or self.settings.ef_search,
            ),
            use_ann=use_ann,
            filter=body.filter,
        )
        return plan, picked

    def pick(self, store: IndexStore, target: float, k: int) -> Setting:
        """The calibration's cheapest setting at `target`, or a 422 saying what to run."""
        table = store.calibration
        if table is None:
            raise BadInput(
                f"recall_target: index {store.directory} has no calibration table (built before "
                f"calibration, or its last compaction was interrupted); run `python -m "
                f"index.calibrate {store.directory}` on the writer's folder, or give the knobs "
                "(dim, rerank_dim, shortlist, nprobe, ef_search) instead"
            )
        if k > table.k:
            raise BadInput(
                f"recall_target: the calibration measured recall@{table.k}; k={k} is past it. "
                f"Ask for k <= {table.k}, or give the knobs instead"
            )
        return table.pick(target)

    @staticmethod
    def results(
        scores: np.ndarray,
        rows: np.ndarray,
        items: dict[int, dict],
        quantiles: list[float] | None = None,
    ) -> list[list[Hit]]:
        """Hits per query; `quantiles`: the final dim's neighbour scores, for `percentile`."""
        return [
            [
                Hit.of(items[r], s, percentile_of(s, quantiles))
                for s, r in zip(srow.tolist(), rrow.tolist(), strict=True)
                if r >= 0  # an ANN shortlist may hold fewer than k live items
            ]
            for srow, rrow in zip(scores, rows, strict=True)
        ]

    def dims_info(self) -> DimsInfo:
        """Per nesting dim: the checkpoint's evaluated quality and the measured latency."""
        store = self.store
        measured = read_dims_report(store.directory) if store is not None else {}
        rows = {int(r["dim"]): r for r in measured.get("dims", [])}
        ann = store.ann if store is not None else None
        return DimsInfo(
            dims=[DimInfo(**{**rows.get(d, {}), "dim": d}) for d in self.embedding.nesting_list],
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
            calibration=CalibrationInfo(**store.calibration.model_dump())
            if store is not None and store.calibration is not None
            else None,
            dtypes=dtype_infos(self.embedding.nesting_list, measured.get("dtypes") or []),
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
        checked = self.embedding.check(
            len(items), "items", vectors=given or None, full_dim_only=True
        )
        vectors = np.empty((len(ids), self.embedding.full_dim), dtype=np.float32)
        if checked.vectors is not None:
            vectors[with_vectors] = checked.vectors
        thumbnails = {}
        if with_images:
            blobs = [it.image for it in items if isinstance(it, ImageItem)]
            vectors[with_images], _ = await self.embedding.embed_images(blobs)
            made = await anyio.to_thread.run_sync(self.embedding.thumbnails, blobs)
            thumbnails = {ids[i]: t for i, t in zip(with_images, made, strict=True)}
        records = [{"id": it.id, "label": it.label, "metadata": it.metadata} for it in items]
        size = await self._mutate(lambda store: store.add(records, vectors, thumbnails))
        return AddResponse(added=len(records), size=size)

    async def delete(self, item_id: str) -> DeleteResponse:
        size = await self._mutate(lambda store: store.delete(item_id))
        return DeleteResponse(deleted=item_id, size=size)

    def sample_items(self, n: int) -> ItemSample:
        store = self.require_index()
        return ItemSample(items=[ItemInfo.of(item) for item in store.sample(n)])

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
        found = self.require_index().thumbnail(item_id)
        if found is None:
            raise NotFound(
                f"item {item_id!r} has no thumbnail (added as a vector, or indexed with "
                "--thumbnail-size 0)"
            )
        return found

    async def _search(self, queries: np.ndarray, plan: SearchPlan) -> Hits:
        """The index's hits for queries [n, >= the dims the plan uses], off the event loop."""
        store = self.require_index()

        def run() -> Hits:
            start = time.perf_counter()
            hits = store.search(queries, plan)
            self.metrics.search_seconds.labels(plan.mode).observe(time.perf_counter() - start)
            return hits

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
