"""Datasets (built-in shapes, Hugging Face ids, local folders) and the training loaders.

Everything becomes a Hugging Face `datasets.Dataset` with an image and a label column, so the
built-in data and ImageNet-100 flow through the same code.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import datasets
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from trainer.data import shapes
from trainer.data.augment import AugmentParams, BatchTwoCrop, TwoCropTransform
from trainer.config import TrainConfig
from trainer.data.survey import SplitRecord
from trainer.data.decode import EncodedBatch, as_byte_tensor, collate_encoded, is_jpeg, pil_decode
from core.cli import UsageError
from core.preprocess import IMAGENET_MEAN, IMAGENET_STD, decode_rgb, resize_center_crop
from core.preprocess import stored_size as stored_size_for

DATASET_ALIASES = {"imagenet-100": "clane9/imagenet-100"}
# v2: 10,000 test images (v1: 1,000), so a test score carries about 0.4 points of sampling noise
# instead of 1.3; the train split is the same images.
SHAPES_SIZES = {"train": 5000, "test": 10000}
SHAPES_VERSION = 2
# The validation slice does not move with --seed: every run of a sweep is judged on the same items.
VAL_SEED = 1234
# Datasets up to this many decoded bytes are held in memory as one uint8 tensor.
PRELOAD_BYTES = 2 * 1024**3


def shapes_dataset(cache_dir: Path, image_size: int, seed: int) -> datasets.DatasetDict:
    """Generate once, save with `datasets`, load from the cache afterwards."""
    path = Path(cache_dir) / f"shapes-v{SHAPES_VERSION}-{image_size}px-seed{seed}"
    if (path / "dataset_dict.json").exists():
        return datasets.load_from_disk(str(path))
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=list(shapes.CLASSES))}
    )
    splits = {}
    for i, (split, n) in enumerate(SHAPES_SIZES.items()):
        images, labels = shapes.generate(n, image_size, seed * 10 + i)
        splits[split] = datasets.Dataset.from_dict(
            {"image": list(images), "label": labels.tolist()}, features=features
        )
    dd = datasets.DatasetDict(splits)
    # Parallel runs (the ablation harness, DDP ranks) may generate the same seed at once: each
    # writes its own folder and the first rename wins; the data are identical by construction.
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    dd.save_to_disk(str(tmp))
    try:
        tmp.replace(path)
    except OSError:
        if not (path / "dataset_dict.json").exists():
            raise
        shutil.rmtree(tmp, ignore_errors=True)
    return datasets.load_from_disk(str(path))


def _is_image_folder(path: Path) -> bool:
    return any(p.is_dir() for p in path.iterdir()) and not (path / "dataset_info.json").exists()


def image_folder_root(name: str) -> Path | None:
    """The folder --dataset names when it is loaded as an image folder (items have file paths
    relative to it), else None."""
    path = Path(name).expanduser()
    if not path.is_dir() or (path / "dataset_dict.json").exists() or (path / "state.json").exists():
        return None
    return path if _is_image_folder(path) else None


def load_dataset_dict(cfg: TrainConfig) -> datasets.DatasetDict:
    """Resolve --dataset: shapes, an alias, a save_to_disk folder, an image folder or a hub id."""
    name = cfg.dataset
    if name == "shapes":
        return shapes_dataset(cfg.cache_dir, cfg.image_size, cfg.dataset_seed)
    path = Path(name).expanduser()
    try:
        if path.exists():
            if (path / "dataset_dict.json").exists() or (path / "state.json").exists():
                loaded = datasets.load_from_disk(str(path))
            elif path.is_dir() and _is_image_folder(path):
                loaded = datasets.load_dataset("imagefolder", data_dir=str(path))
            else:
                raise UsageError(
                    f"--dataset {name}: not a `save_to_disk` folder nor an image folder "
                    "with one sub-folder per class"
                )
        else:
            hub_id = DATASET_ALIASES.get(name, name)
            loaded = datasets.load_dataset(hub_id, cache_dir=str(cfg.cache_dir / "hf"))
    except UsageError:
        raise
    except Exception as e:
        raise UsageError(
            f"--dataset {name}: cannot load it ({type(e).__name__}: {str(e)[:200]}); "
            "allowed: shapes, imagenet-100, a Hugging Face id, or a local path"
        ) from None
    if isinstance(loaded, datasets.Dataset):
        loaded = datasets.DatasetDict({"train": loaded})
    return loaded


def resolve_splits(cfg: TrainConfig, dd: datasets.DatasetDict) -> tuple[str, str | None]:
    if cfg.train_split not in dd:
        raise UsageError(
            f"--train-split {cfg.train_split!r} not in dataset {cfg.dataset} "
            f"(splits: {', '.join(dd)})"
        )
    if cfg.test_split != "auto":
        if cfg.test_split not in dd:
            raise UsageError(
                f"--test-split {cfg.test_split!r} not in dataset {cfg.dataset} "
                f"(splits: {', '.join(dd)})"
            )
        return cfg.train_split, cfg.test_split
    for candidate in ("test", "validation", "val"):
        if candidate in dd and candidate != cfg.train_split:
            return cfg.train_split, candidate
    return cfg.train_split, None


@dataclass
class Splits:
    """The train and evaluation splits, with the record of how they were drawn."""

    train: datasets.Dataset
    test: datasets.Dataset
    record: SplitRecord


def load_splits(cfg: TrainConfig) -> tuple[datasets.Dataset, datasets.Dataset]:
    """(train, test); `read_splits` also says how they were drawn."""
    splits = read_splits(cfg)
    return splits.train, splits.test


def read_splits(cfg: TrainConfig) -> Splits:
    """A dataset with one split gets a deterministic 90/10 split.

    With --val-fraction, "test" is a seeded slice of the train split and the rest trains:
    settings are tuned on it, so the test split stays unseen until the final numbers.
    """
    dd = load_dataset_dict(cfg)
    train_name, test_name = resolve_splits(cfg, dd)
    train = dd[train_name]
    held_out: dict = {}
    if cfg.val_fraction:
        parts = train.train_test_split(test_size=cfg.val_fraction, seed=VAL_SEED)
        train, test = parts["train"], parts["test"]
        held_out = dict(
            held_out_fraction=cfg.val_fraction,
            held_out_seed=VAL_SEED,
            held_out_by="--val-fraction, seed",
        )
        test_name = None
    elif test_name is None:
        parts = train.train_test_split(test_size=0.1, seed=cfg.dataset_seed)
        train, test = parts["train"], parts["test"]
        held_out = dict(
            held_out_fraction=0.1,
            held_out_seed=cfg.dataset_seed,
            held_out_by="seeded by --data-seed",
        )
    else:
        test = dd[test_name]
    check_columns(cfg, train, train_name)
    check_columns(cfg, test, test_name or f"{train_name} (held out)")
    record = SplitRecord(
        n_train=len(train),
        n_test=len(test),
        train_split=train_name,
        test_split=test_name,
        from_folder=image_folder_root(cfg.dataset) is not None,
        **held_out,
    )
    return Splits(train, test, record)


def check_columns(cfg: TrainConfig, ds: datasets.Dataset, split: str) -> None:
    """A split must have cfg's image and label columns (trainer, evaluation, index builder)."""
    for col in (cfg.image_column, cfg.label_column):
        if col not in ds.column_names:
            raise UsageError(
                f"split {split} of {cfg.dataset} has no column {col!r} "
                f"(columns: {', '.join(ds.column_names)}); set --image-column/--label-column"
            )


