"""The embedding half of the service: the checkpoint's encoder behind a batcher, and the
rules a request must meet against the checkpoint (dims, vector lengths) and the operator."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from core.device import pick_device
from core.encoder import load_encoder
from core.export_folder import load_served
from core.nesting import truncate_normalize_np
from core.preprocess import EvalPreprocess, normalize
from core.quantize import (
    CALIBRATED,
    NUMPY,
    OutputDtype,
    dequantize,
    quantize,
    values_per_vector,
)
from index.thumbnails import make_thumbnail
from server.batcher import Batcher, Source
from server.errors import BadInput
from server.images import decode_base64, decode_into, open_image
from server.metrics import Metrics
from server.runtime import serving_encoder
from server.schemas import VectorSearch
from server.settings import Settings
from server.timing import Timing


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
    """Embeddings at the asked dim (unit L2 norm), in the asked output type
    (core.quantize), and where the time went."""

    dim: int
    vectors: np.ndarray
    timing: Timing
    output_dtype: OutputDtype = "float"


class EmbeddingService:
    """The loaded checkpoint's (or exported folder's) encoder, batched; loaded once per
    process."""

    def __init__(self, settings: Settings, metrics: Metrics):
        self.settings = settings
        self.checkpoint = load_served(settings.checkpoint)
        self.nesting_list = list(self.checkpoint.model.nesting_list)
        self.full_dim = self.checkpoint.model.full_dim
        self.fingerprint = self.checkpoint.fingerprint
        self.device = pick_device(settings.device)
        self.encoder = load_encoder(self.checkpoint, self.device)
        self.preprocess = EvalPreprocess.of(self.checkpoint.model)
        self.model = serving_encoder(
            self.encoder, self.checkpoint.model.image_size, self.device, settings.model_runtime
        )
        size = self.checkpoint.model.image_size
        self.batcher = Batcher(
            self._decode,
            self._forward,
            (3, size, size),
            metrics,
            max_batch_size=settings.max_batch_size,
            max_wait_ms=settings.max_wait_ms,
            max_queue=settings.max_queue,
            retry_after_s=settings.retry_after_s,
        )

    def _decode(self, out: torch.Tensor, sources: list[Source], first: int) -> None:
        decode_into(out, sources, first, self.preprocess, self.settings.max_pixels)

    def _forward(self, images: torch.Tensor) -> np.ndarray:
        """uint8 batch -> raw embeddings; normalised once per batch, on the model's device."""
        pre = self.preprocess
        with torch.inference_mode():
            x = normalize(images.to(self.device), pre.mean, pre.std)
            return self.model(x).float().cpu().numpy()

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

    async def embed(
        self,
        images: list[str] | list[bytes],
        dim: int | None,
        dim_name: str = "dim",
        output_dtype: OutputDtype = "float",
        encoding_format: str = "float",
    ) -> Embedded:
        """Base64 text (JSON) or raw file bytes (multipart) -> embeddings at `dim`, truncated
        and normalised, then quantised to `output_dtype`."""
        checked = self.check(len(images), "images", dim=dim, dim_name=dim_name)
        self.check_output(output_dtype, encoding_format)
        raw, timing = await self.embed_images(images)
        v = quantize(self.at_dim(raw, checked.dim), output_dtype, self.checkpoint.calibration)
        return Embedded(checked.dim, v, timing, output_dtype)

    def check_output(self, output_dtype: str, encoding_format: str) -> None:
        """An output type this model can give, in an encoding that can carry it."""
        if output_dtype in CALIBRATED and self.checkpoint.calibration is None:
            raise BadInput(
                f"output_dtype {output_dtype} needs the model's int8 calibration, which this "
                f"checkpoint predates; fit it with `python -m trainer.calibrate CHECKPOINT`, "
                f"or ask for float, float16, binary or ubinary"
            )
        if encoding_format == "base64_float16" and output_dtype not in ("float", "float16"):
            raise BadInput(
                f"encoding_format base64_float16 carries float16 values, not {output_dtype}; "
                f"use encoding_format float (JSON integers) or base64 (the {output_dtype} bytes)"
            )

    async def embed_images(self, images: Sequence[Source]) -> tuple[np.ndarray, Timing]:
        """Full-dim raw embeddings of base64 text (data: URLs too) or raw image bytes.

        Decoding happens in the batcher, per batch, off the event loop.
        """
        return await self.batcher.embed(list(images))

    def thumbnails(self, images: list[str]) -> list[bytes]:
        """Thumbnails of base64 images that embedding has already accepted."""
        limit = self.settings.max_pixels
        return [
            make_thumbnail(open_image(decode_base64(text, i), i, limit))
            for i, text in enumerate(images)
        ]

    def query_vectors(self, body: VectorSearch) -> list[list[float]] | np.ndarray:
        """A search's query vectors as floats: compressed ones (`vector_dtype`) decoded at
        the search dim, exactly as /v1/embed encoded them (core.quantize)."""
        dtype = body.vector_dtype
        if dtype in ("float", "float16"):
            return body.vectors
        if body.rerank_dim is not None:
            raise BadInput(
                f"rerank_dim needs float query vectors; {dtype} vectors hold only `dim` values"
            )
        dim = self._allowed_dim(body.dim, "dim")
        self.check_output(dtype, "float")
        want = values_per_vector(dim, dtype)
        info = np.iinfo(NUMPY[dtype])
        for i, v in enumerate(body.vectors):
            if len(v) != want:
                raise BadInput(f"vector {i} has length {len(v)}; {dtype} at dim {dim} is {want}")
            if any(x != int(x) or not info.min <= x <= info.max for x in v):
                raise BadInput(
                    f"vector {i} is not {dtype}: values must be integers {info.min}..{info.max}"
                )
        q = np.asarray(body.vectors, dtype=np.int64)
        return dequantize(q, dtype, dim, self.checkpoint.calibration)

    @staticmethod
    def at_dim(raw: np.ndarray, dim: int) -> np.ndarray:
        return truncate_normalize_np(raw, dim)
