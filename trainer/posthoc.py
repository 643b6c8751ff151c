"""Post-hoc nesting of frozen embeddings: a Matryoshka adaptor fitted after training.

After Matryoshka-Adaptor (Yoon et al., 2024, unsupervised form): a residual MLP f(x) = x + g(x)
on frozen full-dim embeddings, trained so that every prefix of f(x) keeps the full embedding's
neighbourhoods, with a penalty on moving away from x. The neighbourhood loss here is the
KL divergence between the full embedding's softmax over a batch's cosines and each prefix's
(similarity-distribution distillation; the paper matches the cosines themselves, which in a
first try here collapsed the small prefixes). It starts from the PCA-rotated embedding
(g = 0 at initialisation, the last layer zeroed), so it can only add to what a rotation gives: the
non-linearity may pack more of the neighbourhood structure into the small prefixes than the
principal axes hold. Fitted on the bank (train split) embeddings alone; the same map is then
applied to the queries. `python -m trainer.evaluate --rotation pca --adaptor` scores it.

CPU: about 10-30 s for 6k x 256 embeddings with one thread.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn


@dataclass(frozen=True)
class AdaptorConfig:
    dims: tuple[int, ...] = (8, 16, 32, 64, 128)  # prefixes trained (up to the width)
    hidden: int = 512
    steps: int = 300
    batch: int = 512
    lr: float = 1e-3
    temperature: float = 0.1
    recon_weight: float = 0.01
    seed: int = 0


class Adaptor(nn.Module):
    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.g = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))
        nn.init.zeros_(self.g[2].weight)
        nn.init.zeros_(self.g[2].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.g(x)


def _cos(x: torch.Tensor) -> torch.Tensor:
    x = nn.functional.normalize(x, dim=1)
    return x @ x.T


def adaptor_loss(
    out: torch.Tensor, target: torch.Tensor, x: torch.Tensor, dims: list[int], cfg: AdaptorConfig
) -> torch.Tensor:
    """Sum over prefixes of KL(full x's neighbour distribution || the prefix's), each row's
    softmax over the other rows' cosines / temperature, plus recon_weight * |f(x) - x|^2."""
    eye = torch.eye(len(x), dtype=torch.bool)
    teacher = torch.softmax((target / cfg.temperature).masked_fill(eye, -1e4), dim=1)
    loss = cfg.recon_weight * (out - x).pow(2).mean()
    for d in dims:
        logits = (_cos(out[:, :d]) / cfg.temperature).masked_fill(eye, -1e4)
        loss = loss + nn.functional.kl_div(
            torch.log_softmax(logits, dim=1), teacher, reduction="batchmean"
        )
    return loss


def fit_adaptor(bank: np.ndarray, cfg: AdaptorConfig = AdaptorConfig()) -> Adaptor:
    """Fit the adaptor on [N, D] bank embeddings (already in the basis it should refine)."""
    if bank.ndim != 2 or len(bank) < 3:
        raise ValueError(f"need at least 3 embeddings [N, D] to fit an adaptor, got {bank.shape}")
    gen = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    x_all = torch.from_numpy(np.ascontiguousarray(bank, dtype=np.float32))
    width = x_all.shape[1]
    dims = [d for d in cfg.dims if d < width]
    model = Adaptor(width, cfg.hidden)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    batch = min(cfg.batch, len(x_all))
    for _ in range(cfg.steps):
        x = x_all[torch.randperm(len(x_all), generator=gen)[:batch]]
        target = _cos(x)
        loss = adaptor_loss(model(x), target, x, dims, cfg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return model.eval()


@torch.no_grad()
def apply_adaptor(model: Adaptor, x: np.ndarray, chunk: int = 8192) -> np.ndarray:
    parts = [
        model(torch.from_numpy(np.ascontiguousarray(x[i : i + chunk], dtype=np.float32))).numpy()
        for i in range(0, len(x), chunk)
    ]
    return np.concatenate(parts) if parts else x.astype(np.float32)