class DecodedImages(Dataset):
    """Decode stage: any image -> uint8 [3, S, S] (RGB, shorter side resized, centre crop)."""

    def __init__(self, ds: datasets.Dataset, image_column: str, label_column: str, size: int):
        self.ds, self.image_column, self.label_column, self.size = (
            ds,
            image_column,
            label_column,
            size,
        )
        self.images: torch.Tensor | None = None
        self.labels = torch.tensor(ds[label_column], dtype=torch.long)

    def preload(self) -> DecodedImages:
        self.images = torch.stack([self._decode(i) for i in range(len(self))])
        return self

    def _decode(self, i: int) -> torch.Tensor:
        return resize_center_crop(decode_rgb(self.ds[i][self.image_column]), self.size)

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, key: int | tuple[int, int]):
        i = key[0] if isinstance(key, tuple) else key
        image = self.images[i] if self.images is not None else self._decode(i)
        return image, self.labels[i], i


class EncodedImages(Dataset):
    """Decode stage split for the device: JPEGs stay bytes, any other format is decoded here.

    Items are (1-D uint8 JPEG bytes or uint8 [3, S, S], label, index); `collate_encoded`
    batches them and the training device decodes the bytes (trainer.data.decode).
    """

    def __init__(
        self, ds: datasets.Dataset, image_column: str, label_column: str | None = None, size=0
    ):
        self.ds = ds.cast_column(image_column, datasets.Image(decode=False))
        self.image_column, self.size = image_column, size
        self.labels = torch.tensor(ds[label_column], dtype=torch.long) if label_column else None

    def encoded(self, i: int) -> bytes:
        """The image's file bytes (a dataset built from files may hold only their paths)."""
        item = self.ds[i][self.image_column]
        if item["bytes"] is not None:
            return item["bytes"]
        return Path(item["path"]).read_bytes()

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, key: int | tuple[int, int]):
        i = key[0] if isinstance(key, tuple) else key
        data = self.encoded(i)
        image = as_byte_tensor(data) if is_jpeg(data) else pil_decode(data, self.size)
        return image, self.labels[i], i


