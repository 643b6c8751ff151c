"""`python -m server.index build`: embed a dataset split once into an index folder.

Vectors come from trainer.embed.extract_embeddings with trainer.preprocess, exactly what
the evaluator extracts, and the folder records the checkpoint's fingerprint so a server
with another checkpoint refuses it. The folder is written beside the target and renamed
into place, so servers never see a half-built index.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from server.dims import write_dims_report
from server.store import STORE_DTYPES, write_generation
from server.thumbnails import make_thumbnail, write_thumbnails
from trainer.checkpoint import load_checkpoint
from trainer.config import TrainConfig, make_parser
from trainer.data import check_columns, load_dataset_dict
from trainer.device import pick_device
from trainer.embed import extract_embeddings
from trainer.errors import UsageError, run_cli
from trainer.model import load_encoder
from trainer.preprocess import EvalPreprocess

PROG = "python -m server.index"


@dataclass(frozen=True)
class SearchBuild:
    """How the folder is searched: stored dtype, optional ANN, the eval behind /v1/dims."""

    store_dtype: str = "float32"
    shortlist_dim: int | None = None
    index_factory: str = "HNSW32"
    train_size: int = 100_000
    eval_json: Path | None = None


def build_index_folder(
    checkpoint: Path,
    dataset: str,
    split: str,
    out: Path,
    *,
    cache_dir: Path = Path("data"),
    image_column: str = "image",
    label_column: str = "label",
    batch_size: int = 256,
    workers: int = 0,
    device: str = "cpu",
    limit: int = 0,
    force: bool = False,
    thumbnail_size: int = 96,
    search: SearchBuild | None = None,
) -> dict:
    """Embed `dataset[split]` with the checkpoint and publish the index folder at `out`.

    An existing index of the same checkpoint is kept as it is (a re-run Job must not drop
    acknowledged edits); one of another checkpoint is only replaced with `force`.
    """
    out = Path(out)
    ckpt = load_checkpoint(checkpoint)
    manifest = out / "manifest.json"
    if manifest.exists() and not force:
        existing = json.loads(manifest.read_text())
        if existing.get("fingerprint") == ckpt.fingerprint:
            return {"out": str(out), "count": existing.get("count"), "skipped": True}
        raise UsageError(
            f"{out} holds an index of another checkpoint; pass --force to rebuild it "
            "(its added items are dropped: their vectors came from the old model)"
        )
    cfg = TrainConfig(
        dataset=dataset,
        cache_dir=cache_dir,
        image_size=ckpt.model.image_size,
        seed=ckpt.train.seed,
        image_column=image_column,
        label_column=label_column,
    )
    dd = load_dataset_dict(cfg)
    if split not in dd:
        raise UsageError(f"--split {split!r} not in dataset {dataset} (splits: {', '.join(dd)})")
    ds = dd[split]
    check_columns(cfg, ds, split)
    if limit:
        ds = ds.select(range(min(limit, len(ds))))
    on = pick_device(device)
    encoder = load_encoder(ckpt, on)
    x, y = extract_embeddings(
        encoder,
        ds,
        EvalPreprocess.of(ckpt.model),
        image_column,
        label_column,
        on,
        batch_size=batch_size,
        workers=workers,
        desc=f"index {split}",
    )
    names = getattr(ds.features.get(label_column), "names", None)
    items = [
        {
            "id": f"{split}-{i}",
            "label": int(label),
            "metadata": {"class": names[label]} if names else None,
        }
        for i, label in enumerate(y.tolist())
    ]
    info = {
        "checkpoint": str(checkpoint),
        "fingerprint": ckpt.fingerprint,
        "step": ckpt.step,
        "nesting_list": list(ckpt.model.nesting_list),
        "dataset": dataset,
        "split": split,
        "built": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    search = search or SearchBuild(eval_json=default_eval_json(checkpoint))

    def thumbnails(folder: Path) -> None:
        if thumbnail_size:
            images = ds.select_columns([image_column])
            rows = tqdm(images, total=len(images), desc=f"thumbnails {split}", unit="img")
            write_thumbnails(
                folder,
                (
                    (it["id"], make_thumbnail(row[image_column], thumbnail_size))
                    for it, row in zip(items, rows, strict=True)
                ),
            )

    publish_index(
        out, x.shape[1], len(x), [x], items, info, search, ckpt.model.nesting_list, thumbnails
    )
    return {"out": str(out), "count": len(x), "width": int(x.shape[1])}


def default_eval_json(checkpoint: Path) -> Path | None:
    """The evaluator's output beside the checkpoint (`make eval`), when there is one."""
    path = Path(checkpoint).parent / "eval.json"
    return path if path.is_file() else None


