"""The built-in `shapes` dataset: full-frame patterns that survive MoCo's random crops.

Small shapes on a background do not train (a 20% crop often shows only background; see
docs/CALIBRATION.md), so every class here is a texture that fills the frame: a crop of any part
still shows the class. Colours, frequency, phase, centre and orientation are random, so raw
pixels are a poor feature and a learned invariance helps.
"""

from __future__ import annotations

import numpy as np

CLASSES = (
    "stripes-0",
    "stripes-45",
    "stripes-90",
    "stripes-135",
    "checkerboard",
    "dots",
    "rings",
    "spokes",
    "blobs",
    "noise",
)


def _stripes(rng, xx, yy, angle_deg):
    theta = np.deg2rad(angle_deg + rng.uniform(-12, 12))
    period = rng.uniform(4, 10)
    u = xx * np.cos(theta) + yy * np.sin(theta)
    return 0.5 + 0.5 * np.sin(2 * np.pi * u / period + rng.uniform(0, 2 * np.pi))


def _checkerboard(rng, xx, yy):
    period = rng.uniform(5, 12)
    theta = np.deg2rad(rng.uniform(0, 90))
    u = xx * np.cos(theta) + yy * np.sin(theta) + rng.uniform(0, period)
    v = -xx * np.sin(theta) + yy * np.cos(theta) + rng.uniform(0, period)
    return ((np.floor(u / period) + np.floor(v / period)) % 2).astype(np.float32)


def _dots(rng, xx, yy):
    period = rng.uniform(5, 10)
    radius = period * rng.uniform(0.18, 0.32)
    du = (xx + rng.uniform(0, period)) % period - period / 2
    dv = (yy + rng.uniform(0, period)) % period - period / 2
    return (np.hypot(du, dv) < radius).astype(np.float32)


def _centre(rng, size):
    return rng.uniform(-0.5, 1.5, size=2) * size


def _rings(rng, xx, yy, size):
    cx, cy = _centre(rng, size)
    period = rng.uniform(4, 9)
    r = np.hypot(xx - cx, yy - cy)
    return 0.5 + 0.5 * np.sin(2 * np.pi * r / period + rng.uniform(0, 2 * np.pi))


def _spokes(rng, xx, yy, size):
    cx, cy = rng.uniform(0.2, 0.8, size=2) * size
    n = rng.integers(5, 12)
    a = np.arctan2(yy - cy, xx - cx)
    return 0.5 + 0.5 * np.sin(n * a + rng.uniform(0, 2 * np.pi))


def _smooth_field(rng, size, cells):
    coarse = rng.standard_normal((cells, cells))
    idx = np.linspace(0, cells - 1, size)
    i0 = np.floor(idx).astype(int)
    i1 = np.minimum(i0 + 1, cells - 1)
    f = idx - i0
    rows = coarse[i0] * (1 - f)[:, None] + coarse[i1] * f[:, None]
    return rows[:, i0] * (1 - f)[None, :] + rows[:, i1] * f[None, :]


def _blobs(rng, size):
    field = _smooth_field(rng, size, int(rng.integers(3, 6)))
    return (field > np.median(field)).astype(np.float32)


def _noise(rng, size):
    return rng.uniform(0, 1, (size, size)) ** rng.uniform(0.5, 2.0)


def _pattern(rng, label, size, xx, yy):
    name = CLASSES[label]
    if name.startswith("stripes-"):
        return _stripes(rng, xx, yy, float(name.split("-")[1]))
    return {
        "checkerboard": lambda: _checkerboard(rng, xx, yy),
        "dots": lambda: _dots(rng, xx, yy),
        "rings": lambda: _rings(rng, xx, yy, size),
        "spokes": lambda: _spokes(rng, xx, yy, size),
        "blobs": lambda: _blobs(rng, size),
        "noise": lambda: _noise(rng, size),
    }[name]()


def render(rng: np.random.Generator, label: int, size: int) -> np.ndarray:
    """One HxWx3 uint8 image of class `label`: a pattern blended between two random colours."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    p = np.clip(_pattern(rng, label, size, xx, yy), 0, 1)[..., None]
    bg, fg = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    while np.abs(fg - bg).sum() < 150:
        fg = rng.uniform(0, 255, 3)
    img = bg * (1 - p) + fg * p + rng.normal(0, 6, (size, size, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def generate(n: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`n` images (balanced classes, shuffled) and labels; the same seed gives the same data."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % len(CLASSES)
    rng.shuffle(labels)
    images = np.stack([render(rng, int(y), size) for y in labels])
    return images, labels.astype(np.int64)
