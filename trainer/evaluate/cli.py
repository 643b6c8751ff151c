"""Evaluation: kNN top-1 and mAP@k at every nesting dim, from a checkpoint or saved embeddings.

Embeddings are extracted once at full dim; every dim is scored by slicing and renormalising
(index.search). One search per dim with k_max = max(k, map_k) feeds both metrics.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import torch

from core.cli import UsageError, make_parser
from core.config import ModelConfig
from core.device import pick_device
from core.nesting import default_dims, parse_nesting_list
from core.quantize import Calibration, fit_calibration
from index.search import GPU_MAX_K, build_index, gpu_count, search_index, set_threads
from trainer.checkpointing import train_config
from trainer.config import TrainConfig
from trainer.embed import eval_mode, extract_embeddings
from trainer.evaluate.dtypes import score_dtypes
from trainer.evaluate.metrics import average_precision_at_k, knn_predict
from trainer.evaluate.report import (
    describe,
    dtype_table,
    load_result,
    markdown_table,
    plot,
    run_label,
)
from trainer.progress import quiet_library_bars, use_bars
from trainer.rotation import pca_rotation

if TYPE_CHECKING:
    from core.checkpoint import Checkpoint

PROG = "python -m trainer.evaluate"


class Embedded(NamedTuple):
    """Both splits at full dim: the train split is the kNN bank, the test split the queries."""

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray


NPZ_KEYS = Embedded._fields


def pca_rotated(e: Embedded) -> Embedded:
    """Both splits in the principal axes of the bank (trainer.rotation: what `--rotation pca`
    serves once training finishes)."""
    r = pca_rotation(e.train_x)
    return e._replace(train_x=e.train_x @ r, test_x=e.test_x @ r)


def check_embeddings(e: Embedded, dims: list[int], k: int, map_k: int) -> None:
    """Refuse anything the metrics would silently get wrong, with a one-line UsageError."""
    train_x, train_y, test_x, test_y = e
    for name, x, y in (("train", train_x, train_y), ("test", test_x, test_y)):
        if x.ndim != 2 or y.ndim != 1:
            raise UsageError(f"{name}_x must be [N, D] and {name}_y [N], got {x.shape}, {y.shape}")
        if len(x) != len(y):
            raise UsageError(f"{name}_x has {len(x)} rows but {name}_y has {len(y)} labels")
        if len(x) == 0:
            raise UsageError(f"the {name} split is empty")
        if not np.issubdtype(x.dtype, np.number) or not np.isfinite(x).all():
            raise UsageError(f"{name}_x contains NaN, inf or non-numbers")
        if not np.issubdtype(y.dtype, np.integer):
            raise UsageError(f"{name}_y must hold integer labels, got dtype {y.dtype}")
    if train_x.shape[1] != test_x.shape[1]:
        raise UsageError(f"train_x width {train_x.shape[1]} != test_x width {test_x.shape[1]}")
    width = train_x.shape[1]
    if dims[-1] > width:
        raise UsageError(f"dim {dims[-1]} is larger than the embedding width {width}")
    if k < 1 or map_k < 1:
        raise UsageError(f"--k and --map-k must be >= 1, got {k} and {map_k}")
    if max(k, map_k) > len(train_x):
        raise UsageError(
            f"k={max(k, map_k)} is larger than the bank (train split has {len(train_x)} items)"
        )


def score_dims(
    e: Embedded,
    dims: list[int],
    k: int,
    map_k: int,
    *,
    use_gpu: bool | None = None,
    gpu_device: int = 0,
) -> np.ndarray:
    """[len(dims), 2] sums over e's test queries: (correct kNN votes, AP@map_k)."""
    train_x, train_y, test_x, test_y = e
    sums = np.zeros((len(dims), 2), dtype=np.float64)
    if len(test_x) == 0:
        return sums
    k_max = max(k, map_k)
    if use_gpu is None:
        use_gpu = gpu_count() > 0 and k_max <= GPU_MAX_K
    for row, dim in enumerate(dims):
        index = build_index(train_x, dim, use_gpu=use_gpu, gpu_device=gpu_device)
        scores, ids = search_index(index, test_x[:, :dim], k_max)
        del index
        sums[row, 0] = np.sum(knn_predict(scores, ids, train_y, k) == test_y)
        sums[row, 1] = np.sum(average_precision_at_k(ids, train_y, test_y, map_k))
    return sums


