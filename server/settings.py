"""Server settings: MOCO_* environment variables, overridden by `python -m server` flags."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from index.plan import EF_SEARCH, NPROBE, SHORTLIST_FACTOR
from index.vectors import ANN_MIN_ROWS, VectorOptions
from server.runtime import Runtime
from server.schemas import MAX_BATCH, MAX_K


def available_cores() -> int:
    """Cores this process may run on (the container's share, not the host's)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


class Settings(BaseSettings):
    """Everything the server reads at start. Field names are the env vars without MOCO_."""

    model_config = SettingsConfigDict(env_prefix="MOCO_", extra="ignore")

    checkpoint: Path = Field(
        Path("runs/default/checkpoint.pt"),
        description="checkpoint.pt, or an exported folder (python -m trainer.export)",
    )
    index_dir: Path | None = Field(
        None, description="index folder (python -m trainer.build_index); none = embed only"
    )
    create_index: bool = Field(
        False,
        description="writer: start an empty index when --index-dir holds none yet "
        "(a folder with index files but no manifest.json is refused, never overwritten)",
    )
    host: str = Field("127.0.0.1", description="address to listen on")
    port: int = Field(8000, ge=0, le=65535, description="TCP port")
    api_key: SecretStr | None = Field(
        None, description="key required for index mutations (Bearer or X-API-Key)"
    )
    read_only: bool = Field(False, description="refuse index mutations (read replicas)")
    model_name: str = Field(
        "moco-matryoshka", description="the `model` OpenAI clients name (/v1/embeddings)"
    )
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="model device")
    model_runtime: Runtime = Field(
        "torchscript",
        description="torchscript: a frozen trace whose forward runs without the GIL, so HTTP "
        "work does not stall it; eager: the nn.Module as trained",
    )
    torch_threads: int = Field(0, ge=0, description="torch intra-op threads; 0 = half the cores")
    faiss_threads: int = Field(0, ge=0, description="FAISS OpenMP threads; 0 = half the cores")
    max_batch_size: int = Field(32, ge=1, description="images per batched model forward")
    max_wait_ms: float = Field(5.0, ge=0, description="wait this long to fill a batch")
    max_queue: int = Field(64, ge=1, description="embed requests waiting; beyond -> 503")
    access_log: bool = Field(
        False, description="one log line per request (uvicorn's; ~40 us of CPU per request)"
    )
    retry_after_s: int = Field(1, ge=1, description="Retry-After on 503")
    max_images: int = Field(64, ge=1, le=MAX_BATCH, description="images (or vectors) per request")
    max_body_bytes: int = Field(16 * 1024 * 1024, ge=1024, description="request body limit")
    max_pixels: int = Field(4096 * 4096, ge=1, description="pixels per image (bombs refused)")
    max_k: int = Field(1000, ge=1, le=MAX_K, description="largest k in a search")
    shortlist_factor: int = Field(
        SHORTLIST_FACTOR, ge=1, description="adaptive shortlist = factor x k"
    )
    nprobe: int = Field(NPROBE, ge=1, description="ANN (IVF) lists probed unless a request says")
    ef_search: int = Field(EF_SEARCH, ge=1, description="ANN (HNSW) breadth unless a request says")
    ann_min_rows: int = Field(
        ANN_MIN_ROWS, ge=0, description="adaptive searches use the ANN from this index size"
    )
    flat_cache_mb: int = Field(
        256, ge=0, description="RAM for exact per-dim prefix indexes; beyond, scan the vectors"
    )
    faiss_gpu: bool = Field(True, description="search the ANN on a GPU when FAISS sees one")
    compact_every: int = Field(1000, ge=1, description="compact the write-ahead log after N ops")
    fast_path: bool = Field(
        True,
        description="answer well-formed embed requests without FastAPI's per-request machinery "
        "(same answers; off to rule it out when debugging)",
    )
    verify_index: bool = Field(
        True,
        description="check every generation file's checksum, the vectors' finiteness and "
        "every thumbnail's checksum when an index generation is opened (reads the folder "
        "once; off for huge folders)",
    )
    reload_interval_s: float = Field(
        2.0, ge=0, description="read-only: poll the index folder for changes; 0 = never"
    )

    def vector_options(self, gpu_count: int) -> VectorOptions:
        return VectorOptions(
            flat_cache_bytes=self.flat_cache_mb << 20,
            ann_min_rows=self.ann_min_rows,
            gpu=self.faiss_gpu and gpu_count > 0,
        )

    def thread_split(self) -> tuple[int, int]:
        """(torch, faiss) threads: model and search run concurrently, so share the cores."""
        half = max(1, available_cores() // 2)
        return self.torch_threads or half, self.faiss_threads or half
