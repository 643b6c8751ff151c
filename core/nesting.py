"""Matryoshka nesting dims and the one truncate-and-normalise used everywhere."""

from __future__ import annotations

import itertools

import numpy as np
import torch

from core.cli import UsageError


def parse_nesting_list(value: str | list[int] | tuple[int, ...]) -> list[int]:
    """Parse '8,16,32' (or a list) and check it is a strictly ascending list of positive ints."""
    if isinstance(value, str):
        try:
            dims = [int(v) for v in value.replace(" ", "").split(",") if v]
        except ValueError:
            raise UsageError(
                f"--nesting-list must be comma-separated integers like 8,16,32, got {value!r}"
            ) from None
    else:
        dims = [int(v) for v in value]
    if not dims:
        raise UsageError("--nesting-list is empty; give at least one dim, e.g. 8,16,32,64")
    if any(d <= 0 for d in dims):
        raise UsageError(f"--nesting-list dims must be positive, got {dims}")
    if any(b <= a for a, b in itertools.pairwise(dims)):
        raise UsageError(f"--nesting-list must be strictly ascending, got {dims}")
    return dims


def default_dims(width: int) -> list[int]:
    """Powers of two from 8 below the embedding width, plus the width itself."""
    dims = []
    d = 8
    while d < width:
        dims.append(d)
        d *= 2
    dims.append(width)
    return dims


def truncate_normalize(x: torch.Tensor, dim: int) -> torch.Tensor:
    """First `dim` coordinates, L2-normalised: a valid Matryoshka embedding at that dim."""
    return torch.nn.functional.normalize(x[..., :dim].float(), dim=-1)


def truncate_normalize_np(x: np.ndarray, dim: int) -> np.ndarray:
    """NumPy twin of truncate_normalize (float32, contiguous, ready for FAISS)."""
    v = np.ascontiguousarray(x[..., :dim], dtype=np.float32)
    with np.errstate(over="ignore", under="ignore"):
        norms = np.linalg.norm(v, axis=-1, keepdims=True)
    # float32 squares overflow above ~1e19 and underflow below ~1e-19: such rows (huge
    # values, denormals) are normalised in float64, where neither happens.
    unsafe = ~((norms > 1e-18) & (norms < 1e18))[..., 0]
    w = v[unsafe].astype(np.float64) if unsafe.any() else None
    # v is a fresh copy unless x was contiguous float32 (then a view of it): divide in
    # place only into a copy, never into the caller's array
    copy = not np.may_share_memory(v, x)
    out = np.divide(v, np.maximum(norms, 1e-12), out=v if copy else None)
    if w is not None:
        out[unsafe] = w / np.maximum(np.linalg.norm(w, axis=-1, keepdims=True), 1e-300)
    return np.ascontiguousarray(out, dtype=np.float32)