def holds_jpeg_bytes(ds: datasets.Dataset, image_column: str) -> bool:
    """An image column (not arrays) whose first image is a JPEG: the device can decode it."""
    if not isinstance(ds.features.get(image_column), datasets.Image) or len(ds) == 0:
        return False
    return is_jpeg(EncodedImages(ds.select([0]), image_column).encoded(0))


def choose_decode(cfg: TrainConfig, augment: str, ds: datasets.Dataset, device) -> str:
    """--decode auto|pil|device -> pil or device, with a one-line error for a bad pairing."""
    if cfg.decode == "pil":
        return "pil"
    if cfg.decode == "device":
        if augment != "batch":
            raise UsageError(
                "--decode device needs --augment batch (the device decodes whole batches); "
                "use --augment batch or --decode pil"
            )
        if not isinstance(ds.features.get(cfg.image_column), datasets.Image):
            raise UsageError(
                f"--decode device: column {cfg.image_column!r} holds no encoded images "
                "(it is not a datasets.Image column); use --decode pil"
            )
        return "device"
    jpeg = holds_jpeg_bytes(ds, cfg.image_column)
    return "device" if device.type == "cuda" and augment == "batch" and jpeg else "pil"


class TwoCropImages(Dataset):
    """Worker-side path: decode + per-sample v2 two-crop augmentation."""

    def __init__(self, decoded: DecodedImages, transform: TwoCropTransform, seed: int):
        self.decoded, self.transform, self.seed = decoded, transform, seed

    def __len__(self) -> int:
        return len(self.decoded)

    def __getitem__(self, key: tuple[int, int]):
        index, epoch = key
        image, label, _ = self.decoded[index]
        q, k = self.transform(image, self.seed, epoch, index)
        return q, k, label, index


