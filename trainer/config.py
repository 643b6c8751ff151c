"""The one typed training config. CLI flags are generated from its fields."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from core.cli import add_model_flags, build_model_from_args, make_parser
from core.config import Arch, ModelConfig, NestingList
from core.preprocess import IMAGENET_MEAN, IMAGENET_STD


def _weights(v: object) -> object:
    if isinstance(v, str):
        try:
            return [float(w) for w in v.replace(" ", "").split(",") if w]
        except ValueError:
            raise ValueError(
                f"must be comma-separated numbers like 1,1,2,2,4,4, got {v!r}"
            ) from None
    return v


WeightList = Annotated[list[float], BeforeValidator(_weights)]


def training_weights(
    nesting_list: Sequence[int], mode: str, explicit: Sequence[float] = ()
) -> list[float]:
    """Per-dim weights. mean, sqrt, linear and an explicit list sum to 1, so adding dims keeps
    the effective lr; sqrt and linear lean towards the large dims, whose last coordinates only
    the largest losses train."""
    n = len(nesting_list)
    if explicit:
        return [w / sum(explicit) for w in explicit]
    if mode == "ones":
        return [1.0] * n
    if mode in ("sqrt", "linear"):
        raw = [d**0.5 if mode == "sqrt" else float(d) for d in nesting_list]
        return [r / sum(raw) for r in raw]
    return [1.0 / n] * n


class TrainConfig(BaseModel):
    """Everything a training run needs. Stored in the checkpoint as a plain dict."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    dataset: str = Field(
        "shapes", description="shapes | imagenet-100 | any Hugging Face dataset id | local path"
    )
    cache_dir: Path = Field(Path("data"), description="where datasets are generated/cached")
    image_column: str = Field("image", description="image column of a Hugging Face dataset")
    label_column: str = Field("label", description="label column of a Hugging Face dataset")
    train_split: str = Field("train", description="split used for training and as kNN bank")
    test_split: str = Field(
        "auto", description="split used for evaluation; auto = test or validation"
    )
    val_fraction: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="tuning: hold out this fraction of the train split (seeded) and evaluate "
        "on it instead of the test split, which is then never read (0 = off)",
    )
    arch: Arch = Field(
        "convnet", description="backbone: convnet (small, CPU default), resnet18, resnet50"
    )
    image_size: int = Field(32, ge=16, le=512, description="training crop size in pixels")
    nesting_list: NestingList = Field(
        [8, 16, 32, 64, 128, 256],
        description="Matryoshka dims, comma-separated, ascending; the last is the head dim",
    )
    loss_weights: Literal["mean", "sqrt", "linear", "ones"] = Field(
        "sqrt",
        description="per-dim loss weights: sqrt (proportional to sqrt(dim): every dim's loss "
        "sends about the same gradient into the network), linear (proportional to dim), mean "
        "(1/len each), all summing to 1; ones (the MRL paper's plain sum)",
    )
    dim_weights: WeightList = Field(
        [],
        description="explicit per-dim loss weights, one per nesting dim, comma-separated "
        "(scaled to sum to 1, like MRL's relative_importance); overrides --loss-weights",
    )
    distill: float = Field(
        0.0,
        ge=0,
        description="weight of distilling the full-dim similarity distribution over the queue "
        "into every smaller prefix (teacher detached; 0 = off)",
    )
    prefix_heads: bool = Field(
        False,
        description="a linear predictor per nesting dim on the query side, used only by the "
        "loss (the served embedding is unchanged)",
    )
    prefix_grad: float = Field(
        0.0,
        ge=0,
        le=1,
        description="scale of the gradient the nested (below full-dim) losses send into the "
        "backbone; the head still gets them in full and the backbone's weights are renormalised "
        "(0, the default: the backbone trains like the non-nested model and only the head learns "
        "the nesting; 1: the plain Matryoshka loss)",
    )
    rotation: Literal["pca", "none"] = Field(
        "pca",
        description="basis of the served embedding, fitted when training finishes: pca rotates "
        "it (orthogonally: full-dim similarities unchanged) so each prefix holds the most "
        "variance of the train split's embeddings; none serves the trained coordinates",
    )
    batch_size: int = Field(128, ge=2, description="images per process per step")
    epochs: int = Field(40, ge=1)
    lr: float = Field(
        0.015, gt=0, description="learning rate for a global batch of 256 (scaled linearly)"
    )
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum")
    weight_decay: float = Field(5e-4, ge=0)
    warmup_epochs: float = Field(1.0, ge=0, description="linear lr warm-up, then cosine decay")
    queue_size: int = Field(512, ge=0, description="negatives in the MoCo queue (K)")
    moco_m: float = Field(0.99, ge=0, lt=1, description="key encoder momentum")
    temp: float = Field(0.2, gt=0, description="InfoNCE temperature")
    mlp_hidden: int = Field(0, ge=0, description="MLP head hidden width; 0 = backbone width")
    head_bn: bool = Field(
        True, description="parameter-free BN on the embedding (equal energy in every dim)"
    )
    shuffle_bn: bool = Field(True, description="shuffle the key batch across BN groups")
    bn_splits: int = Field(
        2, ge=1, description="single process: BN statistics over this many sub-batches"
    )
    sync_bn: bool = Field(False, description="DDP: SyncBatchNorm instead of shuffle BN")
    augment: Literal["auto", "batch", "worker"] = Field(
        "auto",
        description="batch: batched tensor augmentation on the device; worker: per-sample "
        "torchvision v2 in DataLoader workers; auto: batch on GPU and for any dataset that fits "
        "in memory (2 GiB decoded), else worker",
    )
    decode: Literal["auto", "pil", "device"] = Field(
        "auto",
        description="where JPEG bytes are decoded: pil (DataLoader workers), device (in "
        "batches on the training device: nvjpeg on a GPU; other formats still PIL), auto: "
        "device on a GPU when the dataset holds JPEG bytes and --augment is batch",
    )
    preload: Literal["auto", "off"] = Field(
        "auto",
        description="auto: with --augment batch and --decode pil, decode a dataset that fits "
        "in 2 GiB once and keep it in memory; off: decode every epoch",
    )
    amp: Literal["auto", "bf16", "off"] = Field("auto", description="auto = bf16 on GPU")
    compile: bool = Field(
        False, description="torch.compile the encoders (GPU: faster steps after a slow start)"
    )
    log_every: int = Field(
        10,
        ge=1,
        description="log the losses every N steps (one line each without a terminal); between "
        "logs no step waits for the host (with several processes, a stop signal is also agreed "
        "every N steps)",
    )
    log_format: Literal["auto", "text", "json"] = Field(
        "auto",
        description="auto: progress bars on a terminal, text lines otherwise; text: one line "
        "per --log-every steps and per epoch (step, loss per dim, img/s, data wait); json: the "
        "same as one JSON object per line on stdout",
    )
    device: Literal["auto", "cpu", "cuda"] = Field("auto")
    workers: int = Field(2, ge=0, description="DataLoader worker processes")
    seed: int = Field(0)
    data_seed: int | None = Field(
        None,
        description="draws the data: the generated shapes dataset, or the 90/10 split of a "
        "dataset with one split (default: --seed); fix it so that seeds vary only the training "
        "randomness",
    )
    output_dir: Path = Field(Path("runs/default"), description="checkpoint and TensorBoard dir")
    resume: str = Field(
        "auto", description="auto (continue from output-dir/checkpoint.pt), never, or a path"
    )
    checkpoint_every: int = Field(0, ge=0, description="also checkpoint every N steps (0 = off)")
    eval_interval: int = Field(
        0, ge=0, description="evaluate on the test split every N epochs (0 = off)"
    )
    max_steps: int = Field(0, ge=0, description="stop after N total steps (0 = all epochs)")
    dist_backend: Literal["auto", "nccl", "gloo"] = Field("auto")
    allow_large_queue: bool = Field(
        False, description="allow a queue holding over 25%% of the dataset (usually collapses)"
    )

    @model_validator(mode="after")
    def _check_weights(self) -> TrainConfig:
        w = self.dim_weights
        if w and (len(w) != len(self.nesting_list) or min(w) < 0 or sum(w) <= 0):
            raise ValueError(
                f"--dim-weights needs {len(self.nesting_list)} non-negative numbers (one per "
                f"nesting dim {self.nesting_list}) with a positive sum, got {w}"
            )
        return self

    @property
    def embed_dim(self) -> int:
        return self.nesting_list[-1]

    @property
    def dataset_seed(self) -> int:
        """The seed that draws the data (`shapes`, or a one-split dataset's 90/10 split)."""
        return self.seed if self.data_seed is None else self.data_seed

    def plain(self) -> dict:
        """JSON-safe dict, for the checkpoint (weights_only) and TensorBoard."""
        return self.model_dump(mode="json")

    def dim_loss_weights(self) -> list[float]:
        """The per-dim loss weights this run trains with (--loss-weights, --dim-weights)."""
        return training_weights(self.nesting_list, self.loss_weights, self.dim_weights)

    def model_spec(self) -> ModelConfig:
        """The served model this run trains: what the checkpoint tells evaluation and serving."""
        return ModelConfig(
            arch=self.arch,
            nesting_list=self.nesting_list,
            image_size=self.image_size,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            mlp_hidden=self.mlp_hidden,
            head_bn=self.head_bn,
        )


def parse_train_args(argv: list[str] | None = None) -> TrainConfig:
    prog = "python -m trainer.train"
    parser = make_parser(prog, "Train a MoCo v2 + Matryoshka image encoder.")
    add_model_flags(parser, TrainConfig)
    ns = parser.parse_args(argv)
    return build_model_from_args(TrainConfig, ns, prog)  # type: ignore[return-value]
