"""The shared preprocessing: bounded work for any accepted image, unchanged output otherwise."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as F

from core import preprocess
from core.preprocess import MAX_ASPECT, EvalPreprocess, resize_center_crop


def reference(image: Image.Image, size: int) -> torch.Tensor:
    """What the preprocessing did before the window: resize the whole image, then crop."""
    t = F.resize(F.pil_to_tensor(image), [size], antialias=True)
    return F.center_crop(t, [size, size])


def photo(w: int, h: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


@pytest.mark.parametrize(("w", "h"), [(32, 32), (640, 480), (300, 1200), (97, 31), (50, 200)])
def test_images_within_4_to_1_are_preprocessed_exactly_as_before(w, h):
    image = photo(w, h, seed=w * h)
    for size in (32, 37, 224):
        assert torch.equal(resize_center_crop(image, size), reference(image, size))


@pytest.mark.parametrize(("w", "h"), [(200_000, 1), (1, 200_000), (9_000, 40), (3, 5_000)])
def test_the_work_per_image_is_bounded_however_long_the_strip(monkeypatch, w, h):
    sizes = []
    resize = F.resize

    def spy(t, *args, **kwargs):
        out = resize(t, *args, **kwargs)
        sizes.append(out.numel())
        return out

    monkeypatch.setattr(preprocess.F, "resize", spy)
    out = EvalPreprocess(32, (0.5,) * 3, (0.5,) * 3).uint8(photo(w, h, seed=1))
    assert out.shape == (3, 32, 32)
    assert max(sizes) <= 3 * MAX_ASPECT * 32 * 32  # today's main: 3 x 32 x 6,400,000


def test_a_long_strip_keeps_its_centre():
    """Beyond 4:1 only the central 4:1 window is resized: the crop it keeps is the centre."""
    strip = np.zeros((10, 10_000, 3), np.uint8)
    strip[:, 4_995:5_005] = 255  # a bright square in the middle
    out = resize_center_crop(Image.fromarray(strip), 32).float()
    assert out.mean() > 200  # the centre square fills the crop
