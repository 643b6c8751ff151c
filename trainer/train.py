"""The training loop: `python -m trainer.train` (also the torchrun entry point).

`train()` reads top to bottom: `setup` (process group, data, model, optimizer, resume), then
epochs of `train_step`s (`run_epoch`), `end_epoch` (log, checkpoint, evaluate), the served
rotation fitted once the last step is done (`trainer.rotation`), and `finish`, which on SIGTERM
saves the step reached. The MoCo algorithm itself is `trainer.moco.MoCo`.
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from core.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from core.cli import UsageError, run_cli
from core.config import ModelConfig
from core.quantize import Calibration
from trainer.checkpointing import capture, train_config
from trainer.config import TrainConfig, parse_train_args
from trainer.data.datasets import Splits, TrainData, read_splits
from trainer.data.survey import SplitRecord, image_size_line, median_image_size
from trainer.distributed import process_group as dist
from trainer.distributed.env import DistEnv
from trainer.loss import MoCoMatryoshkaLoss, build_loss
from trainer.moco import MoCo, build_moco
from trainer.progress import ProgressLine, Reporter, quiet_library_bars
from trainer.rotation import fit_served
from trainer.sizing import check_config, choose_sizes

# Besides the whole ModelConfig, a resumed run must share these with its checkpoint: the data,
# the queue, and everything that defines the lr schedule (learning_rate, steps per epoch).
RESUME_MUST_MATCH = (
    "dataset",
    "train_split",
    "dataset_seed",
    "val_fraction",
    "queue_size",
    "prefix_heads",
    "epochs",
    "batch_size",
    "lr",
    "warmup_epochs",
)


class StopFlag:
    """SIGTERM/SIGINT set a flag; the loop saves after the current step and exits cleanly."""

    def __init__(self) -> None:
        self.signum: int | None = None
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        self.signum = signum


def learning_rate(cfg: TrainConfig, step: int, steps_per_epoch: int, world_size: int) -> float:
    """Linear scaling (lr is for a global batch of 256), linear warm-up, then cosine decay."""
    peak = cfg.lr * cfg.batch_size * world_size / 256
    warmup = cfg.warmup_epochs * steps_per_epoch
    total = cfg.epochs * steps_per_epoch
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(total - warmup, 1)
    return peak * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def resume_path(cfg: TrainConfig) -> Path | None:
    if cfg.resume == "never":
        return None
    if cfg.resume == "auto":
        path = cfg.output_dir / "checkpoint.pt"
        return path if path.exists() else None
    path = Path(cfg.resume)
    if not path.exists():
        raise UsageError(f"--resume {path}: no such checkpoint (use auto, never or a path)")
    return path


def restore(cfg: TrainConfig, path: Path, model: MoCo, loss_fn, optimizer, device) -> int:
    ckpt = load_checkpoint(path, map_location=device)
    check_resumable(cfg, ckpt, path)
    if ckpt.optimizer is None:
        raise UsageError(f"cannot resume from {path}: it holds no optimizer state")
    model.encoder_q.load_state_dict(ckpt.encoder_q)
    model.encoder_k.load_state_dict(ckpt.encoder_k)
    model.queue.copy_(ckpt.queue)
    model.queue_ptr.fill_(ckpt.queue_ptr)
    loss_fn.load_state_dict(ckpt.loss)
    optimizer.load_state_dict(ckpt.optimizer)
    return ckpt.step


def check_resumable(cfg: TrainConfig, ckpt: Checkpoint, path: Path) -> None:
    """Refuse, in one line naming every difference, a resume that would change the model, the
    data or the schedule half-way (e.g. --epochs 4 after 40: a silently shortened run)."""
    now = cfg.model_spec()
    pairs = [(k, getattr(ckpt.model, k), getattr(now, k)) for k in ModelConfig.model_fields]
    saved_cfg = train_config(ckpt)
    pairs += [(k, getattr(saved_cfg, k), getattr(cfg, k)) for k in RESUME_MUST_MATCH]
    diffs = [f"{_flag(k)} {_shown(a)} (now {_shown(b)})" for k, a, b in pairs if a != b]
    if diffs:
        raise UsageError(
            f"cannot resume from {path}: it was trained with {', '.join(diffs)}; use another "
            "--output-dir for a new run, or --resume never to start this one over"
        )


def _flag(name: str) -> str:
    name = "data_seed" if name == "dataset_seed" else name
    return "--" + name.replace("_", "-") if name in TrainConfig.model_fields else name


def _shown(value: object) -> str:
    return ",".join(map(str, value)) if isinstance(value, list | tuple) else str(value)


def log_epoch(out_dir: Path, record: dict) -> None:
    with open(out_dir / "train_log.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")


def evaluate_now(encoder, cfg, device, env, writer, epoch: int) -> None:
    from trainer.evaluate.cli import (
        evaluate_encoder,  # evaluation imports the trainer, not the reverse
    )

    dist.broadcast_buffers_(encoder)  # every rank scores the network rank 0 saves
    rows = evaluate_encoder(encoder, cfg, device, env.rank, env.world_size)
    if writer is not None:
        for row in rows:
            writer.add_scalar(f"eval/knn_top1/dim_{row['dim']}", row["knn_top1"], epoch)
            writer.add_scalar(f"eval/map_at_k/dim_{row['dim']}", row["map_at_k"], epoch)
        summary = ", ".join(f"{r['dim']}:{r['knn_top1']:.3f}" for r in rows)
        tqdm.write(f"epoch {epoch} kNN top-1 by dim: {summary}", file=sys.stderr)


@dataclass
class Run:
    """Everything set up once and used by every step."""

    cfg: TrainConfig
    env: DistEnv
    device: torch.device
    data: TrainData
    model: MoCo
    runner: torch.nn.Module  # the model, or its DDP wrapper
    optimizer: torch.optim.Optimizer
    loss_fn: MoCoMatryoshkaLoss
    total_steps: int
    splits: SplitRecord
    reporter: Reporter
    writer: SummaryWriter | None = None  # rank 0 only

    @property
    def steps_per_epoch(self) -> int:
        return self.data.steps_per_epoch

    def save(
        self,
        step: int,
        rotation: torch.Tensor | None = None,
        calibration: Calibration | None = None,
    ) -> Path:
        """Rank 0 writes the checkpoint; other ranks do nothing."""
        path = self.cfg.output_dir / "checkpoint.pt"
        if self.env.is_main:
            ckpt = capture(
                self.cfg,
                self.model,
                self.optimizer,
                step=step,
                epoch=step // self.steps_per_epoch,
                world_size=self.env.world_size,
                loss=self.loss_fn,
                rotation=rotation,
                calibration=calibration,
                splits=self.splits,
            )
            save_checkpoint(ckpt, path)
        return path


@dataclass
class EpochStats:
    """One epoch's running totals: mean loss per dim, throughput, time spent waiting for data."""

    loss_sums: torch.Tensor
    steps: int = 0
    images: int = 0
    waited: float = 0.0
    started: float = field(default_factory=time.perf_counter)

    def images_per_s(self) -> float:
        return self.images / (time.perf_counter() - self.started)

    def record(self, epoch: int, step: int, nesting_list: list[int]) -> dict:
        elapsed = time.perf_counter() - self.started
        means = (self.loss_sums / max(self.steps, 1)).tolist()
        return {
            "epoch": epoch + 1,
            "step": step,
            "loss_per_dim": dict(zip(map(str, nesting_list), means, strict=True)),
            "images_per_s": self.images / elapsed,
            "data_wait_fraction": self.waited / elapsed,
        }


