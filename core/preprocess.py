"""Image decoding and the ONE deterministic preprocessing used by evaluation and serving.

Training decodes with the same `decode_rgb` + `resize_center_crop`, so a served embedding of
an image equals the evaluator's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as F

from core.device import constant

if TYPE_CHECKING:
    from core.config import ModelConfig

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def stored_size(image_size: int) -> int:
    """Side of the decoded square image: the crop size for small images, +14% for large ones."""
    return image_size if image_size <= 64 else round(image_size * 256 / 224)


# The centre crop keeps a square, so of an image longer than MAX_ASPECT x its short side only
# the central MAX_ASPECT:1 window is resized: the work per image is then bounded by the pixels
# decoded plus 3 x MAX_ASPECT x size^2 resized values, however long the strip (a 500,000 x 1
# PNG no longer becomes a 16,000,000 x 32 tensor first). Images within 4:1 are untouched.
MAX_ASPECT = 4


def central_window(width: int, height: int) -> tuple[int, int, int, int] | None:
    """The (left, top, right, bottom) box of the central MAX_ASPECT:1 window, or None when the
    image is no longer than that (it is used whole)."""
    short = min(width, height)
    if max(width, height) <= MAX_ASPECT * short:
        return None
    span = MAX_ASPECT * short
    if width > height:
        left = (width - span) // 2
        return left, 0, left + span, height
    top = (height - span) // 2
    return 0, top, width, top + span


HIGH_DEPTH = ("I;16", "I;16B", "I;16L", "I", "F")


def decode_rgb(image: Image.Image | np.ndarray | dict) -> Image.Image:
    """Any PIL mode (L, LA, P, RGBA, CMYK, I;16...) or array -> 3-channel RGB, of the central
    window only (central_window): every caller centre-crops next, and converting a whole
    1 x 16,777,216 RGBA strip first took 961 MB. Conversions are per pixel (16-bit and float
    images are rescaled by the whole image's range), so the kept pixels are unchanged."""
    if isinstance(image, dict) and image.get("bytes") is not None:
        import io

        image = Image.open(io.BytesIO(image["bytes"]))
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    box = central_window(*image.size)
    if image.mode in HIGH_DEPTH:
        image = rescale_to_8bit(image, box)
    elif box is not None:
        image = image.crop(box)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB")


def rescale_to_8bit(image: Image.Image, box: tuple[int, int, int, int] | None) -> Image.Image:
    """The pixels of `box` (None: all) of a 16-bit / int / float image as 8-bit L, stretched
    over the whole image's range (getextrema reads it without a float copy of every pixel)."""
    low, high = image.getextrema()
    arr = np.asarray(image if box is None else image.crop(box), dtype=np.float64)
    span = max(float(high - low), 1e-9)
    return Image.fromarray(((arr - low) / span * 255).astype(np.uint8))


def resize_center_crop(image: Image.Image, size: int) -> torch.Tensor:
    """RGB PIL image -> uint8 tensor [3, size, size]: shorter side to `size`, centre crop."""
    box = central_window(*image.size)
    t = F.pil_to_tensor(image if box is None else image.crop(box))
    if min(t.shape[-2:]) != size:  # both calls return their input at the right size already
        t = F.resize(t, [size], antialias=True)
    return center_crop(t, size)


def center_crop(t: torch.Tensor, size: int) -> torch.Tensor:
    return t if t.shape[-2:] == (size, size) else F.center_crop(t, [size, size])


def normalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 or [0,1] float images [..., 3, H, W] -> normalised float."""
    if x.dtype == torch.uint8:
        x = x.float().div_(255)
    m = constant(list(mean), x.device, x.dtype).view(3, 1, 1)
    s = constant(list(std), x.device, x.dtype).view(3, 1, 1)
    return (x - m) / s


class EvalPreprocess:
    """Deterministic: decode to RGB, resize, centre crop, normalise with the checkpoint's stats."""

    def __init__(self, image_size: int, mean: Sequence[float], std: Sequence[float]):
        self.image_size = image_size
        self.mean, self.std = tuple(mean), tuple(std)

    @classmethod
    def of(cls, model: ModelConfig) -> EvalPreprocess:
        """The preprocessing a checkpoint's model was trained for."""
        return cls(model.image_size, model.mean, model.std)

    def uint8(self, image: Image.Image | np.ndarray | dict) -> torch.Tensor:
        t = resize_center_crop(decode_rgb(image), stored_size(self.image_size))
        return center_crop(t, self.image_size)

    def __call__(self, image: Image.Image | np.ndarray | dict) -> torch.Tensor:
        return normalize(self.uint8(image), self.mean, self.std)
