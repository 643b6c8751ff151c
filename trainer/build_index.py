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
from trainer.data.datasets import check_columns, load_dataset_dict
from trainer.embed import extract_embeddings

PROG = "python -m trainer.build_index"


class IndexBuildConfig(BaseModel):
    """Everything one index build needs; the CLI flags are generated from these fields."""

    model_config = ConfigDict(extra="forbid")

    checkpoint: Path = Field(description="the trained checkpoint (required)")
    dataset: str = Field(description="shapes, imagenet-100, a HF id or a local path (required)")
    out: Path = Field(description="the index folder to write (required)")
    split: str = Field("train", description="the dataset split to index")
    cache_dir: Path = Field(Path("data"), description="where datasets are generated/cached")
    image_column: str = Field("image", description="image column of a Hugging Face dataset")
    label_column: str = Field("label", description="label column of a Hugging Face dataset")
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
    ds = load_split(cfg, ckpt)
    x, y = embed_split(cfg, ckpt, ds)
    items = item_records(cfg, ds, y)

    def thumbnails(folder: Path) -> None:
        if cfg.thumbnail_size:
            write_item_thumbnails(cfg, ds, items, folder)

    publish_index(
        cfg.out,
        x.shape[1],
        len(x),
        [x],
        items,
        build_info(cfg, ckpt),
        cfg.search_build(),
        ckpt.model.nesting_list,
        thumbnails,
    )
    return {"out": str(cfg.out), "count": len(x), "width": int(x.shape[1])}


def existing_index(cfg: IndexBuildConfig, ckpt: Checkpoint) -> int | None:
    """The item count of an index of this checkpoint already at `out`, if there is one."""
    manifest = cfg.out / "manifest.json"
    if not manifest.exists() or cfg.force:
        return None
    existing = json.loads(manifest.read_text())
    if existing.get("fingerprint") == ckpt.fingerprint:
        return existing.get("count")
    raise UsageError(
        f"{cfg.out} holds an index of another checkpoint; pass --force to rebuild it "
        "(its added items are dropped: their vectors came from the old model)"
    )


def load_split(cfg: IndexBuildConfig, ckpt: Checkpoint):
    """The split to index, through the trainer's own dataset loaders."""
    data = TrainConfig(
        dataset=cfg.dataset,
        cache_dir=cfg.cache_dir,
        image_size=ckpt.model.image_size,
        seed=train_config(ckpt).seed,
        image_column=cfg.image_column,
        label_column=cfg.label_column,
    )
    dd = load_dataset_dict(data)
    if cfg.split not in dd:
        raise UsageError(
            f"--split {cfg.split!r} not in dataset {cfg.dataset} (splits: {', '.join(dd)})"
        )
    ds = dd[cfg.split]
    check_columns(data, ds, cfg.split)
    return ds.select(range(min(cfg.limit, len(ds)))) if cfg.limit else ds


def embed_split(cfg: IndexBuildConfig, ckpt: Checkpoint, ds) -> tuple[np.ndarray, np.ndarray]:
    on = pick_device(cfg.device)
    return extract_embeddings(
        load_encoder(ckpt, on),
        ds,
        EvalPreprocess.of(ckpt.model),
        cfg.image_column,
        cfg.label_column,
        on,
        batch_size=cfg.batch_size,
        workers=cfg.workers,
        desc=f"index {cfg.split}",
    )


def item_records(cfg: IndexBuildConfig, ds, labels: np.ndarray) -> list[dict[str, Any]]:
    names = getattr(ds.features.get(cfg.label_column), "names", None)
    return [
        {
            "id": f"{cfg.split}-{i}",
            "label": int(label),
            "metadata": {"class": names[label]} if names else None,
        }
        for i, label in enumerate(labels.tolist())
    ]


def write_item_thumbnails(cfg: IndexBuildConfig, ds, items: list[dict], folder: Path) -> None:
    images = ds.select_columns([cfg.image_column])
    rows = tqdm(images, total=len(images), desc=f"thumbnails {cfg.split}", unit="img")
    write_thumbnails(
        folder,
        (
            (it["id"], make_thumbnail(row[cfg.image_column], cfg.thumbnail_size))
            for it, row in zip(items, rows, strict=True)
        ),
    )


def build_info(cfg: IndexBuildConfig, ckpt: Checkpoint) -> dict[str, Any]:
    """What the manifest records about where the index came from."""
    return {
        "checkpoint": str(cfg.checkpoint),
        "fingerprint": ckpt.fingerprint,
        "step": ckpt.step,
        "nesting_list": list(ckpt.model.nesting_list),
        "dataset": cfg.dataset,
        "split": cfg.split,
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
    result = build_index_folder(parse_args(argv))
    if result.get("skipped"):
        print(f"{result['out']} is already an index of this checkpoint; left as it is")
    else:
        print(f"indexed {result['count']} items ({result['width']}-dim) into {result['out']}")
    return 0


if __name__ == "__main__":
    run_cli(main, PROG)