def train(cfg: TrainConfig, environ=os.environ) -> dict:
    """Train (or resume) to cfg's last step; returns the step, per-epoch history, stopped."""
    run = setup(cfg, environ)
    cfg = run.cfg  # with the queue and batch sized to the data
    stop = StopFlag()
    step, history = run.model.steps, []
    while step < run.total_steps:
        epoch = step // run.steps_per_epoch
        stats, step, stopping = run_epoch(run, epoch, step, stop)
        if stopping:
            return finish(run, step, history, stopped=True)
        history.append(end_epoch(run, epoch, step, stats))
    # every rank embeds a share, with the BN statistics of the weights rank 0 saves: the
    # rotation (--rotation pca) and the int8 grid, from one pass
    encoder = dist.broadcast_buffers_(run.model.encoder_q)
    rotation, calibration = fit_served(encoder, cfg, run.device, run.env.rank, run.env.world_size)
    run.save(step, rotation, calibration)
    return finish(run, step, history, stopped=False)


def place_model(cfg: TrainConfig, env: DistEnv, device: torch.device) -> MoCo:
    """The MoCo model on its device: SyncBatchNorm across ranks if asked, channels-last on GPU,
    compiled in place if asked (the state_dict keys, and so the checkpoint, stay the same)."""
    model = build_moco(cfg, bn_splits=cfg.bn_splits if env.world_size == 1 else 1)
    if cfg.sync_bn and env.is_distributed:
        if device.type != "cuda":
            raise UsageError(
                "--sync-bn needs CUDA (SyncBatchNorm has no CPU kernel); drop it on CPU"
            )
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    fmt = torch.channels_last if device.type == "cuda" else torch.preserve_format
    model = model.to(device, memory_format=fmt)
    if cfg.compile:
        model.encoder_q.compile()
        model.encoder_k.compile()
    return model


