"""`python -m trainer.build_index`: embed a dataset split once into an index folder.

It lives beside training because it needs the dataset loaders; the folder it writes is the
index library's (index.publish). Vectors come from trainer.embed.extract_embeddings with
core.preprocess, exactly what the evaluator extracts, and the folder records the checkpoint's
fingerprint so a server with another checkpoint refuses it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Literal

import datasets
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator
from tqdm import tqdm

from core.checkpoint import Checkpoint, load_checkpoint
from core.cli import UsageError, add_model_flags, build_model_from_args, make_parser, run_cli
from core.device import pick_device
from core.encoder import load_encoder
from core.preprocess import EvalPreprocess
from index.publish import SearchBuild, publish_index
from index.thumbnails import make_thumbnail, write_thumbnails
from trainer.checkpointing import train_config
from trainer.config import TrainConfig
from trainer.data.datasets import image_folder_root, load_splits
from trainer.data.items import file_paths, item_records
from trainer.embed import extract_embeddings
from trainer.progress import quiet_library_bars, use_bars

PROG = "python -m trainer.build_index"


class IndexBuildConfig(BaseModel):
    """Everything one index build needs; the CLI flags are generated from these fields."""

    model_config = ConfigDict(extra="forbid")

    checkpoint: Path = Field(description="the trained checkpoint (required)")
    dataset: str = Field(description="shapes, imagenet-100, a HF id or a local path (required)")
    out: Path = Field(description="the index folder to write (required)")
    split: Literal["train", "test", "all"] = Field(
        "train",
        description="the trainer's own partition: train (what it trained on), test (its "
        "held-out part, what the evaluator scores: the test split, or the seeded tenth of a "
        "one-split dataset such as a folder), all (both)",
    )
    cache_dir: Path = Field(Path("data"), description="where datasets are generated/cached")
    image_column: str | None = Field(
        None, description="image column of a Hugging Face dataset (default: the run's)"
    )
    label_column: str | None = Field(
        None, description="label column of a Hugging Face dataset (default: the run's)"
    )
    batch_size: int = Field(256, ge=1, description="images per forward pass")
    workers: int = Field(0, ge=0, description="DataLoader worker processes")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="where to embed")
    limit: int = Field(0, ge=0, description="index only the first N items (0 = all)")
    force: bool = Field(False, description="replace an index of another checkpoint")
    thumbnail_size: int = Field(96, ge=0, description="longest side of thumbnails; 0 = none")
    store_dtype: Literal["float32", "float16"] = Field(
        "float32", description="stored full-dim vectors (float16 halves disk and page cache)"
    )
    shortlist_dim: int | None = Field(
        None, ge=1, description="build an ANN over this nesting dim's prefix (adaptive search)"
    )
    index_factory: str = Field(
        "HNSW32",
        description="FAISS index_factory string for the ANN: HNSW32, IVF1024,Flat, "
        "IVF1024,PQ16x4fs, SQ8, BFlat (binary: sign bits), ...",
    )
    train_size: int = Field(100_000, ge=1, description="ANN training sample")
    eval_json: Path | None = Field(
        None, description="the checkpoint's eval.json for GET /v1/dims (default: beside it)"
    )

    @model_validator(mode="after")
    def _eval_json_exists(self) -> IndexBuildConfig:
        if self.eval_json is not None and not self.eval_json.is_file():
            raise ValueError(f"--eval-json {self.eval_json} does not exist")
        return self

    def search_build(self) -> SearchBuild:
        return SearchBuild(
            store_dtype=self.store_dtype,
            shortlist_dim=self.shortlist_dim,
            index_factory=self.index_factory,
            train_size=self.train_size,
            eval_json=self.eval_json or default_eval_json(self.checkpoint),
        )


def build_index_folder(cfg: IndexBuildConfig) -> dict[str, Any]:
    """Embed `dataset[split]` with the checkpoint and publish the index folder at `out`.

    An existing index of the same checkpoint is kept as it is (a re-run Job must not drop
    acknowledged edits); one of another checkpoint is only replaced with `force`.
    """
    ckpt = load_checkpoint(cfg.checkpoint)
    existing = existing_index(cfg, ckpt)
    if existing is not None:
        return {"out": str(cfg.out), "count": existing, "skipped": True}
    run = run_config(cfg, ckpt)
    parts, sizes = trainer_parts(cfg, run)
    print(describe_parts(cfg, parts, sizes), flush=True)
    ds = joined(parts)
    x, y = embed_split(cfg, ckpt, run, ds)
    items = part_items(cfg, run, parts, y)

    def thumbnails(folder: Path) -> None:
        if cfg.thumbnail_size:
            write_item_thumbnails(cfg, run, ds, items, folder)

    publish_index(
        cfg.out,
        x.shape[1],
        len(x),
        [x],
        items,
        build_info(cfg, ckpt, parts),
        cfg.search_build(),
        ckpt.model.nesting_list,
        thumbnails,
    )
    return {"out": str(cfg.out), "count": len(x), "width": int(x.shape[1]), "split": cfg.split}


def existing_index(cfg: IndexBuildConfig, ckpt: Checkpoint) -> int | None:
    """The item count of an index of this checkpoint already at `out`, if there is one."""
    manifest = cfg.out / "manifest.json"
    if not manifest.exists() or cfg.force:
        return None
    existing = json.loads(manifest.read_text())
    if existing.get("fingerprint") == ckpt.fingerprint:
        was = existing.get("split", cfg.split)
        if was != cfg.split:
            raise UsageError(
                f"{cfg.out} holds --split {was} of this checkpoint; pass --force to rebuild "
                f"it as --split {cfg.split}, or choose another --out"
            )
        return existing.get("count")
    raise UsageError(
        f"{cfg.out} holds an index of another checkpoint; pass --force to rebuild it "
        "(its added items are dropped: their vectors came from the old model)"
    )


def run_config(cfg: IndexBuildConfig, ckpt: Checkpoint) -> TrainConfig:
    """The run's own training config, reading the data where this build says: load_splits
    then partitions the dataset exactly as the trainer and the evaluator did."""
    update: dict[str, Any] = {"dataset": cfg.dataset, "cache_dir": cfg.cache_dir}
    if cfg.image_column is not None:
        update["image_column"] = cfg.image_column
    if cfg.label_column is not None:
        update["label_column"] = cfg.label_column
    return train_config(ckpt).model_copy(update=update)


def trainer_parts(
    cfg: IndexBuildConfig, run: TrainConfig
) -> tuple[list[tuple[str, Any]], dict[str, int]]:
    """[(part name, dataset)] of the trainer's (train, test) partition that --split names,
    cut to --limit items in all; and the sizes of both parts."""
    train, test = load_splits(run)
    sizes = {"train": len(train), "test": len(test)}
    chosen = {"train": [("train", train)], "test": [("test", test)]}.get(
        cfg.split, [("train", train), ("test", test)]
    )
    if not cfg.limit:
        return chosen, sizes
    out, left = [], cfg.limit
    for name, ds in chosen:
        if left > 0:
            out.append((name, ds.select(range(min(left, len(ds))))))
            left -= len(out[-1][1])
    return out, sizes


def describe_parts(
    cfg: IndexBuildConfig, parts: list[tuple[str, Any]], sizes: dict[str, int]
) -> str:
    """The one line that says what is indexed, out of the trainer's partition."""
    total = sum(len(ds) for _, ds in parts)
    limited = f" (--limit {cfg.limit})" if cfg.limit else ""
    return (
        f"indexing --split {cfg.split} of {cfg.dataset}: {total} images{limited}; the trainer's "
        f"partition: {sizes['train']} train, {sizes['test']} test (held out)"
    )