def publish_index(
    out: Path,
    width: int,
    count: int,
    vector_chunks: Iterable[np.ndarray],
    items: Iterable[dict[str, Any]],
    info: dict[str, Any],
    search: SearchBuild,
    nesting_list: Iterable[int],
    extra: Callable[[Path], None] | None = None,
) -> None:
    """Write generation 0 (vectors, ANN), `extra` files and dims.json beside `out`, then
    swap the folder in."""
    if search.shortlist_dim is not None and search.shortlist_dim not in nesting_list:
        dims = ", ".join(map(str, nesting_list))
        raise UsageError(f"--shortlist-dim {search.shortlist_dim} is not a nesting dim ({dims})")
    tmp = out.with_name(f".{out.name}.building")
    shutil.rmtree(tmp, ignore_errors=True)
    info = {**info, "store_dtype": search.store_dtype}
    if search.shortlist_dim is not None:
        info["ann"] = {
            "factory": search.index_factory,
            "dim": search.shortlist_dim,
            "train_size": search.train_size,
        }
    try:
        write_generation(tmp, 0, width, count, vector_chunks, items, info)
    except ValueError as e:  # a factory FAISS cannot build, named with examples
        shutil.rmtree(tmp, ignore_errors=True)
        raise UsageError(str(e)) from None
    if extra is not None:
        extra(tmp)
    write_dims_report(tmp, list(nesting_list), search.eval_json)
    _publish(tmp, out)


def _publish(tmp: Path, out: Path) -> None:
    """Swap the finished folder into place (the old one, if any, is removed after)."""
    old = out.with_name(f".{out.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = make_parser(PROG, "Build a server index folder from a dataset split.")
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="embed a dataset split into an index folder")
    b.add_argument("--checkpoint", type=Path, required=True)
    b.add_argument("--dataset", required=True, help="shapes, imagenet-100, HF id or local path")
    b.add_argument("--split", default="train")
    b.add_argument("--out", type=Path, required=True)
    b.add_argument("--cache-dir", type=Path, default=Path("data"))
    b.add_argument("--image-column", default="image")
    b.add_argument("--label-column", default="label")
    b.add_argument("--batch-size", type=int, default=256)
    b.add_argument("--workers", type=int, default=0)
    b.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    b.add_argument("--limit", type=int, default=0, help="index only the first N items")
    b.add_argument("--force", action="store_true", help="replace an existing index")
    b.add_argument(
        "--thumbnail-size", type=int, default=96, help="longest side of item thumbnails; 0 = none"
    )
    b.add_argument(
        "--store-dtype",
        choices=STORE_DTYPES,
        default="float32",
        help="dtype of the stored full-dim vectors (float16 halves disk and page cache)",
    )
    b.add_argument(
        "--shortlist-dim",
        type=int,
        default=None,
        help="build an ANN index over this nesting dim's prefix (adaptive search shortlists)",
    )
    b.add_argument(
        "--index-factory",
        default="HNSW32",
        help="FAISS index_factory string for the ANN: HNSW32, IVF1024,Flat, IVF1024,PQ16x4fs, "
        "SQ8, BFlat (binary: sign bits), ...",
    )
    b.add_argument("--train-size", type=int, default=100_000, help="ANN training sample")
    b.add_argument(
        "--eval-json",
        type=Path,
        default=None,
        help="the checkpoint's eval.json for GET /v1/dims (default: beside the checkpoint)",
    )
    ns = parser.parse_args(argv)
    if ns.batch_size < 1 or ns.limit < 0 or ns.thumbnail_size < 0 or ns.train_size < 1:
        raise UsageError(
            "--batch-size and --train-size must be >= 1, --limit and --thumbnail-size >= 0"
        )
    if ns.eval_json is not None and not ns.eval_json.is_file():
        raise UsageError(f"--eval-json {ns.eval_json} does not exist")
    result = build_index_folder(
        ns.checkpoint,
        ns.dataset,
        ns.split,
        ns.out,
        cache_dir=ns.cache_dir,
        image_column=ns.image_column,
        label_column=ns.label_column,
        batch_size=ns.batch_size,
        workers=ns.workers,
        device=ns.device,
        limit=ns.limit,
        force=ns.force,
        thumbnail_size=ns.thumbnail_size,
        search=SearchBuild(
            store_dtype=ns.store_dtype,
            shortlist_dim=ns.shortlist_dim,
            index_factory=ns.index_factory,
            train_size=ns.train_size,
            eval_json=ns.eval_json or default_eval_json(ns.checkpoint),
        ),
    )
    if result.get("skipped"):
        print(f"{result['out']} is already an index of this checkpoint; left as it is")
    else:
        print(f"indexed {result['count']} items ({result['width']}-dim) into {result['out']}")
    return 0


if __name__ == "__main__":
    run_cli(main, PROG)
