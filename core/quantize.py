"""Compressed embeddings: the output types hosted embedding APIs return, at any nesting dim.

Truncation first, then quantisation: a vector at dim d is `truncate_normalize(raw, d)` (unit
L2 norm), then one of

- `float`   float32, 4 bytes per value
- `float16` IEEE half, 2 bytes per value
- `uint8`   per coordinate, q = round((v - low[d][j]) / step[d][j]) clipped to 0..255, with
            step = (high - low) / 255: `low`/`high` are the min and max of that coordinate at
            that dim over the train split, calibrated when training finishes (`Calibration`)
- `int8`    the same grid offset by -128 (q - 128), as sentence-transformers / Cohere
- `ubinary` the sign bits (v > 0 -> 1) packed 8 per byte, most significant bit first: value j
            is bit 7 - j % 8 of byte j // 8 (numpy `packbits`, bitorder big); ceil(d / 8)
            bytes, the unused low bits of the last byte are 0
- `binary`  the same bytes as int8, offset by -128 (ubinary - 128), as Cohere and Voyage

Readers decode with numpy only: `np.unpackbits(u8)[:d]` for the bits; `low + q * step` for
uint8 (`q + 128` for int8). `decoded` gives the float vectors whose cosine each type keeps,
so evaluation scores every (dim, dtype) pair with the same search as float.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np

from core.nesting import truncate_normalize_np

OutputDtype = Literal["float", "float16", "int8", "uint8", "binary", "ubinary"]
OUTPUT_DTYPES: tuple[str, ...] = get_args(OutputDtype)
NUMPY = {
    "float": np.dtype("<f4"),
    "float16": np.dtype("<f2"),
    "int8": np.dtype("i1"),
    "uint8": np.dtype("u1"),
    "binary": np.dtype("i1"),
    "ubinary": np.dtype("u1"),
}
CALIBRATED = ("int8", "uint8")
PACKED = ("binary", "ubinary")
LEVELS = 255


def values_per_vector(dim: int, dtype: str) -> int:
    """Numbers (or bytes, for the packed types) one vector at `dim` holds."""
    return math.ceil(dim / 8) if dtype in PACKED else dim


def bytes_per_vector(dim: int, dtype: str) -> int:
    return values_per_vector(dim, dtype) * NUMPY[dtype].itemsize


@dataclass(frozen=True, eq=False)
class Calibration:
    """Per nesting dim d, the min (`low[i, :d]`) and max (`high[i, :d]`) of each coordinate of
    the train embeddings truncated to d and L2-normalised: the int8/uint8 grid at that dim.

    Fitted when training finishes, like the served rotation (on the rotated embeddings), and
    stored with the model (checkpoint and export); entries past d in row i are 0."""

    dims: tuple[int, ...]
    low: np.ndarray  # [len(dims), D] float32
    high: np.ndarray

    def __post_init__(self):
        shape = (len(self.dims), self.dims[-1] if self.dims else 0)
        for name in ("low", "high"):
            value = getattr(self, name)
            if not isinstance(value, np.ndarray) or value.shape != shape:
                got = getattr(value, "shape", type(value).__name__)
                raise ValueError(f"calibration {name} is {got}, expected {shape}")
            if not np.isfinite(value).all():
                raise ValueError(f"calibration {name} holds NaN or inf")

    def grid(self, dim: int) -> tuple[np.ndarray, np.ndarray]:
        """(low, step) of length `dim`; a coordinate that never varied gets step 1."""
        if dim not in self.dims:
            raise ValueError(f"no int8 calibration at dim {dim}; calibrated dims: {self.dims}")
        row = self.dims.index(dim)
        low, high = self.low[row, :dim], self.high[row, :dim]
        step = (high - low) / LEVELS
        return low, np.where(step > 0, step, 1.0).astype(np.float32)

    def as_arrays(self) -> dict[str, np.ndarray]:
        return {"dims": np.asarray(self.dims, dtype=np.int64), "low": self.low, "high": self.high}

    @classmethod
    def from_arrays(cls, dims, low, high) -> Calibration:
        return cls(
            tuple(int(d) for d in np.asarray(dims).tolist()),
            np.asarray(low, dtype=np.float32),
            np.asarray(high, dtype=np.float32),
        )


def fit_calibration(x: np.ndarray, dims: list[int]) -> Calibration:
    """Per-coordinate ranges of `x` (raw served embeddings [N, D]) at every dim in `dims`."""
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(f"need at least 2 embeddings [N, D] to calibrate, got {x.shape}")
    low = np.zeros((len(dims), dims[-1]), dtype=np.float32)
    high = np.zeros_like(low)
    for i, d in enumerate(dims):
        v = truncate_normalize_np(x, d)
        low[i, :d], high[i, :d] = v.min(0), v.max(0)
    return Calibration(tuple(dims), low, high)


def quantize(v: np.ndarray, dtype: str, calibration: Calibration | None = None) -> np.ndarray:
    """Unit-norm vectors [n, d] at a nesting dim -> the output type's array (module docstring).

    The array's bytes, row by row, are the wire layout (little-endian for float16/float)."""
    if dtype == "float":
        return np.ascontiguousarray(v, dtype=NUMPY["float"])
    if dtype == "float16":
        return np.ascontiguousarray(v, dtype=NUMPY["float16"])
    if dtype in PACKED:
        packed = np.packbits(v > 0, axis=-1)
        return packed if dtype == "ubinary" else (packed.astype(np.int16) - 128).astype(np.int8)
    if dtype in CALIBRATED:
        if calibration is None:
            raise ValueError(f"{dtype} needs a calibration")
        low, step = calibration.grid(v.shape[-1])
        q = np.clip(np.rint((v - low) / step), 0, LEVELS).astype(np.uint8)
        return q if dtype == "uint8" else (q.astype(np.int16) - 128).astype(np.int8)
    raise ValueError(f"unknown output dtype {dtype!r}; allowed: {', '.join(OUTPUT_DTYPES)}")


def dequantize(
    q: np.ndarray, dtype: str, dim: int, calibration: Calibration | None = None
) -> np.ndarray:
    """The output type's values [n, values_per_vector] -> float32 [n, dim] (not normalised):
    sign vectors of +-1 for the packed types, the grid's values for int8/uint8."""
    q = np.asarray(q)
    if dtype in ("float", "float16"):
        return np.asarray(q, dtype=np.float32)
    if dtype in PACKED:
        u8 = q.astype(np.int16) + (128 if dtype == "binary" else 0)
        bits = np.unpackbits(u8.astype(np.uint8), axis=-1)[..., :dim]
        return bits.astype(np.float32) * 2 - 1
    if dtype in CALIBRATED:
        if calibration is None:
            raise ValueError(f"{dtype} needs a calibration")
        low, step = calibration.grid(dim)
        u8 = q.astype(np.int16) + (128 if dtype == "int8" else 0)
        return (low + u8.astype(np.float32) * step).astype(np.float32)
    raise ValueError(f"unknown output dtype {dtype!r}; allowed: {', '.join(OUTPUT_DTYPES)}")


def decoded(
    raw: np.ndarray, dim: int, dtype: str, calibration: Calibration | None = None
) -> np.ndarray:
    """Raw embeddings -> what a client holding `dtype` at `dim` compares, as float32 [n, dim]
    (cosine of these = the similarity that type keeps; Hamming distance for the packed ones)."""
    v = truncate_normalize_np(raw, dim)
    return dequantize(quantize(v, dtype, calibration), dtype, dim, calibration)
