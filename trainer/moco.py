"""The MoCo v2 wrapper: one queue of full-dim keys, a momentum key encoder, shuffle BN."""

from __future__ import annotations

import copy
from contextlib import contextmanager
from typing import TYPE_CHECKING

import torch
import torch.nn as nn
import torch.nn.functional as F

from core.device import to_device
from core.encoder import Encoder
from trainer.config import TrainConfig
from trainer.distributed import process_group as dist

if TYPE_CHECKING:
    pass


class _ScaleGrad(torch.autograd.Function):
    """Identity forward; the backward multiplies the gradient by `scale`."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad * ctx.scale, None


@contextmanager
def running_stats_frozen(module: nn.Module):
    """BN layers normalise with batch statistics as usual but leave their running ones alone."""
    bns = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [bn.momentum for bn in bns]
    for bn in bns:
        bn.momentum = 0.0
    try:
        yield
    finally:
        for bn, momentum in zip(bns, saved, strict=True):
            bn.momentum = momentum


class MoCo(nn.Module):
    """MoCo v2 with one queue of K raw full-dim keys, shared by every nesting dim.

    One training step is `q, k, q_prefix = moco(im_q, im_k)`, the loss on (q, k, moco.queue,
    q_prefix), the optimizer step, then `moco.enqueue(k)`. The forward updates the key encoder
    by momentum and computes the keys with shuffle BN; `enqueue` gathers every rank's keys.
    The shuffle permutation of step s is drawn from `shuffle_seed * 7919 + s`, so a resumed run
    (which sets `steps`) shuffles exactly as an uninterrupted one. `shuffle_seed=None`: no
    shuffle (SyncBatchNorm, or shuffle BN turned off).

    `prefix_grad` < 1 keeps the nested losses from reshaping the backbone: q_prefix, the
    embedding the losses below the full dim read, is the same values as q, computed by a second
    pass through the head whose gradient into the backbone is scaled by prefix_grad (the head
    itself gets every loss in full). `full_share` is the full-dim loss's share of the loss
    weights; both paths are rescaled so that the backbone's weights still sum to 1 (at 0 the
    backbone trains on the full-dim loss alone, like the non-nested model, and only the head
    learns the nesting). At 1, q_prefix is q: the plain Matryoshka loss.
    """

    def __init__(
        self,
        encoder: Encoder,
        embed_dim: int,
        queue_size: int,
        momentum: float,
        shuffle_seed: int | None = None,
        prefix_grad: float = 1.0,
        full_share: float = 1.0,
    ):
        super().__init__()
        if not 0 <= prefix_grad <= 1 or not 0 < full_share <= 1:
            raise ValueError(
                f"need 0 <= prefix_grad <= 1 and 0 < full_share <= 1, "
                f"got {prefix_grad}, {full_share}"
            )
        self.prefix_grad = prefix_grad
        self.backbone_scale = 1 / (full_share + prefix_grad * (1 - full_share))
        self.split_prefix = prefix_grad < 1 and full_share < 1
        self.encoder_q = encoder
        self.encoder_k = copy.deepcopy(encoder)
        for p in self.encoder_k.parameters():
            p.requires_grad_(False)
        self.m = momentum
        self.shuffle_seed = shuffle_seed
        self.steps = 0  # forward passes so far, restored on resume
        self.register_buffer("queue", F.normalize(torch.randn(queue_size, embed_dim), dim=1))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def momentum_update(self) -> None:
        """k = m * k + (1 - m) * q, for every parameter; BN buffers are the key encoder's own."""
        keys = list(self.encoder_k.parameters())
        queries = [p.detach() for p in self.encoder_q.parameters()]
        # the same two ops as a per-parameter loop, in a few fused kernels instead of 2 per tensor
        torch._foreach_mul_(keys, self.m)
        torch._foreach_add_(keys, queries, alpha=1 - self.m)

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        """Gather this step's keys from every rank (in rank order), write them at the pointer."""
        k = len(self.queue)
        if k == 0:
            return
        keys = dist.all_gather_cat(keys.detach().to(self.queue.dtype))[-k:]
        # the pointer stays on the device: reading it on the host would sync every step
        idx = (self.queue_ptr + torch.arange(len(keys), device=keys.device)) % k
        self.queue[idx] = keys
        self.queue_ptr.add_(len(keys)).remainder_(k)

    @torch.no_grad()
    def keys(self, im_k: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Keys with shuffle BN: permute the (global) batch, encode, undo the permutation."""
        if generator is None:
            return self.encoder_k(im_k)
        gathered = dist.all_gather_cat(im_k)
        perm = to_device(torch.randperm(len(gathered), generator=generator), im_k.device)
        perm = dist.broadcast_(perm, src=0)
        inverse = torch.argsort(perm)
        n, rank = len(im_k), dist.get_rank()
        mine = perm.view(-1, n)[rank]
        k = self.encoder_k(gathered[mine])
        k_all = dist.all_gather_cat(k)
        return k_all[inverse].view(-1, n, k.shape[1])[rank]

    def queries(self, im_q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(q, q_prefix): the query embedding for the full-dim loss and for the nested ones."""
        enc = self.encoder_q
        if not self.split_prefix:
            q = enc(im_q)
            return q, q
        h = enc.backbone(im_q)
        q = enc.head(_ScaleGrad.apply(h, self.backbone_scale))
        with running_stats_frozen(enc.head):
            q_prefix = enc.head(_ScaleGrad.apply(h, self.backbone_scale * self.prefix_grad))
        return q, q_prefix

    def forward(self, im_q: torch.Tensor, im_k: torch.Tensor):
        """(q, k, q_prefix), all raw full-dim; the key encoder moves one momentum step first."""
        q, q_prefix = self.queries(im_q)
        self.momentum_update()
        shuffle = None
        if self.shuffle_seed is not None:
            shuffle = torch.Generator().manual_seed(self.shuffle_seed * 7919 + self.steps)
        k = self.keys(im_k, shuffle)
        self.steps += 1
        return q, k, q_prefix


def build_moco(cfg: TrainConfig, bn_splits: int) -> MoCo:
    encoder = Encoder(cfg.model_spec(), bn_splits)
    shuffle_seed = cfg.seed if cfg.shuffle_bn and not cfg.sync_bn else None
    weights = cfg.dim_loss_weights()
    return MoCo(
        encoder,
        cfg.embed_dim,
        cfg.queue_size,
        cfg.moco_m,
        shuffle_seed,
        prefix_grad=cfg.prefix_grad,
        full_share=weights[-1] / sum(weights),
    )
