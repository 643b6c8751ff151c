"""MoCoMatryoshkaLoss: MoCo's InfoNCE applied to every nested prefix of the embedding."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from trainer.prefix_heads import PrefixHeads


class MoCoMatryoshkaLoss(nn.Module):
    """InfoNCE at each nesting dim d: prefixes q[:, :d], k[:, :d], queue[:, :d], each L2-normalised.

    Positive = the key of the same image, negatives = the queue (one queue of raw full-dim keys
    serves every dim). Returns (sum(weights * per_dim) + distill * kl, per_dim). `weights=None`
    is all ones, as in the MRL paper; the trainer passes weights summing to 1 so that adding
    dims does not multiply the effective learning rate (see README).

    distill > 0 adds, for every prefix below the full dim, KL(teacher || prefix) between the
    softmax distributions over (positive, queue): the teacher is the full-dim distribution,
    DETACHED, so the prefixes learn the full embedding's ranking of the negatives and the full
    dim is never pulled towards its prefixes (2DMSE/ESE, Starbucks). prefix_heads puts a
    linear predictor per dim on the query side (trainer.prefix_heads).
    """

    def __init__(
        self,
        nesting_list: Sequence[int],
        temperature: float,
        weights: Sequence[float] | torch.Tensor | None = None,
        distill: float = 0.0,
        prefix_heads: bool = False,
    ):
        super().__init__()
        self.nesting_list = list(nesting_list)
        self.temperature = temperature
        self.distill = distill
        w = torch.ones(len(self.nesting_list)) if weights is None else torch.as_tensor(weights)
        if w.shape != (len(self.nesting_list),):
            raise ValueError(
                f"need one weight per nesting dim ({len(self.nesting_list)}), got {w.shape}"
            )
        self.register_buffer("weights", w.float(), persistent=False)
        self.heads = PrefixHeads(self.nesting_list) if prefix_heads else None

    def logits(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        queue: torch.Tensor,
        q_prefix: torch.Tensor | None = None,
    ) -> list[torch.Tensor]:
        """[N, 1 + K] logits (positive first) at every nesting dim."""
        out = []
        last = len(self.nesting_list) - 1
        for i, d in enumerate(self.nesting_list):
            qi = q if i == last or q_prefix is None else q_prefix
            qd = F.normalize(qi[:, :d] if self.heads is None else self.heads(qi, i), dim=1)
            kd = F.normalize(k[:, :d], dim=1)
            negd = F.normalize(queue[:, :d], dim=1)
            l_pos = (qd * kd).sum(1, keepdim=True)
            out.append(torch.cat([l_pos, qd @ negd.T], dim=1) / self.temperature)
        return out

    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        queue: torch.Tensor,
        q_prefix: torch.Tensor | None = None,
    ):
        """q_prefix (default q) is what the dims below the full one read: MoCo passes a copy
        whose gradient into the backbone is scaled (`--prefix-grad`)."""
        q, k, queue = q.float(), k.detach().float(), queue.detach().float()
        q_prefix = None if q_prefix is None else q_prefix.float()
        logits = self.logits(q, k, queue, q_prefix)
        target = torch.zeros(len(q), dtype=torch.long, device=q.device)
        per_dim = torch.stack([F.cross_entropy(lg, target) for lg in logits])
        total = (self.weights.to(per_dim.device) * per_dim).sum()
        if self.distill and len(logits) > 1:
            total = total + self.distill * distillation(logits[-1], logits[:-1])
        return total, per_dim


def distillation(teacher: torch.Tensor, students: Sequence[torch.Tensor]) -> torch.Tensor:
    """Mean over students of KL(softmax(teacher) || softmax(student)), batch-mean.

    The teacher is detached here, once: without it the KL would also drag the full-dim
    embedding towards its prefixes (the bug of sentence-transformers PR #3880).
    """
    target = F.log_softmax(teacher.detach(), dim=1)
    kls = [
        F.kl_div(F.log_softmax(s, dim=1), target, reduction="batchmean", log_target=True)
        for s in students
    ]
    return torch.stack(kls).mean()


def build_loss(cfg) -> MoCoMatryoshkaLoss:
    """The loss a TrainConfig asks for."""
    weights = cfg.dim_loss_weights()
    return MoCoMatryoshkaLoss(
        cfg.nesting_list, cfg.temp, weights, distill=cfg.distill, prefix_heads=cfg.prefix_heads
    )
