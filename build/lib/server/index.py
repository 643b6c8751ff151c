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
from pathlib import Path

from tqdm import tqdm

from server.store import write_generation
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
    tmp = out.with_name(f".{out.name}.building")
    shutil.rmtree(tmp, ignore_errors=True)
    write_generation(tmp, 0, x.shape[1], len(x), [x], items, info)
    if thumbnail_size:
        images = ds.select_columns([image_column])
        rows = tqdm(images, total=len(images), desc=f"thumbnails {split}", unit="img")
        write_thumbnails(
            tmp,
            (
                (it["id"], make_thumbnail(row[image_column], thumbnail_size))
                for it, row in zip(items, rows, strict=True)
            ),
        )
    _publish(tmp, out)
    return {"out": str(out), "count": len(x), "width": int(x.shape[1])}


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
    ns = parser.parse_args(argv)
    if ns.batch_size < 1 or ns.limit < 0 or ns.thumbnail_size < 0:
        raise UsageError("--batch-size must be >= 1, --limit and --thumbnail-size >= 0")
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
    )
    if result.get("skipped"):
        print(f"{result['out']} is already an index of this checkpoint; left as it is")
    else:
        print(f"indexed {result['count']} items ({result['width']}-dim) into {result['out']}")
    return 0


if __name__ == "__main__":
    run_cli(main, PROG)