def joined(parts: list[tuple[str, Any]]):
    """One dataset of the parts, in order (the item list follows the same order)."""
    if len(parts) == 1:
        return parts[0][1]
    return datasets.concatenate_datasets([ds for _, ds in parts])


def embed_split(
    cfg: IndexBuildConfig, ckpt: Checkpoint, run: TrainConfig, ds
) -> tuple[np.ndarray, np.ndarray]:
    on = pick_device(cfg.device)
    return extract_embeddings(
        load_encoder(ckpt, on),
        ds,
        EvalPreprocess.of(ckpt.model),
        run.image_column,
        run.label_column,
        on,
        batch_size=cfg.batch_size,
        workers=cfg.workers,
        desc=f"index {cfg.split}",
        bars=use_bars("auto"),
    )


def part_items(
    cfg: IndexBuildConfig, run: TrainConfig, parts: list[tuple[str, Any]], labels: np.ndarray
) -> list[dict[str, Any]]:
    """Items of every part: ids from file paths for an image folder, else "<part>-<row>"."""
    root = image_folder_root(cfg.dataset)
    items: list[dict[str, Any]] = []
    start = 0
    for name, ds in parts:
        names = getattr(ds.features.get(run.label_column), "names", None)
        paths = file_paths(ds, run.image_column, root) if root is not None else None
        part_labels = labels[start : start + len(ds)].tolist()
        items += item_records(name, part_labels, names, paths)
        start += len(ds)
    return items


def write_item_thumbnails(
    cfg: IndexBuildConfig, run: TrainConfig, ds, items: list[dict], folder: Path
) -> None:
    images = ds.select_columns([run.image_column])
    rows = tqdm(
        images,
        total=len(images),
        desc=f"thumbnails {cfg.split}",
        unit="img",
        disable=not use_bars("auto"),
    )
    write_thumbnails(
        folder,
        (
            (it["id"], make_thumbnail(row[run.image_column], cfg.thumbnail_size))
            for it, row in zip(items, rows, strict=True)
        ),
    )


def build_info(
    cfg: IndexBuildConfig, ckpt: Checkpoint, parts: list[tuple[str, Any]]
) -> dict[str, Any]:
    """What the manifest records about where the index came from."""
    return {
        "checkpoint": str(cfg.checkpoint),
        "fingerprint": ckpt.fingerprint,
        "step": ckpt.step,
        "nesting_list": list(ckpt.model.nesting_list),
        "dataset": cfg.dataset,
        "split": cfg.split,
        "parts": {name: len(ds) for name, ds in parts},
        "built": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def default_eval_json(checkpoint: Path) -> Path | None:
    """The evaluator's output beside the checkpoint (`make eval`), when there is one."""
    path = Path(checkpoint).parent / "eval.json"
    return path if path.is_file() else None


def parse_args(argv: list[str] | None) -> IndexBuildConfig:
    parser = make_parser(PROG, "Build a server index folder from a dataset split.")
    add_model_flags(parser, IndexBuildConfig)
    ns = parser.parse_args(argv)
    return build_model_from_args(IndexBuildConfig, ns, PROG)  # type: ignore[return-value]


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv)
    if not use_bars("auto"):
        quiet_library_bars()
    result = build_index_folder(cfg)
    if result.get("skipped"):
        print(f"{result['out']} is already an index of this checkpoint; left as it is")
    else:
        print(
            f"indexed {result['count']} items of --split {result['split']} "
            f"({result['width']}-dim) into {result['out']}"
        )
    return 0


if __name__ == "__main__":
    run_cli(main, PROG)