class EpochSampler(Sampler[tuple[int, int]]):
    """This rank's share of a seeded per-epoch permutation, as (index, epoch) pairs.

    Carrying the epoch with the index lets persistent workers seed each sample's augmentation.

    The global permutation is cut so that global batch b holds rows b*B*W .. (b+1)*B*W-1
    and rank r takes every W-th of them: W ranks with batch B see the same images per step
    as one process with batch B*W. `start` skips batches when resuming mid-epoch.
    """

    def __init__(self, n: int, batch_size: int, rank: int, world_size: int, seed: int):
        self.n, self.batch_size, self.rank, self.world_size, self.seed = (
            n,
            batch_size,
            rank,
            world_size,
            seed,
        )
        self.epoch, self.start = 0, 0

    @property
    def steps_per_epoch(self) -> int:
        return self.n // (self.batch_size * self.world_size)

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        self.epoch, self.start = epoch, start_step

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        perm = torch.randperm(self.n, generator=g)[
            : self.steps_per_epoch * self.batch_size * self.world_size
        ]
        mine = perm[self.rank :: self.world_size]
        return ((i, self.epoch) for i in mine[self.start * self.batch_size :].tolist())

    def __len__(self) -> int:
        return (self.steps_per_epoch - self.start) * self.batch_size


class TrainData:
    """The training stream: sampler, loader, and the augmentation that makes the two views."""

    def __init__(self, cfg: TrainConfig, train: datasets.Dataset, rank: int, world: int, device):
        self.cfg, self.device = cfg, device
        params = AugmentParams(cfg.image_size)
        size = stored_size_for(cfg.image_size)
        self.stored_size = size
        decoded = DecodedImages(train, cfg.image_column, cfg.label_column, size)
        fits = len(decoded) * 3 * size * size <= PRELOAD_BYTES
        mode = cfg.augment
        if mode == "auto":
            # A dataset held in memory is fastest through batched augmentation, on any device
            # (about 5x per-sample PIL transforms on 2 CPU cores); a larger one on the CPU
            # streams through per-sample workers.
            mode = "batch" if fits or device.type == "cuda" else "worker"
        self.mode = mode
        self.decode = choose_decode(cfg, mode, train, device)
        preload = mode == "batch" and self.decode == "pil" and cfg.preload == "auto" and fits
        if preload:
            decoded.preload()
        self.sampler = EpochSampler(len(decoded), cfg.batch_size, rank, world, cfg.seed)
        collate = None
        if mode == "batch":
            self.batch_aug = BatchTwoCrop(params, IMAGENET_MEAN, IMAGENET_STD)
            dataset: Dataset = decoded
            if self.decode == "device":
                dataset = EncodedImages(train, cfg.image_column, cfg.label_column, size)
                collate = collate_encoded
        else:
            self.two_crop = TwoCropImages(
                decoded, TwoCropTransform(params, IMAGENET_MEAN, IMAGENET_STD), cfg.seed
            )
            dataset = self.two_crop
        workers = 0 if preload else cfg.workers
        self.loader = DataLoader(
            dataset,
            batch_size=cfg.batch_size,
            sampler=self.sampler,
            num_workers=workers,
            pin_memory=device.type == "cuda",
            persistent_workers=workers > 0,
            drop_last=True,
            collate_fn=collate,
        )
        if self.sampler.steps_per_epoch == 0:
            raise UsageError(
                f"dataset has {len(decoded)} training images, fewer than one global batch "
                f"({cfg.batch_size} x {world}); lower --batch-size"
            )

    @property
    def steps_per_epoch(self) -> int:
        return self.sampler.steps_per_epoch

    def epoch(self, epoch: int, start_step: int = 0):
        """Yield (query view, key view) on the device for the rest of this epoch."""
        self.sampler.set_epoch(epoch, start_step)
        for batch in self.loader:
            if isinstance(batch, EncodedBatch):
                images = batch.decode(self.stored_size, self.device)
                yield self.batch_aug(images, batch.indices, self.cfg.seed, epoch)
            elif self.mode == "batch":
                images, _, index = batch
                images = images.to(self.device, non_blocking=True)
                yield self.batch_aug(images, index, self.cfg.seed, epoch)
            else:
                q, k, _, _ = batch
                yield q.to(self.device, non_blocking=True), k.to(self.device, non_blocking=True)