def setup(cfg: TrainConfig, environ) -> Run:
    """Process group, data (rank 0 downloads first), model, optimizer, loss, resume, DDP."""
    env, device, _ = dist.setup(cfg.dist_backend, cfg.device, environ)
    reporter = Reporter(cfg.log_format)
    if not reporter.bars:
        quiet_library_bars()
    torch.manual_seed(cfg.seed)
    if env.is_main:
        cfg.output_dir.mkdir(parents=True, exist_ok=True)
        splits = read_splits(cfg)
    dist.barrier()
    if not env.is_main:
        splits = read_splits(cfg)
    cfg = fit_to_data(cfg, splits, env)
    data = TrainData(cfg, splits.train, env.rank, env.world_size, device)
    model = place_model(cfg, env, device)
    loss_fn = build_loss(cfg).to(device)
    optimizer = torch.optim.SGD(
        [*model.encoder_q.parameters(), *loss_fn.parameters()],
        lr=cfg.lr,
        momentum=cfg.momentum,
        weight_decay=cfg.weight_decay,
    )
    path = resume_path(cfg)
    if path is not None:
        model.steps = restore(cfg, path, model, loss_fn, optimizer, device)
        if env.is_main:
            epoch = model.steps // data.steps_per_epoch
            print(f"resumed from {path} at step {model.steps} (epoch {epoch})", file=sys.stderr)
    runner = dist.wrap_ddp(model) if env.is_distributed else model
    total_steps = cfg.epochs * data.steps_per_epoch
    if cfg.max_steps:
        total_steps = min(total_steps, cfg.max_steps)
    writer = None
    if env.is_main:
        writer = SummaryWriter(str(cfg.output_dir / "tb"), purge_step=model.steps)
    return Run(
        cfg,
        env,
        device,
        data,
        model,
        runner,
        optimizer,
        loss_fn,
        total_steps,
        splits.record,
        reporter,
        writer,
    )


