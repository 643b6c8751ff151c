"""MoCo v2 two-crop augmentation, in two shapes with the same parameters.

- `TwoCropTransform`: per-sample torchvision v2 transforms, for DataLoader workers on CPU.
- `BatchTwoCrop`: the same recipe on a batch of uint8 tensors, on any device. It feeds a GPU
  (a CPU pipeline cannot) and gives the small CPU default enough steps per minute.

Both draw each sample's random parameters from a seed made of (run seed, epoch, sample index,
view), so a sample is augmented the same way whatever the batch, worker or rank: resuming and
1-vs-N-process runs see identical crops.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torchvision.transforms import v2

from core.device import constant, to_device
from core.preprocess import normalize


@dataclass(frozen=True)
class AugmentParams:
    """MoCo v2 recipe; blur only where the image is large enough for it to mean something."""

    image_size: int
    scale: tuple[float, float] = (0.2, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    jitter_p: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.1
    gray_p: float = 0.2
    flip_p: float = 0.5

    @property
    def blur_p(self) -> float:
        return 0.5 if self.image_size >= 64 else 0.0

    @property
    def blur_sigma(self) -> tuple[float, float]:
        s = self.image_size / 224
        return (0.1 * s, 2.0 * s)

    @property
    def blur_kernel(self) -> int:
        return max(3, int(0.1 * self.image_size) // 2 * 2 + 1)


def sample_seed(seed: int, epoch: int, index: int, view: int) -> int:
    return (((seed * 1_000_003 + epoch) * 10_000_019 + index) * 4 + view) % (2**63 - 1)


class TwoCropTransform:
    """Per-sample v2 pipeline: PIL/uint8 image -> (query view, key view), normalised floats."""

    def __init__(self, params: AugmentParams, mean: Sequence[float], std: Sequence[float]):
        p = params
        steps = [
            v2.RandomResizedCrop(p.image_size, scale=p.scale, ratio=p.ratio, antialias=True),
            v2.RandomApply(
                [v2.ColorJitter(p.brightness, p.contrast, p.saturation, p.hue)], p.jitter_p
            ),
            v2.RandomGrayscale(p.gray_p),
        ]
        if p.blur_p > 0:
            steps.append(v2.RandomApply([v2.GaussianBlur(p.blur_kernel, p.blur_sigma)], p.blur_p))
        steps += [
            v2.RandomHorizontalFlip(p.flip_p),
            v2.ToImage(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(list(mean), list(std)),
        ]
        self.transform = v2.Compose(steps)

    def __call__(self, image, seed: int, epoch: int, index: int):
        views = []
        for view in (0, 1):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(sample_seed(seed, epoch, index, view))
                views.append(self.transform(image))
        return views[0], views[1]


_N_UNIFORMS = 16


def _uniforms(seed: int, epoch: int, indices: torch.Tensor, view: int) -> torch.Tensor:
    rows = []
    g = torch.Generator()
    for i in indices.tolist():
        g.manual_seed(sample_seed(seed, epoch, int(i), view))
        rows.append(torch.rand(_N_UNIFORMS, generator=g))
    return torch.stack(rows)


_GRAY = [0.299, 0.587, 0.114]
_TO_YIQ = torch.tensor([_GRAY, [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
# inverted once on the host: torch.linalg.inv on CUDA checks for errors with a host sync
_FROM_YIQ = torch.linalg.inv(_TO_YIQ)


def _gray(x: torch.Tensor) -> torch.Tensor:
    w = constant(_GRAY, x.device, x.dtype).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True)


def _blend(a: torch.Tensor, b: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return (factor.view(-1, 1, 1, 1) * a + (1 - factor.view(-1, 1, 1, 1)) * b).clamp_(0, 1)


def _rotate_hue(x: torch.Tensor, turns: torch.Tensor) -> torch.Tensor:
    """Hue shift as a rotation of the chroma plane in YIQ space (linear, batched)."""
    to_yiq = constant(_TO_YIQ.tolist(), x.device, x.dtype)
    from_yiq = constant(_FROM_YIQ.tolist(), x.device, x.dtype)
    a = 2 * math.pi * turns
    cos, sin = torch.cos(a), torch.sin(a)
    rot = torch.zeros(len(x), 3, 3, device=x.device, dtype=x.dtype)
    rot[:, 0, 0] = 1
    rot[:, 1, 1], rot[:, 1, 2], rot[:, 2, 1], rot[:, 2, 2] = cos, -sin, sin, cos
    m = from_yiq @ rot @ to_yiq
    return torch.einsum("nij,njhw->nihw", m, x).clamp_(0, 1)


def _gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, kernel: int) -> torch.Tensor:
    n, c, h, w = x.shape
    r = torch.arange(kernel, device=x.device, dtype=x.dtype) - kernel // 2
    k = torch.exp(-(r[None, :] ** 2) / (2 * sigma[:, None] ** 2))
    k = (k / k.sum(1, keepdim=True)).repeat_interleave(c, 0)
    y = x.reshape(1, n * c, h, w)
    y = F.conv2d(
        F.pad(y, (kernel // 2,) * 4, mode="reflect"), k.view(n * c, 1, 1, kernel), groups=n * c
    )
    y = F.conv2d(y, k.view(n * c, 1, kernel, 1), groups=n * c)
    return y.view(n, c, h, w)


class BatchTwoCrop:
    """Batched MoCo v2 augmentation of uint8 images [N, 3, S, S] on their own device."""

    def __init__(self, params: AugmentParams, mean: Sequence[float], std: Sequence[float]):
        self.p = params
        self.mean, self.std = tuple(mean), tuple(std)

    def __call__(self, images: torch.Tensor, indices: torch.Tensor, seed: int, epoch: int):
        return tuple(self.view(images, indices, seed, epoch, v) for v in (0, 1))

    def view(self, images: torch.Tensor, indices: torch.Tensor, seed: int, epoch: int, view: int):
        p = self.p
        u = to_device(_uniforms(seed, epoch, indices, view), images.device)
        x = images.float().div_(255)
        x = self._resized_crop(x, u)
        jitter = u[:, 4] < p.jitter_p
        ones = torch.ones_like(u[:, 0])

        def factor(col: int, amount: float) -> torch.Tensor:
            return torch.where(jitter, 1 - amount + 2 * amount * u[:, col], ones)

        x = (x * factor(5, p.brightness).view(-1, 1, 1, 1)).clamp_(0, 1)
        mean_gray = _gray(x).mean((2, 3), keepdim=True)
        x = _blend(x, mean_gray.expand_as(x), factor(6, p.contrast))
        x = _blend(x, _gray(x).expand_as(x), factor(7, p.saturation))
        hue = torch.where(jitter, (2 * u[:, 8] - 1) * p.hue, torch.zeros_like(u[:, 8]))
        x = _rotate_hue(x, hue)
        gray = (u[:, 9] < p.gray_p).view(-1, 1, 1, 1)
        x = torch.where(gray, _gray(x).expand_as(x), x)
        if p.blur_p > 0:
            lo, hi = p.blur_sigma
            sigma = lo + (hi - lo) * u[:, 11]
            blurred = _gaussian_blur(x, sigma, p.blur_kernel)
            x = torch.where((u[:, 10] < p.blur_p).view(-1, 1, 1, 1), blurred, x)
        return normalize(x, self.mean, self.std)

    def _resized_crop(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """Random resized crop + horizontal flip as one affine resampling per sample."""
        p = self.p
        area = p.scale[0] + (p.scale[1] - p.scale[0]) * u[:, 0]
        log_r = math.log(p.ratio[0]) + (math.log(p.ratio[1]) - math.log(p.ratio[0])) * u[:, 1]
        ratio = torch.exp(log_r)
        w = torch.sqrt(area * ratio).clamp(max=1.0)
        h = torch.sqrt(area / ratio).clamp(max=1.0)
        cx = (1 - w) * (2 * u[:, 2] - 1)
        cy = (1 - h) * (2 * u[:, 3] - 1)
        flip = torch.where(u[:, 12] < p.flip_p, -1.0, 1.0).to(x.dtype)
        theta = torch.zeros(len(x), 2, 3, device=x.device, dtype=x.dtype)
        theta[:, 0, 0], theta[:, 0, 2] = w * flip, cx
        theta[:, 1, 1], theta[:, 1, 2] = h, cy
        size = (len(x), x.shape[1], p.image_size, p.image_size)
        grid = F.affine_grid(theta, size, align_corners=False)
        return F.grid_sample(
            x, grid, mode="bilinear", padding_mode="reflection", align_corners=False
        )