def metric_rows(sums: np.ndarray, n_test: int, dims: list[int], k: int, map_k: int) -> list[dict]:
    """The eval.json rows (docs/EVALUATION.md) from summed scores."""
    return [
        {
            "dim": int(d),
            "knn_top1": float(s[0] / n_test),
            "map_at_k": float(s[1] / n_test),
            "k": k,
            "map_k": map_k,
        }
        for d, s in zip(dims, sums, strict=True)
    ]


def evaluate_embeddings(
    e: Embedded,
    dims: list[int],
    k: int = 20,
    map_k: int = 10,
    *,
    use_gpu: bool | None = None,
    threads: int | None = None,
) -> list[dict]:
    """One metrics row per dim, all from the same full-dim embeddings."""
    check_embeddings(e, dims, k, map_k)
    set_threads(threads)
    sums = score_dims(e, dims, k, map_k, use_gpu=use_gpu)
    return metric_rows(sums, len(e.test_x), dims, k, map_k)


def _cuda_ordinal(device: torch.device) -> int:
    if device.type != "cuda":
        return 0
    return device.index if device.index is not None else torch.cuda.current_device()


def evaluate_encoder(
    encoder: torch.nn.Module,
    cfg: TrainConfig,
    device: torch.device | str,
    rank: int = 0,
    world_size: int = 1,
    *,
    k: int = 20,
    map_k: int = 10,
    batch_size: int | None = None,
) -> list[dict]:
    """In-training evaluation on cfg's test split; every rank must call it, all get the rows.

    Each rank embeds its share of both splits (all-gathered), then scores its share of the
    test queries against the whole bank; the sums are all-reduced.
    """
    device = torch.device(device)
    # a DDP wrapper would sync buffers on every forward; ranks run different batch counts
    encoder = getattr(encoder, "module", encoder)
    with eval_mode(encoder):
        batch = batch_size or cfg.batch_size
        e = embed_splits(encoder, cfg, cfg.model_spec(), device, batch, 0, rank, world_size)
    if cfg.rotation == "pca":
        e = pca_rotated(e)
    dims = list(cfg.nesting_list)
    check_embeddings(e, dims, k, map_k)
    set_threads(torch.get_num_threads())
    mine = slice(rank, None, world_size)
    sums = score_dims(
        e._replace(test_x=e.test_x[mine], test_y=e.test_y[mine]),
        dims,
        k,
        map_k,
        use_gpu=None if device.type == "cuda" else False,
        gpu_device=_cuda_ordinal(device),
    )
    if world_size > 1:
        import torch.distributed as dist

        on = device if dist.get_backend() == "nccl" else torch.device("cpu")
        total = torch.from_numpy(sums).to(on)
        dist.all_reduce(total)
        sums = total.cpu().numpy()
    return metric_rows(sums, len(e.test_x), dims, k, map_k)


def load_npz(path: Path) -> Embedded:
    """The four arrays of an --embeddings file, or a one-line UsageError."""
    if not path.is_file():
        raise UsageError(f"--embeddings {path}: no such file")
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [key for key in NPZ_KEYS if key not in npz.files]
            if missing:
                raise UsageError(
                    f"--embeddings {path} lacks {', '.join(missing)} "
                    f"(needs arrays {', '.join(NPZ_KEYS)})"
                )
            return Embedded(*(npz[key] for key in NPZ_KEYS))
    except UsageError:
        raise
    except Exception as e:
        raise UsageError(f"--embeddings {path}: not a readable .npz ({type(e).__name__})") from None


