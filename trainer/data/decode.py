"""Decode stage on the device: JPEG bytes -> uint8 [N, 3, S, S] in batches (nvjpeg on a GPU).

A CPU decoder cannot feed a GPU step (measured on one H200: PIL decodes a 500x375 JPEG at
~805 img/s per core, nvjpeg ~32,400 img/s in batches). So for datasets whose images are JPEG
bytes, DataLoader workers only read the bytes and the training device decodes them. The
result is `preprocess.resize_center_crop` of the same image (shorter side to S, centre crop):
on the CPU, torchvision's libjpeg-turbo equals PIL's exactly; nvjpeg and the GPU resize may
differ from PIL by a few levels (docs/GPU.md). Any other format, and any JPEG the device
decoder refuses (CMYK on some nvjpeg builds), is decoded by PIL.
"""

from __future__ import annotations

import io
from collections import defaultdict
from dataclasses import dataclass

import torch
from PIL import Image
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms.v2 import functional as F

from core.device import to_device
from core.preprocess import central_window, decode_rgb, resize_center_crop

JPEG_MAGIC = b"\xff\xd8\xff"


def is_jpeg(data: bytes) -> bool:
    return data[:3] == JPEG_MAGIC


def as_byte_tensor(data: bytes) -> torch.Tensor:
    """Encoded bytes as the 1-D uint8 tensor `decode_jpeg` takes (a copy: workers reuse buffers)."""
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def pil_decode(data: bytes, size: int) -> torch.Tensor:
    """The CPU path for one encoded image: exactly what the PIL pipeline produces."""
    return resize_center_crop(decode_rgb(Image.open(io.BytesIO(data))), size)


def _resize_crop(images: torch.Tensor, size: int) -> torch.Tensor:
    box = central_window(images.shape[-1], images.shape[-2])
    if box is not None:  # the same bounded window as the PIL path
        left, top, right, bottom = box
        images = images[..., top:bottom, left:right]
    return F.center_crop(F.resize(images, [size], antialias=True), [size, size])


def _decode_each(blobs: list[torch.Tensor], device: torch.device) -> list[torch.Tensor | None]:
    """One at a time after a batch failed: None where the device decoder refuses the image."""
    out: list[torch.Tensor | None] = []
    for blob in blobs:
        try:
            out.append(decode_jpeg(blob, mode=ImageReadMode.RGB, device=device))
        except RuntimeError:
            out.append(None)
    return out


def decode_jpegs(blobs: list[torch.Tensor], size: int, device: torch.device | str) -> torch.Tensor:
    """JPEG bytes (1-D uint8 CPU tensors) -> uint8 [N, 3, size, size] on `device`.

    One batched decode; images of the same shape are resized together (a real dataset has a
    few common shapes). Images the device decoder refuses go through PIL.
    """
    device = torch.device(device)
    out = torch.empty(len(blobs), 3, size, size, dtype=torch.uint8, device=device)
    if not blobs:
        return out
    try:
        decoded: list[torch.Tensor | None] = list(
            decode_jpeg(blobs, mode=ImageReadMode.RGB, device=device)
        )
    except RuntimeError:
        decoded = _decode_each(blobs, device)
    groups: dict[tuple[int, ...], list[int]] = defaultdict(list)
    for i, image in enumerate(decoded):
        if image is None:
            out[i] = to_device(pil_decode(blobs[i].numpy().tobytes(), size), device)
        else:
            groups[tuple(image.shape)].append(i)
    for rows in groups.values():
        resized = _resize_crop(torch.stack([decoded[i] for i in rows]), size)
        if len(rows) == len(blobs):
            return resized
        out[to_device(torch.tensor(rows), device)] = resized
    return out


@dataclass
class EncodedBatch:
    """A training batch as workers hand it over: JPEG bytes for the device, the rest decoded.

    `jpeg_rows` / `pixel_rows` say where each part sits in the batch, so the assembled batch
    keeps the sampler's order (each row's augmentation is seeded by its dataset index).
    """

    jpegs: list[torch.Tensor]
    jpeg_rows: list[int]
    pixels: torch.Tensor
    pixel_rows: list[int]
    labels: torch.Tensor
    indices: torch.Tensor

    def pin_memory(self) -> EncodedBatch:
        """Called by the DataLoader's pin-memory thread (faster host-to-device copies)."""
        return EncodedBatch(
            [b.pin_memory() for b in self.jpegs],
            self.jpeg_rows,
            self.pixels.pin_memory(),
            self.pixel_rows,
            self.labels,
            self.indices,
        )

    def decode(self, size: int, device: torch.device | str) -> torch.Tensor:
        """uint8 [N, 3, size, size] on `device`, rows in sampler order."""
        device = torch.device(device)
        jpegs = decode_jpegs(self.jpegs, size, device)
        if not self.pixel_rows:
            return jpegs
        pixels = self.pixels.to(device, non_blocking=True)
        if not self.jpeg_rows:
            return pixels
        out = torch.empty(len(self.indices), 3, size, size, dtype=torch.uint8, device=device)
        out[to_device(torch.tensor(self.jpeg_rows), device)] = jpegs
        out[to_device(torch.tensor(self.pixel_rows), device)] = pixels
        return out


def collate_encoded(samples: list[tuple[torch.Tensor, torch.Tensor, int]]) -> EncodedBatch:
    """Samples (1-D JPEG bytes or decoded uint8 [3, S, S], label, index) -> one EncodedBatch."""
    jpegs, jpeg_rows, pixels, pixel_rows = [], [], [], []
    for row, (image, _, _) in enumerate(samples):
        if image.dim() == 1:
            jpegs.append(image)
            jpeg_rows.append(row)
        else:
            pixels.append(image)
            pixel_rows.append(row)
    return EncodedBatch(
        jpegs,
        jpeg_rows,
        torch.stack(pixels) if pixels else torch.empty(0, dtype=torch.uint8),
        pixel_rows,
        torch.stack([torch.as_tensor(label) for _, label, _ in samples]),
        torch.tensor([index for _, _, index in samples]),
    )
