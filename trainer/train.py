"""The training loop: `python -m trainer.train` (also the torchrun entry point).

Read it top to bottom: set up (process group, data, model, optimizer), resume, then epochs of
MoCo steps with a checkpoint at every epoch end, every --checkpoint-every steps and on SIGTERM.
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import time
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from trainer import distributed as dist
from trainer.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from trainer.config import ModelConfig, TrainConfig, parse_train_args
from trainer.data import TrainData, load_splits
from trainer.errors import UsageError, run_cli
from trainer.loss import build_loss
from trainer.model import MoCo, build_moco

MAX_QUEUE_FRACTION = 0.25
# Besides the whole ModelConfig, a resumed run must share these with its checkpoint.
RESUME_MUST_MATCH = ("queue_size", "dataset", "val_fraction", "prefix_heads")


class StopFlag:
    """SIGTERM/SIGINT set a flag; the loop saves after the current step and exits cleanly."""

    def __init__(self) -> None:
        self.signum: int | None = None
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        self.signum = signum


def check_config(cfg: TrainConfig, n_train: int, world_size: int) -> None:
    global_batch = cfg.batch_size * world_size
    if cfg.queue_size % global_batch:
        raise UsageError(
            f"--queue-size {cfg.queue_size} must be a multiple of the global batch "
            f"{global_batch} (--batch-size {cfg.batch_size} x {world_size} processes)"
        )
    if cfg.queue_size > MAX_QUEUE_FRACTION * n_train and not cfg.allow_large_queue:
        raise UsageError(
            f"--queue-size {cfg.queue_size} is {cfg.queue_size / n_train:.0%} of the "
            f"{n_train} training images: each image would meet its own older key as a negative "
            f"and training collapses; use at most {int(MAX_QUEUE_FRACTION * n_train)} "
            "(or --allow-large-queue)"
        )


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
    now = ModelConfig.of(cfg)
    pairs = [(k, getattr(ckpt.model, k), getattr(now, k)) for k in ModelConfig.model_fields]
    pairs += [(k, getattr(ckpt.train, k), getattr(cfg, k)) for k in RESUME_MUST_MATCH]
    for key, saved, now in pairs:
        if saved != now:
            raise UsageError(
                f"cannot resume from {path}: it was trained with {key}={saved!r}, "
                f"this run has {now!r} (use another --output-dir or --resume never)"
            )
    if ckpt.optimizer is None:
        raise UsageError(f"cannot resume from {path}: it holds no optimizer state")
    model.encoder_q.load_state_dict(ckpt.encoder_q)
    model.encoder_k.load_state_dict(ckpt.encoder_k)
    model.queue.copy_(ckpt.queue)
    model.queue_ptr.fill_(ckpt.queue_ptr)
    loss_fn.load_state_dict(ckpt.loss)
    optimizer.load_state_dict(ckpt.optimizer)
    return ckpt.step


def log_epoch(out_dir: Path, record: dict) -> None:
    with open(out_dir / "train_log.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")


def evaluate_now(encoder, cfg, device, env, writer, epoch: int) -> None:
    from trainer.evaluate import evaluate_encoder  # evaluation imports the trainer, not the reverse

    rows = evaluate_encoder(encoder, cfg, device, env.rank, env.world_size)
    if writer is not None:
        for row in rows:
            writer.add_scalar(f"eval/knn_top1/dim_{row['dim']}", row["knn_top1"], epoch)
            writer.add_scalar(f"eval/map_at_k/dim_{row['dim']}", row["map_at_k"], epoch)
        summary = ", ".join(f"{r['dim']}:{r['knn_top1']:.3f}" for r in rows)
        tqdm.write(f"epoch {epoch} kNN top-1 by dim: {summary}")


def train(cfg: TrainConfig, environ=os.environ) -> dict:
    env, device, _ = dist.setup(cfg.dist_backend, cfg.device, environ)
    torch.manual_seed(cfg.seed)
    if env.is_main:
        cfg.output_dir.mkdir(parents=True, exist_ok=True)
        train_ds, _ = load_splits(cfg)  # rank 0 generates/downloads first
    dist.barrier()
    if not env.is_main:
        train_ds, _ = load_splits(cfg)
    check_config(cfg, len(train_ds), env.world_size)

    data = TrainData(cfg, train_ds, env.rank, env.world_size, device)
    spe = data.steps_per_epoch
    total_steps = cfg.epochs * spe
    if cfg.max_steps:
        total_steps = min(total_steps, cfg.max_steps)
    model = build_moco(cfg, bn_splits=cfg.bn_splits if env.world_size == 1 else 1)
    if cfg.sync_bn and env.is_distributed:
        if device.type != "cuda":
            raise UsageError(
                "--sync-bn needs CUDA (SyncBatchNorm has no CPU kernel); drop it on CPU"
            )
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    cuda = device.type == "cuda"
    model = model.to(device, memory_format=torch.channels_last if cuda else torch.preserve_format)
    loss_fn = build_loss(cfg).to(device)
    optimizer = torch.optim.SGD(
        [*model.encoder_q.parameters(), *loss_fn.parameters()],
        lr=cfg.lr,
        momentum=cfg.momentum,
        weight_decay=cfg.weight_decay,
    )

    step = 0
    path = resume_path(cfg)
    if path is not None:
        step = restore(cfg, path, model, loss_fn, optimizer, device)
        if env.is_main:
            print(f"resumed from {path} at step {step} (epoch {step // spe})", file=sys.stderr)
    # forward_sync_buffers=False: the queue is identical on every rank by construction, and
    # broadcasting a 65,536 x 2,048 queue every step would cost more than the step.
    runner = (
        DistributedDataParallel(model, forward_sync_buffers=False) if env.is_distributed else model
    )
    amp = cfg.amp == "bf16" or (cfg.amp == "auto" and cuda)
    writer = SummaryWriter(str(cfg.output_dir / "tb"), purge_step=step) if env.is_main else None
    stop = StopFlag()
    state = lambda s: Checkpoint.capture(  # noqa: E731
        cfg, model, optimizer, step=s, epoch=s // spe, world_size=env.world_size, loss=loss_fn
    )
    ckpt = cfg.output_dir / "checkpoint.pt"
    history: list[dict] = []

    while step < total_steps:
        epoch = step // spe
        model.train()
        bar = tqdm(
            total=spe,
            initial=step % spe,
            desc=f"epoch {epoch + 1}/{cfg.epochs}",
            disable=not env.is_main,
            dynamic_ncols=True,
            file=sys.stderr,
        )
        sums = torch.zeros(len(cfg.nesting_list), device=device)
        n_steps, images, waited, t_epoch = 0, 0, 0.0, time.perf_counter()
        stopping = False
        t_ready = time.perf_counter()
        for im_q, im_k in data.epoch(epoch, step % spe):
            waited += time.perf_counter() - t_ready
            if cuda:
                im_q = im_q.contiguous(memory_format=torch.channels_last)
                im_k = im_k.contiguous(memory_format=torch.channels_last)
            lr = learning_rate(cfg, step, spe, env.world_size)
            for group in optimizer.param_groups:
                group["lr"] = lr
            shuffle = (
                torch.Generator().manual_seed(cfg.seed * 7919 + step)
                if cfg.shuffle_bn and not cfg.sync_bn
                else None
            )
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                q, k = runner(im_q, im_k, shuffle)
            loss, per_dim = loss_fn(q, k, model.queue)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            model.enqueue(dist.all_gather_cat(k.float()))
            step += 1
            n_steps += 1
            images += len(im_q) * env.world_size
            # One collective carries the losses and "did any rank get SIGTERM?", so every
            # rank stops after the same step and nobody is left waiting in a collective.
            stop_flag = torch.tensor([float(stop.signum is not None)], device=device)
            stats = dist.all_reduce_mean(torch.cat([per_dim.detach(), stop_flag]))
            per_dim, stopping = stats[:-1], bool(stats[-1] > 0)
            sums += per_dim
            if env.is_main:
                rate = images / (time.perf_counter() - t_epoch)
                bar.set_postfix(loss=f"{per_dim.mean().item():.3f}", img_s=f"{rate:.0f}")
                bar.update()
                writer.add_scalar("train/loss", loss.item(), step)
                writer.add_scalar("train/lr", lr, step)
                for d, value in zip(cfg.nesting_list, per_dim.tolist(), strict=True):
                    writer.add_scalar(f"train/loss_dim_{d}", value, step)
            if stopping or step >= total_steps:
                break
            if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and env.is_main:
                save_checkpoint(state(step), ckpt)
            t_ready = time.perf_counter()
        bar.close()
        if stopping:
            # No collectives from here on: every rank saw the flag after this same step.
            if env.is_main:
                save_checkpoint(state(step), ckpt)
                writer.close()
                print(f"stop signal: saved step {step} to {ckpt}, exiting", file=sys.stderr)
            dist.cleanup()
            return {"step": step, "stopped": True, "history": history, "is_main": env.is_main}
        elapsed = time.perf_counter() - t_epoch
        record = {
            "epoch": epoch + 1,
            "step": step,
            "loss_per_dim": dict(
                zip(map(str, cfg.nesting_list), (sums / max(n_steps, 1)).tolist(), strict=True)
            ),
            "images_per_s": images / elapsed,
            "data_wait_fraction": waited / elapsed,
        }
        history.append(record)
        if env.is_main:
            writer.add_scalar("train/images_per_s", record["images_per_s"], step)
            writer.add_scalar("train/data_wait_fraction", record["data_wait_fraction"], step)
            save_checkpoint(state(step), ckpt)
            log_epoch(cfg.output_dir, record)
        epoch_done = step % spe == 0
        if cfg.eval_interval and epoch_done and (epoch + 1) % cfg.eval_interval == 0:
            evaluate_now(model.encoder_q, cfg, device, env, writer, epoch + 1)
    if writer is not None:
        writer.close()
    dist.cleanup()
    return {"step": step, "stopped": False, "history": history, "is_main": env.is_main}


def main(argv: list[str] | None = None) -> int:
    cfg = parse_train_args(argv)
    result = train(cfg)
    if result["is_main"] and result["history"] and not result["stopped"]:
        first, last = result["history"][0], result["history"][-1]
        fmt = lambda r: " ".join(f"{d}:{v:.3f}" for d, v in r["loss_per_dim"].items())  # noqa: E731
        print(f"loss per dim, epoch {first['epoch']}: {fmt(first)}", file=sys.stderr)
        print(f"loss per dim, epoch {last['epoch']}: {fmt(last)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    run_cli(main, "python -m trainer.train")
