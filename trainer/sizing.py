"""Queue and batch sizes that fit the training split.

MoCo's queue must stay a small share of the data (docs/CALIBRATION.md: K = 10% of the images
trained, 82% collapsed) and be a multiple of the global batch (keys are enqueued one global
batch at a time). Flags the user set are kept and checked; sizes left at their defaults follow
the data when the defaults do not fit, so a folder of a few hundred photos trains without
flags, while a default that fits (the built-in `shapes`: 5,000 images, queue 512, batch 128)
is left exactly as it is.
"""

from __future__ import annotations

from dataclasses import dataclass

from core.cli import UsageError
from trainer.config import TrainConfig

TARGET_QUEUE_FRACTION = 0.10  # what CALIBRATION measured to train
MAX_QUEUE_FRACTION = 0.25  # over this, refused unless --allow-large-queue
MIN_AUTO_BATCH = 16  # the batch is never shrunk below this (BN statistics, shuffle BN)


@dataclass(frozen=True)
class Sizes:
    """The per-process batch and queue a run trains with, and the line that says why."""

    batch_size: int
    queue_size: int
    note: str | None  # None: the user set both, nothing was chosen


def fitting_queue(n_train: int, global_batch: int) -> int | None:
    """The largest multiple of the global batch within 10% of the split; failing that one
    global batch if it is within 25%; None when not even that fits."""
    queue = int(TARGET_QUEUE_FRACTION * n_train) // global_batch * global_batch
    if queue:
        return queue
    return global_batch if global_batch <= MAX_QUEUE_FRACTION * n_train else None


def fitting_batch(n_train: int, world_size: int, start: int, queue: int | None = None) -> int:
    """Halve `start` (not below 16) until a global batch is within 10% of the split and divides
    the queue the user set, if any."""
    batch = start
    while batch > MIN_AUTO_BATCH and (
        batch * world_size > TARGET_QUEUE_FRACTION * n_train
        or (queue is not None and queue % (batch * world_size))
    ):
        batch = max(batch // 2, MIN_AUTO_BATCH)
    return batch


def queue_fits(queue: int, global_batch: int, n_train: int, allow_large: bool) -> bool:
    """What check_config accepts."""
    too_large = queue > MAX_QUEUE_FRACTION * n_train and not allow_large
    return queue % global_batch == 0 and not too_large


def choose_sizes(cfg: TrainConfig, n_train: int, world_size: int) -> Sizes:
    """Keep what the user set and defaults that fit; size the rest to the split."""
    explicit = cfg.model_fields_set
    batch_set, queue_set = "batch_size" in explicit, "queue_size" in explicit
    if batch_set and queue_set:
        return Sizes(cfg.batch_size, cfg.queue_size, None)
    batch = cfg.batch_size
    if not batch_set:
        batch = fitting_batch(n_train, world_size, batch, cfg.queue_size if queue_set else None)
    global_batch = batch * world_size
    queue = cfg.queue_size
    # --allow-large-queue lifts the refusal of a queue the user set, never sizes one
    if not queue_set and not queue_fits(queue, global_batch, n_train, allow_large=False):
        fitted = fitting_queue(n_train, global_batch)
        queue = fitted or _smallest_queue(cfg, n_train, batch, world_size)
    return Sizes(batch, queue, _note(cfg, batch, queue, n_train, world_size))


def _smallest_queue(cfg: TrainConfig, n_train: int, batch: int, world_size: int) -> int:
    """One global batch when --allow-large-queue allows it; else a one-line refusal."""
    global_batch = batch * world_size
    if cfg.allow_large_queue:
        return global_batch
    smaller = fitting_batch(n_train, world_size, batch)
    if "batch_size" in cfg.model_fields_set and fitting_queue(n_train, smaller * world_size):
        fix = f"use --batch-size {smaller}"
    else:
        fix = (
            f"add images (a global batch of {MIN_AUTO_BATCH * world_size} needs at least "
            f"{int(MIN_AUTO_BATCH * world_size / MAX_QUEUE_FRACTION)}) or pass --allow-large-queue"
        )
    raise UsageError(
        f"{n_train} training images are too few for --batch-size {batch} x {world_size} "
        f"processes: a queue of one global batch would be {global_batch / n_train:.0%} of them "
        f"(at most {MAX_QUEUE_FRACTION:.0%}, or training collapses); {fix}"
    )


def _note(cfg: TrainConfig, batch: int, queue: int, n_train: int, world_size: int) -> str:
    per_process = f" per process x {world_size}" if world_size > 1 else ""
    return (
        f"queue size {queue} = {queue / n_train:.0%} of {n_train} training images "
        f"({_queue_origin(cfg, queue, n_train)}), batch size {batch}{per_process} "
        f"({_batch_origin(cfg, batch)}); set --queue-size / --batch-size to override"
    )


def _queue_origin(cfg: TrainConfig, queue: int, n_train: int) -> str:
    if "queue_size" in cfg.model_fields_set:
        return "set by --queue-size"
    if queue == TrainConfig.model_fields["queue_size"].default:
        return "the default"
    if queue <= TARGET_QUEUE_FRACTION * n_train:
        return "sized to the data: the largest multiple of the global batch within 10% of it"
    return "sized to the data: one global batch, too few images for 10%"


def _batch_origin(cfg: TrainConfig, batch: int) -> str:
    default = TrainConfig.model_fields["batch_size"].default
    if "batch_size" in cfg.model_fields_set:
        return "set by --batch-size"
    return "the default" if batch == default else f"halved from the default {default} to fit"


def check_config(cfg: TrainConfig, n_train: int, world_size: int) -> None:
    """Refuse sizes that cannot train, suggesting values this check accepts."""
    global_batch = cfg.batch_size * world_size
    if queue_fits(cfg.queue_size, global_batch, n_train, cfg.allow_large_queue):
        return
    if cfg.queue_size % global_batch:
        problem = (
            f"--queue-size {cfg.queue_size} must be a multiple of the global batch "
            f"{global_batch} (--batch-size {cfg.batch_size} x {world_size} processes)"
        )
    else:
        problem = (
            f"--queue-size {cfg.queue_size} is {cfg.queue_size / n_train:.0%} of the "
            f"{n_train} training images: each image would meet its own older key as a negative "
            f"and training collapses (at most {MAX_QUEUE_FRACTION:.0%}, or --allow-large-queue)"
        )
    raise UsageError(f"{problem}; use {_suggestion(cfg, n_train, world_size)}")


def _suggestion(cfg: TrainConfig, n_train: int, world_size: int) -> str:
    """Flags that pass check_config: the queue alone when the batch allows one."""
    queue = fitting_queue(n_train, cfg.batch_size * world_size)
    if queue is not None:
        return f"--queue-size {queue}"
    batch = fitting_batch(n_train, world_size, cfg.batch_size)
    queue = fitting_queue(n_train, batch * world_size)
    if queue is None:
        return f"more images (one global batch of {batch * world_size} is over 25% of them)"
    return f"--batch-size {batch} --queue-size {queue}"