def fit_to_data(cfg: TrainConfig, splits: Splits, env: DistEnv) -> TrainConfig:
    """The queue and batch sized to the train split (trainer.sizing) and checked; rank 0 then
    says what was chosen, the split sizes and the image size: stated choices, not surprises."""
    n_train = len(splits.train)
    sizes = choose_sizes(cfg, n_train, env.world_size)
    cfg = cfg.model_copy(update={"batch_size": sizes.batch_size, "queue_size": sizes.queue_size})
    check_config(cfg, n_train, env.world_size)
    if env.is_main:
        median = median_image_size(splits.train, cfg.image_column)
        for line in (sizes.note, splits.record.line(), image_size_line(median, cfg.image_size)):
            if line:
                print(line, file=sys.stderr, flush=True)
    return cfg


def train_step(run: Run, im_q: torch.Tensor, im_k: torch.Tensor, step: int):
    """One MoCo step at `step`'s learning rate; returns (loss, per-dim losses, lr)."""
    cfg, device = run.cfg, run.device
    if device.type == "cuda":
        im_q = im_q.contiguous(memory_format=torch.channels_last)
        im_k = im_k.contiguous(memory_format=torch.channels_last)
    lr = learning_rate(cfg, step, run.steps_per_epoch, run.env.world_size)
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    amp = cfg.amp == "bf16" or (cfg.amp == "auto" and device.type == "cuda")
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
        q, k, q_prefix = run.runner(im_q, im_k)
    loss, per_dim = run.loss_fn(q, k, run.model.queue, q_prefix)
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    run.optimizer.step()
    run.model.enqueue(k)
    return loss, per_dim, lr


def sync_losses_and_stop(run: Run, sums: torch.Tensor, steps: int, stop: StopFlag):
    """Mean over ranks and steps of the summed losses, and whether any rank got SIGTERM.

    One collective carries both, at the same steps on every rank (every --log-every steps and
    at the epoch's end), so every rank stops after the same step and nobody is left waiting
    in a collective. It is the loop's only host sync.
    """
    flag = torch.tensor([float(stop.signum is not None)], device=sums.device)
    stats = dist.all_reduce_mean(torch.cat([sums / steps, flag]))
    return stats[:-1], bool(stats[-1] > 0)


def log_losses(run: Run, bar: tqdm, stats: EpochStats, means: torch.Tensor, lr, step) -> None:
    """TensorBoard and the progress bar: the weighted loss, then each dim, averaged over the
    steps since the last log."""
    if not run.env.is_main:
        return
    values = means.tolist()
    bar.set_postfix(loss=f"{values[0]:.3f}", img_s=f"{stats.images_per_s():.0f}")
    run.writer.add_scalar("train/loss", values[0], step)
    run.writer.add_scalar("train/lr", lr, step)
    for d, value in zip(run.cfg.nesting_list, values[1:], strict=True):
        run.writer.add_scalar(f"train/loss_dim_{d}", value, step)
    if step % run.steps_per_epoch and step < run.total_steps:  # else the epoch's line says it
        run.reporter.progress(step_line(run, stats, values, lr, step))


def step_line(run: Run, stats: EpochStats, values: list[float], lr: float, step: int):
    """The progress line of the steps since the last log (throughput: the epoch so far)."""
    elapsed = time.perf_counter() - stats.started
    return ProgressLine(
        event="step",
        epoch=(step - 1) // run.steps_per_epoch + 1,
        epochs=run.cfg.epochs,
        step=step,
        total_steps=run.total_steps,
        loss_per_dim=dict(zip(map(str, run.cfg.nesting_list), values[1:], strict=True)),
        images_per_s=stats.images / elapsed,
        data_wait_fraction=stats.waited / elapsed,
        loss=values[0],
        lr=lr,
    )