def embed_splits(
    encoder: torch.nn.Module,
    cfg: TrainConfig,
    model: ModelConfig,
    device: torch.device,
    batch_size: int,
    workers: int = 0,
    rank: int = 0,
    world_size: int = 1,
) -> Embedded:
    """cfg's two splits at full dim, preprocessed as the server preprocesses."""
    from core.preprocess import EvalPreprocess
    from trainer.data.datasets import load_splits

    preprocess = EvalPreprocess.of(model)
    arrays: list[np.ndarray] = []
    for name, ds in zip(("train", "test"), load_splits(cfg), strict=True):
        arrays += extract_embeddings(
            encoder,
            ds,
            preprocess,
            cfg.image_column,
            cfg.label_column,
            device,
            batch_size,
            rank,
            world_size,
            workers=workers,
            desc=f"embed {name}",
            bars=use_bars("auto"),
        )
    return Embedded(*arrays)


def embed_checkpoint(args) -> tuple[Embedded, Checkpoint, TrainConfig]:
    """Load the checkpoint, embed both splits once at full dim."""
    from core.checkpoint import load_checkpoint
    from core.encoder import load_encoder

    ckpt = load_checkpoint(args.checkpoint)
    overrides = {
        "dataset": args.dataset,
        "cache_dir": args.cache_dir,
        "test_split": args.test_split,
    }
    cfg = train_config(ckpt).model_copy(update={k: v for k, v in overrides.items() if v})
    device = pick_device(args.device)
    encoder = load_encoder(ckpt, device)
    if args.rotation != "auto" or args.random_init:
        encoder.rotation = None  # none, or refitted on the bank; random weights have no fitted one
    if args.random_init:
        torch.manual_seed(cfg.seed)
        for module in encoder.modules():
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
    arrays = embed_splits(encoder, cfg, ckpt.model, device, args.batch_size, args.workers)
    return arrays, ckpt, cfg


def dtype_rows(
    e: Embedded, dims: list[int], calibration: Calibration | None, k: int, map_k: int
) -> dict:
    """eval.json's `dtypes` rows; the int8 grid is the checkpoint's where it applies (its own
    rotation), else fitted on the bank as training fits it."""
    source = "checkpoint"
    if calibration is None or list(calibration.dims) != dims:
        calibration, source = fit_calibration(e.train_x, dims), "fitted on the bank"
    rows = score_dtypes(*e, dims, calibration, k, map_k)
    return {"int8_calibration": source, "dtypes": rows}


