"""Device decode of JPEG bytes (trainer.data.decode) against the PIL pipeline it replaces.

Tolerance: on the CPU, torchvision's decoder and PIL are both libjpeg-turbo and the resize is
the same function, so the result must be identical. On CUDA (nvjpeg, float resize) the mean
absolute difference must stay under 2 levels of 255 (docs/GPU.md).
"""

from __future__ import annotations

import io

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from core.checkpoint import load_checkpoint
from core.cli import UsageError
from trainer.data import decode as decode_mod
from trainer.data.datasets import DecodedImages, EncodedImages, TrainData, choose_decode
from trainer.data.decode import as_byte_tensor, collate_encoded, decode_jpegs, is_jpeg, pil_decode
from trainer.train import train

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device"))]  # fmt: skip
MEAN_TOLERANCE = {"cpu": 0.0, "cuda": 2.0}


def encode(array: np.ndarray, fmt: str = "JPEG", mode: str = "RGB", **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).convert(mode).save(buf, fmt, **kw)
    return buf.getvalue()


def photo(h: int, w: int, seed: int) -> np.ndarray:
    """Smooth gradients plus noise: closer to a photo than pure noise, still random."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:h, 0:w]
    base = np.stack([xs / w, ys / h, (xs + ys) / (w + h)], -1) * 200
    return (base + rng.normal(0, 25, (h, w, 3))).clip(0, 255).astype(np.uint8)


def jpeg_blobs() -> list[bytes]:
    """RGB 4:2:0 and 4:4:4, grayscale, CMYK, odd sizes, portrait and landscape."""
    return [
        encode(photo(75, 100, 0), quality=90),
        encode(photo(75, 100, 1), quality=75),
        encode(photo(101, 67, 2), quality=95, subsampling=0),
        encode(photo(40, 52, 3), mode="L"),
        encode(photo(75, 100, 4), mode="CMYK"),
        encode(photo(75, 100, 5), quality=60, progressive=True),
    ]


@pytest.mark.parametrize("device", DEVICES)
def test_device_decode_matches_pil(device):
    blobs = jpeg_blobs()
    got = decode_jpegs([as_byte_tensor(b) for b in blobs], 32, device).cpu()
    want = torch.stack([pil_decode(b, 32) for b in blobs])
    assert got.shape == (len(blobs), 3, 32, 32) and got.dtype == torch.uint8
    diff = (got.int() - want.int()).abs().float()
    assert diff.mean() <= MEAN_TOLERANCE[device], diff.mean()


def test_refused_jpeg_falls_back_to_pil(monkeypatch):
    """When the device decoder refuses the batch and then one image, that image goes to PIL."""
    blobs = jpeg_blobs()[:3]
    real = decode_mod.decode_jpeg
    refused = as_byte_tensor(blobs[1])

    def picky(inputs, **kw):
        if isinstance(inputs, list) or torch.equal(inputs, refused):
            raise RuntimeError("nvjpeg: unsupported")
        return real(inputs, **kw)

    monkeypatch.setattr(decode_mod, "decode_jpeg", picky)
    got = decode_jpegs([as_byte_tensor(b) for b in blobs], 24, "cpu")
    torch.testing.assert_close(got, torch.stack([pil_decode(b, 24) for b in blobs]))


def test_encoded_batch_keeps_sampler_order_with_other_formats(tmp_path):
    """JPEGs (decoded on the device) and PNGs (decoded by PIL in the worker) interleave."""
    arrays = [photo(60 + 3 * i, 80, i) for i in range(6)]
    blobs = [encode(a, "JPEG" if i % 3 else "PNG") for i, a in enumerate(arrays)]
    ds = datasets.Dataset.from_dict(
        {"image": [{"bytes": b, "path": None} for b in blobs], "label": list(range(6))},
        features=datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")}),
    )
    encoded = EncodedImages(ds, "image", "label", 32)
    order = [4, 0, 5, 1, 3, 2]
    batch = collate_encoded([encoded[i] for i in order])
    assert batch.pixel_rows == [1, 4] and batch.indices.tolist() == order
    want = DecodedImages(ds, "image", "label", 32)
    torch.testing.assert_close(batch.decode(32, "cpu"), torch.stack([want[i][0] for i in order]))
    assert batch.labels.tolist() == order


@pytest.fixture(scope="module")
def jpeg_dataset(tmp_path_factory) -> str:
    """128 train / 32 test JPEG images of two classes, saved with `datasets`."""
    features = datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")})
    splits = {}
    for split, n, offset in (("train", 128, 0), ("test", 32, 1000)):
        images = [{"bytes": encode(photo(40, 48, offset + i)), "path": None} for i in range(n)]
        splits[split] = datasets.Dataset.from_dict(
            {"image": images, "label": [i % 2 for i in range(n)]}, features=features
        )
    path = tmp_path_factory.mktemp("jpeg") / "jpegs"
    datasets.DatasetDict(splits).save_to_disk(str(path))
    return str(path)


def test_training_with_device_decode_equals_pil_decode(tiny_config, jpeg_dataset, tmp_path):
    """Same crops, same steps: on the CPU the weights must be bit-identical."""
    states = []
    for mode in ("pil", "device"):
        cfg = tiny_config(
            dataset=jpeg_dataset, decode=mode, augment="batch", preload="off", max_steps=2,
            output_dir=tmp_path / mode, image_size=32, queue_size=32,
        )  # fmt: skip
        train(cfg)
        states.append(load_checkpoint(cfg.output_dir / "checkpoint.pt"))
    for name, tensor in states[0].encoder_q.items():
        torch.testing.assert_close(states[1].encoder_q[name], tensor, rtol=0, atol=0)


def test_choose_decode(tiny_config, jpeg_dataset, tiny_dataset):
    jpegs = datasets.load_from_disk(jpeg_dataset)["train"]
    pngs = datasets.load_from_disk(tiny_dataset)["train"]
    assert is_jpeg(EncodedImages(jpegs, "image").encoded(0))
    assert not is_jpeg(EncodedImages(pngs, "image").encoded(0))
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    auto = tiny_config(dataset=jpeg_dataset)
    assert choose_decode(auto, "batch", jpegs, cuda) == "device"
    assert choose_decode(auto, "batch", jpegs, cpu) == "pil"
    assert choose_decode(auto, "worker", jpegs, cuda) == "pil"
    assert choose_decode(auto, "batch", pngs, cuda) == "pil"
    with pytest.raises(UsageError, match="--decode device needs --augment batch"):
        choose_decode(tiny_config(decode="device"), "worker", jpegs, cpu)
    arrays = datasets.Dataset.from_dict({"image": [[1, 2]], "label": [0]})
    with pytest.raises(UsageError, match=r"not a datasets\.Image column"):
        choose_decode(tiny_config(decode="device"), "batch", arrays, cpu)


def test_device_decode_never_preloads(tiny_config, jpeg_dataset):
    cfg = tiny_config(dataset=jpeg_dataset, decode="device", augment="batch", batch_size=16)
    data = TrainData(cfg, datasets.load_from_disk(jpeg_dataset)["train"], 0, 1, torch.device("cpu"))
    assert data.decode == "device" and isinstance(data.loader.dataset, EncodedImages)
    q, k = next(iter(data.epoch(0)))
    assert q.shape == k.shape == (16, 3, 32, 32)