def run_epoch(run: Run, epoch: int, step: int, stop: StopFlag) -> tuple[EpochStats, int, bool]:
    """Steps from `step` to the epoch's end (or max_steps, or a stop signal).

    Losses are summed on the device and read back every --log-every steps: a per-step read
    would make the host wait for the GPU at every step.
    """
    cfg, spe = run.cfg, run.steps_per_epoch
    run.model.train()
    bar = tqdm(
        total=spe,
        initial=step % spe,
        desc=f"epoch {epoch + 1}/{cfg.epochs}",
        disable=not (run.env.is_main and run.reporter.bars),
        dynamic_ncols=True,
        file=sys.stderr,
    )
    stats = EpochStats(torch.zeros(len(cfg.nesting_list), device=run.device))
    pending = torch.zeros(1 + len(cfg.nesting_list), device=run.device)  # loss, per dim
    pending_steps = 0
    stopping = False
    t_ready = time.perf_counter()
    for im_q, im_k in run.data.epoch(epoch, step % spe):
        stats.waited += time.perf_counter() - t_ready
        loss, per_dim, lr = train_step(run, im_q, im_k, step)
        step += 1
        pending += torch.cat([loss.detach()[None], per_dim.detach()])
        pending_steps += 1
        stats.steps += 1
        stats.images += len(im_q) * run.env.world_size
        if step % cfg.log_every == 0 or step % spe == 0 or step >= run.total_steps:
            means, stopping = sync_losses_and_stop(run, pending, pending_steps, stop)
            stats.loss_sums += means[1:] * pending_steps
            log_losses(run, bar, stats, means, lr, step)
            pending.zero_()
            pending_steps = 0
        elif not run.env.is_distributed:
            stopping = stop.signum is not None  # one process has nobody to agree with
        bar.update()
        if stopping or step >= run.total_steps:
            break
        if cfg.checkpoint_every and step % cfg.checkpoint_every == 0:
            run.save(step)
        t_ready = time.perf_counter()
    bar.close()
    return stats, step, stopping


def end_epoch(run: Run, epoch: int, step: int, stats: EpochStats) -> dict:
    """Log the epoch, checkpoint, and evaluate when --eval-interval says so."""
    cfg = run.cfg
    record = stats.record(epoch, step, cfg.nesting_list)
    if run.writer is not None:
        run.writer.add_scalar("train/images_per_s", record["images_per_s"], step)
        run.writer.add_scalar("train/data_wait_fraction", record["data_wait_fraction"], step)
        run.save(step)
        log_epoch(cfg.output_dir, record)
        run.reporter.progress(
            ProgressLine(event="epoch", epochs=cfg.epochs, total_steps=run.total_steps, **record)
        )
    epoch_done = step % run.steps_per_epoch == 0
    if cfg.eval_interval and epoch_done and (epoch + 1) % cfg.eval_interval == 0:
        evaluate_now(run.model.encoder_q, cfg, run.device, run.env, run.writer, epoch + 1)
    return record


def finish(run: Run, step: int, history: list[dict], stopped: bool) -> dict:
    """On a stop signal, save first; no collectives here (every rank stopped at this step)."""
    if stopped:
        path = run.save(step)
        if run.env.is_main:
            print(f"stop signal: saved step {step} to {path}, exiting", file=sys.stderr)
    if run.writer is not None:
        run.writer.close()
    dist.cleanup()
    return {"step": step, "stopped": stopped, "history": history, "is_main": run.env.is_main}


def main(argv: list[str] | None = None) -> int:
    cfg = parse_train_args(argv)
    result = train(cfg)
    if not result["is_main"] or result["stopped"]:
        return 0
    if result["history"]:
        history = result["history"]
        for record in history[:1] + history[1:][-1:]:  # the first and last epochs, once each
            losses = " ".join(f"{d}:{v:.3f}" for d, v in record["loss_per_dim"].items())
            print(f"loss per dim, epoch {record['epoch']}: {losses}", file=sys.stderr)
    Reporter(cfg.log_format).done(cfg.output_dir / "checkpoint.pt", result["step"])
    return 0


if __name__ == "__main__":
    run_cli(main, "python -m trainer.train")
