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


def strip(w: int, h: int, mode: str) -> Image.Image:
    """A strip in one of the modes decode_rgb converts (alpha, palette, 16-bit, float)."""
    ramp = (np.arange(w * h) % 251).reshape(h, w)
    if mode == "I;16":
        return Image.fromarray((ramp * 257 + 3).astype(np.uint16))
    if mode == "F":
        return Image.fromarray((ramp / 7 - 2).astype(np.float32))
    if mode == "P":
        image = Image.fromarray(ramp.astype(np.uint8), "L").convert("P")
        image.info["transparency"] = 0
        return image
    channels = {"RGBA": 4, "LA": 2, "CMYK": 4}[mode]
    return Image.fromarray(np.repeat(ramp[..., None], channels, 2).astype(np.uint8), mode)


def whole_then_window(image: Image.Image, size: int) -> torch.Tensor:
    """What the preprocessing did before the conversion was windowed: convert every pixel
    (main's decode_rgb at e8894b4), then resize the window."""
    if image.mode in ("I;16", "F"):
        arr = np.asarray(image, dtype=np.float64)
        span = max(float(arr.max() - arr.min()), 1e-9)
        image = Image.fromarray(((arr - arr.min()) / span * 255).astype(np.uint8))
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba)
    return resize_center_crop(image.convert("RGB"), size)


MODES = ["RGBA", "LA", "P", "I;16", "F", "CMYK"]


@pytest.mark.parametrize("mode", MODES)
def test_only_the_kept_window_is_converted_whatever_the_mode(monkeypatch, mode):
    """A 1 x N RGBA strip was converted whole (884 MB at N = 16,777,216) before the crop."""
    seen = []
    convert, fromarray, composite = Image.Image.convert, Image.fromarray, Image.alpha_composite

    def spy_convert(self, *args, **kwargs):
        seen.append(self.size[0] * self.size[1])
        return convert(self, *args, **kwargs)

    def spy_fromarray(*args, **kwargs):
        out = fromarray(*args, **kwargs)
        seen.append(out.size[0] * out.size[1])
        return out

    def spy_composite(a, b):
        seen.append(a.size[0] * a.size[1])
        return composite(a, b)

    image = strip(1, 100_000, mode)
    monkeypatch.setattr(Image.Image, "convert", spy_convert)
    monkeypatch.setattr(Image, "fromarray", spy_fromarray)
    monkeypatch.setattr(Image, "alpha_composite", spy_composite)
    out = EvalPreprocess(32, (0.5,) * 3, (0.5,) * 3).uint8(image)
    assert out.shape == (3, 32, 32)
    assert max(seen) <= MAX_ASPECT  # the central 1 x 4 window; today's main: 100,000


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(("w", "h"), [(50, 40), (40, 3_000), (9_000, 7)])
def test_windowed_conversion_gives_the_same_pixels_in_every_mode(mode, w, h):
    """Conversions are per pixel (16-bit and float rescale by the WHOLE image's range), so
    converting the window alone changes nothing."""
    image = strip(w, h, mode)
    expected = whole_then_window(image, 32)
    assert torch.equal(resize_center_crop(preprocess.decode_rgb(image), 32), expected)
