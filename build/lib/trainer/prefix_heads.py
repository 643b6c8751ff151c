"""Per-prefix predictors: one linear map per nesting dim on the query side, used only by the loss.

The MRL paper trains a separate classifier per granularity (MRL) rather than one shared one
(MRL-E). The contrastive analogue is a small head per prefix between the served embedding and
its InfoNCE: each prefix's loss can then bend its own view of the shared coordinates instead of
pulling them all to one compromise. The heads start as the identity (training starts exactly
where the plain loss does) and are dropped after training: the served embedding is the encoder's.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn


class PrefixHeads(nn.Module):
    def __init__(self, nesting_list: Sequence[int]):
        super().__init__()
        self.heads = nn.ModuleList(nn.Linear(d, d) for d in nesting_list)
        for head in self.heads:
            nn.init.eye_(head.weight)
            nn.init.zeros_(head.bias)

    def forward(self, q: torch.Tensor, index: int) -> torch.Tensor:
        """The prediction of the index-th nesting dim from the query's prefix of that length."""
        head = self.heads[index]
        return head(q[:, : head.in_features])
