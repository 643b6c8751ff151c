"""MoCoMatryoshkaLoss: MoCo's InfoNCE applied to every nested prefix of the embedding."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F


class MoCoMatryoshkaLoss(nn.Module):
    """InfoNCE at each nesting dim d: prefixes q[:, :d], k[:, :d], queue[:, :d], each L2-normalised.

    Positive = the key of the same image, negatives = the queue (one queue of raw full-dim keys
    serves every dim). Returns (sum(weights * per_dim), per_dim). `weights=None` is all ones, as
    in the MRL paper; the trainer passes 1/len(nesting) so that adding dims does not multiply the
    effective learning rate (see README).
    """

    def __init__(
        self,
        nesting_list: Sequence[int],
        temperature: float,
        weights: Sequence[float] | torch.Tensor | None = None,
    ):
        super().__init__()
        self.nesting_list = list(nesting_list)
        self.temperature = temperature
        w = torch.ones(len(self.nesting_list)) if weights is None else torch.as_tensor(weights)
        if w.shape != (len(self.nesting_list),):
            raise ValueError(
                f"need one weight per nesting dim ({len(self.nesting_list)}), got {w.shape}"
            )
        self.register_buffer("weights", w.float(), persistent=False)

    def forward(self, q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor):
        q, k, queue = q.float(), k.detach().float(), queue.detach().float()
        losses = []
        for d in self.nesting_list:
            qd = F.normalize(q[:, :d], dim=1)
            kd = F.normalize(k[:, :d], dim=1)
            negd = F.normalize(queue[:, :d], dim=1)
            l_pos = (qd * kd).sum(1, keepdim=True)
            l_neg = qd @ negd.T
            logits = torch.cat([l_pos, l_neg], dim=1) / self.temperature
            target = torch.zeros(len(q), dtype=torch.long, device=q.device)
            losses.append(F.cross_entropy(logits, target))
        per_dim = torch.stack(losses)
        return (self.weights.to(per_dim.device) * per_dim).sum(), per_dim


def training_weights(nesting_list: Sequence[int], mode: str) -> list[float]:
    """Per-dim weights. mean and sqrt sum to 1, so adding dims keeps the effective lr;
    sqrt leans towards the large dims, whose last coordinates only the largest losses train."""
    n = len(nesting_list)
    if mode == "ones":
        return [1.0] * n
    if mode in ("sqrt", "linear"):
        raw = [d**0.5 if mode == "sqrt" else float(d) for d in nesting_list]
        return [r / sum(raw) for r in raw]
    return [1.0 / n] * n
