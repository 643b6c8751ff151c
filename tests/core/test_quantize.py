"""Output types' byte layouts, read back by an independent reader written here from the
documented layout (numpy bit and integer operations, not core.quantize's decoders)."""

from __future__ import annotations

import numpy as np
import pytest

from core.nesting import truncate_normalize_np
from core.quantize import (
    OUTPUT_DTYPES,
    Calibration,
    bytes_per_vector,
    decoded,
    dequantize,
    fit_calibration,
    quantize,
)

DIMS = [8, 12, 32]


@pytest.fixture(scope="module")
def raw():
    rng = np.random.default_rng(0)
    return (rng.standard_normal((50, 32)) / np.sqrt(1 + np.arange(32))).astype(np.float32)


@pytest.fixture(scope="module")
def calibration(raw):
    return fit_calibration(raw, DIMS)


def sign_bits_by_hand(v: np.ndarray) -> np.ndarray:
    """The documented layout, one bit at a time: value j is bit 7 - j % 8 of byte j // 8."""
    n, d = v.shape
    out = np.zeros((n, -(-d // 8)), dtype=np.uint8)
    for i in range(n):
        for j in range(d):
            if v[i, j] > 0:
                out[i, j // 8] |= 1 << (7 - j % 8)
    return out


@pytest.mark.parametrize("dim", DIMS)
def test_ubinary_and_binary_are_the_packed_sign_bits(raw, dim):
    v = truncate_normalize_np(raw, dim)
    expected = sign_bits_by_hand(v)
    ub = quantize(v, "ubinary")
    assert ub.dtype == np.uint8 and ub.shape == (50, -(-dim // 8))
    assert np.array_equal(ub, expected)
    b = quantize(v, "binary")
    assert b.dtype == np.int8
    assert np.array_equal(b.view(np.uint8), (expected.astype(int) - 128).astype(np.int8).view("u1"))
    assert np.array_equal(b.astype(int) + 128, expected.astype(int))
    if dim % 8:  # the unused low bits of the last byte are zero
        assert not (ub[:, -1] & ((1 << (8 - dim % 8)) - 1)).any()


@pytest.mark.parametrize("dim", DIMS)
def test_uint8_and_int8_follow_the_calibrated_grid(raw, calibration, dim):
    v = truncate_normalize_np(raw, dim)
    row = DIMS.index(dim)
    low, high = calibration.low[row, :dim], calibration.high[row, :dim]
    assert np.allclose(low, v.min(0)) and np.allclose(high, v.max(0))
    step = (high - low) / 255
    by_hand = np.clip(np.rint((v - low) / step), 0, 255)
    u = quantize(v, "uint8", calibration)
    i = quantize(v, "int8", calibration)
    assert u.dtype == np.uint8 and i.dtype == np.int8 and u.shape == (50, dim)
    assert np.array_equal(u.astype(int), by_hand.astype(int))
    assert np.array_equal(i.astype(int), by_hand.astype(int) - 128)
    assert u.min() == 0 and u.max() == 255  # the calibration set spans the grid
    # decoding the grid gives the vector back within half a step per coordinate
    assert np.all(np.abs(low + u * step - v) <= step / 2 + 1e-6)
    # values outside the calibrated range clip to the ends
    far = np.full((1, dim), 10.0, dtype=np.float32)
    assert (quantize(far, "uint8", calibration) == 255).all()


def test_float_types_are_little_endian_ieee(raw):
    v = truncate_normalize_np(raw, 16)
    f = quantize(v, "float")
    h = quantize(v, "float16")
    assert np.array_equal(np.frombuffer(f.tobytes(), dtype="<f4").reshape(v.shape), v)
    back = np.frombuffer(h.tobytes(), dtype="<f2").reshape(v.shape).astype(np.float32)
    assert np.abs(back - v).max() < 1e-3


@pytest.mark.parametrize("dtype", OUTPUT_DTYPES)
def test_bytes_per_vector_matches_the_arrays(raw, calibration, dtype):
    for dim in DIMS:
        q = quantize(truncate_normalize_np(raw, dim), dtype, calibration)
        assert q[0].nbytes == bytes_per_vector(dim, dtype)


def test_decoded_keeps_the_similarity_each_type_promises(raw, calibration):
    dim = 32
    v = truncate_normalize_np(raw, dim)
    signs = decoded(raw, dim, "binary")
    assert set(np.unique(signs)) == {-1.0, 1.0}
    hamming = (sign_bits_by_hand(v[:1]) ^ sign_bits_by_hand(v[1:2])).astype(np.uint8)
    ones = int(np.unpackbits(hamming).sum())
    assert signs[0] @ signs[1] == dim - 2 * ones
    assert np.array_equal(decoded(raw, dim, "ubinary"), signs)
    q = decoded(raw, dim, "int8", calibration)
    assert np.array_equal(q, decoded(raw, dim, "uint8", calibration))
    assert np.abs(q - v).max() < np.max(calibration.high - calibration.low) / 255


def test_calibration_refuses_what_it_cannot_hold(raw, calibration):
    with pytest.raises(ValueError, match="no int8 calibration at dim 16"):
        calibration.grid(16)
    with pytest.raises(ValueError, match="expected"):
        Calibration((8, 16), np.zeros((2, 8), np.float32), np.zeros((2, 16), np.float32))
    with pytest.raises(ValueError, match="needs a calibration"):
        quantize(truncate_normalize_np(raw, 8), "int8")
    with pytest.raises(ValueError, match="allowed: float, float16"):
        dequantize(np.zeros((1, 8)), "int4", 8)
