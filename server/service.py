"""The model and the index behind the API: one embedding part, one index part, built together."""

from __future__ import annotations

import faiss
import torch

from server.embedding import EmbeddingService
from server.index_service import IndexService
from server.metrics import Metrics
from server.schemas import ModelInfo
from server.settings import Settings


class Service:
    """Loaded once per process (by the lifespan or by `python -m server` before uvicorn)."""

    def __init__(self, settings: Settings, metrics: Metrics | None = None):
        self.settings = settings
        self.metrics = metrics or Metrics()
        torch_threads, faiss_threads = settings.thread_split()
        torch.set_num_threads(torch_threads)
        faiss.omp_set_num_threads(faiss_threads)
        self.embedding = EmbeddingService(settings, self.metrics)
        self.index = IndexService(settings, self.metrics, self.embedding)

    def model_info(self) -> ModelInfo:
        ckpt = self.embedding.checkpoint
        store = self.index.store
        return ModelInfo(
            arch=ckpt.model.arch,
            nesting_list=self.embedding.nesting_list,
            full_dim=self.embedding.full_dim,
            image_size=ckpt.model.image_size,
            step=ckpt.step,
            epoch=ckpt.epoch,
            fingerprint=self.embedding.fingerprint,
            rotation="none" if ckpt.rotation is None else "pca",
            index_size=len(store) if store is not None else None,
            read_only=self.settings.read_only,
        )

    def close(self) -> None:
        self.index.close()