def build_parser():
    parser = make_parser(PROG, "kNN top-1 and mAP@k at every nesting dim.")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", type=Path, help="a trainer checkpoint.pt")
    source.add_argument(
        "--embeddings", type=Path, help="an .npz with train_x, train_y, test_x, test_y"
    )
    parser.add_argument("--dataset", help="override the checkpoint's dataset (or name an npz)")
    parser.add_argument("--cache-dir", type=Path, help="dataset cache (default: the checkpoint's)")
    parser.add_argument(
        "--test-split",
        help="score this split of the dataset instead of the checkpoint's --test-split (e.g. "
        "tune on validation, then score test once)",
    )
    parser.add_argument("--output", type=Path, default=Path("eval.json"), help="JSON results")
    parser.add_argument("--k", type=int, default=20, help="kNN neighbours (default: 20)")
    parser.add_argument("--map-k", type=int, default=10, help="mAP cut-off (default: 10)")
    parser.add_argument("--nesting-list", help="dims to score, e.g. 8,16,32 (default: the model's)")
    parser.add_argument(
        "--compare",
        type=Path,
        action="append",
        default=[],
        help="eval.json to overlay (repeatable)",
    )
    parser.add_argument("--plot", type=Path, help="PNG plot (default: --output with .png)")
    parser.add_argument("--no-plot", action="store_true", help="skip the PNG")
    parser.add_argument("--label", help="name of this run in the table and plot")
    parser.add_argument("--batch-size", type=int, default=256, help="extraction batch size")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers for extraction")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--threads", type=int, help="FAISS CPU threads (default: all cores)")
    parser.add_argument(
        "--random-init", action="store_true", help="score the checkpoint's network re-initialised"
    )
    parser.add_argument("--save-embeddings", type=Path, help="also write the extracted .npz")
    parser.add_argument(
        "--no-dtypes",
        action="store_true",
        help="skip the (dim x output type) table: float16, int8, binary, binary + rerank",
    )
    parser.add_argument(
        "--rotation",
        choices=("auto", "pca", "none"),
        default="auto",
        help="auto: the checkpoint's own (none for --embeddings); pca: fit one on the bank "
        "(what training fits); none: the trained coordinates",
    )
    parser.add_argument(
        "--adaptor",
        action="store_true",
        help="after the rotation, fit a post-hoc Matryoshka adaptor on the bank embeddings "
        "(trainer/posthoc.py) and score the adapted embeddings",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not use_bars("auto"):
        quiet_library_bars()
    if args.batch_size < 1 or args.workers < 0 or (args.threads is not None and args.threads < 1):
        raise UsageError("--batch-size and --threads must be >= 1, --workers >= 0")
    compare = [load_result(p) for p in args.compare]
    calibration = None
    if args.embeddings:
        if args.random_init:
            raise UsageError("--random-init needs --checkpoint")
        arrays = load_npz(args.embeddings)
        source = {"checkpoint": None, "dataset": args.dataset or str(args.embeddings)}
        model_dims = default_dims(arrays.train_x.shape[1]) if arrays.train_x.ndim == 2 else [1]
    else:
        arrays, ckpt, cfg = embed_checkpoint(args)
        source = {
            "checkpoint": str(args.checkpoint),
            "dataset": cfg.dataset,
            "step": ckpt.step,
            "epoch": ckpt.epoch,
        }
        if args.rotation == "auto":
            args.rotation = "pca" if ckpt.rotation is not None and not args.random_init else "none"
            # the served coordinates: the checkpoint's own int8 grid applies
            calibration = None if args.random_init else ckpt.calibration
        model_dims = list(ckpt.model.nesting_list)
    dims = parse_nesting_list(args.nesting_list) if args.nesting_list else model_dims
    if args.rotation == "pca":
        check_embeddings(arrays, dims, args.k, args.map_k)
        if len(arrays.train_x) < 2:
            raise UsageError("--rotation pca needs at least 2 train (bank) embeddings to fit")
        arrays = pca_rotated(arrays)
    if args.adaptor:
        from trainer.posthoc import apply_adaptor, fit_adaptor

        check_embeddings(arrays, dims, args.k, args.map_k)
        model = fit_adaptor(arrays.train_x)
        calibration = None  # new coordinates: the int8 grid is fitted on the bank instead
        arrays = arrays._replace(
            train_x=apply_adaptor(model, arrays.train_x), test_x=apply_adaptor(model, arrays.test_x)
        )
    if args.save_embeddings:
        args.save_embeddings.parent.mkdir(parents=True, exist_ok=True)
        np.savez(args.save_embeddings, **arrays._asdict())
    rows = evaluate_embeddings(arrays, dims, args.k, args.map_k, threads=args.threads)
    n = {"n_train": len(arrays.train_x), "n_test": len(arrays.test_x)}
    rotation = "none" if args.rotation == "auto" else args.rotation
    posthoc = {"posthoc": "adaptor"} if args.adaptor else {}
    result = {**source, "rotation": rotation, **posthoc, **n, "metrics": rows}
    if not args.no_dtypes:
        result |= dtype_rows(arrays, dims, calibration, args.k, args.map_k)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    label = args.label or ("random-init" if args.random_init else run_label(result, args.output))
    results = [result, *compare]
    labels = [label, *(run_label(r, p) for r, p in zip(compare, args.compare, strict=True))]
    print(describe(result))
    print(markdown_table(results, labels))
    table = dtype_table(result)
    if table:
        print(table)
    if not args.no_plot:
        plot_path = args.plot or args.output.with_suffix(".png")
        plot(results, labels, plot_path)
        print(f"wrote {args.output} and {plot_path}", file=sys.stderr)
    return 0
