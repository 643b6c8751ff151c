"""The served encoder: backbone + MLP head (+ output norm), and the served rotation.

Training wraps it in MoCo (trainer.moco); evaluation and the server load it from a checkpoint.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

from core.checkpoint import Checkpoint
from core.config import ModelConfig
from core.served import ServedModel


class SplitBatchNorm(nn.BatchNorm2d):
    """BN whose training statistics are computed over `num_splits` interleaved sub-batches.

    MoCo's single-GPU recipe: it mimics per-GPU BN so that shuffling the key batch across
    splits stops the model from cheating through batch statistics. Sample n is in split
    n % num_splits, which matches the rows each of num_splits DDP ranks would hold.
    """

    def __init__(self, num_features: int, num_splits: int = 1, **kw: Any):
        super().__init__(num_features, **kw)
        self.num_splits = num_splits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.num_splits
        n, c, h, w = x.shape
        if not self.training or s == 1 or n % s:
            return super().forward(x)
        mean = self.running_mean.repeat(s)
        var = self.running_var.repeat(s)
        out = F.batch_norm(
            x.reshape(n // s, c * s, h, w),
            mean,
            var,
            None if self.weight is None else self.weight.repeat(s),
            None if self.bias is None else self.bias.repeat(s),
            True,
            self.momentum,
            self.eps,
        ).view(n, c, h, w)
        self.running_mean.copy_(mean.view(s, c).mean(0))
        self.running_var.copy_(var.view(s, c).mean(0))
        self.num_batches_tracked += 1
        return out


class ConvNet(nn.Module):
    """Four conv-BN-ReLU blocks (32-64-128-256): the CPU-sized default backbone."""

    def __init__(self, norm_layer=nn.BatchNorm2d, widths=(32, 64, 128, 256)):
        super().__init__()
        layers, c_in = [], 3
        for i, c in enumerate(widths):
            layers += [nn.Conv2d(c_in, c, 3, padding=1, bias=False), norm_layer(c), nn.ReLU(True)]
            if i < len(widths) - 1:
                layers.append(nn.MaxPool2d(2))
            c_in = c
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.out_dim = c_in

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


def build_backbone(arch: str, image_size: int, norm_layer) -> tuple[nn.Module, int]:
    if arch == "convnet":
        net = ConvNet(norm_layer)
        return net, net.out_dim
    if arch not in ("resnet18", "resnet50"):
        raise ValueError(f"unknown arch {arch!r}; allowed: convnet, resnet18, resnet50")
    net = getattr(torchvision.models, arch)(weights=None, norm_layer=norm_layer)
    if image_size <= 64:
        net.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        net.maxpool = nn.Identity()
    width = net.fc.in_features
    net.fc = nn.Identity()
    return net, width


class OutputNorm(nn.Module):
    """Parameter-free BN over the embedding's coordinates.

    Without it, the Matryoshka losses pile energy into the first coordinates (every loss
    trains them): 25% of the norm sat in the first 8 of 256 dims, and the full-dim similarity
    became little more than the 8-dim one. Unit variance per coordinate keeps every dim's
    share equal, so the full-dim embedding uses all of its dims.
    """

    def __init__(self, dim: int, norm_layer):
        super().__init__()
        self.bn = norm_layer(dim, affine=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(x[:, :, None, None]).flatten(1)


class Encoder(nn.Module):
    """Backbone + MoCo v2 MLP head. Its output is the D-dim Matryoshka embedding (raw), times
    the served rotation when a loaded checkpoint has one (never while training)."""

    def __init__(self, spec: ModelConfig, bn_splits: int = 1):
        super().__init__()
        norm = partial(SplitBatchNorm, num_splits=bn_splits)
        self.backbone, width = build_backbone(spec.arch, spec.image_size, norm)
        hidden = spec.mlp_hidden or width
        layers = [nn.Linear(width, hidden), nn.ReLU(True), nn.Linear(hidden, spec.full_dim)]
        if spec.head_bn:
            layers.append(OutputNorm(spec.full_dim, norm))
        self.head = nn.Sequential(*layers)
        self.register_buffer("rotation", None, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.head(self.backbone(x))
        return z if self.rotation is None else z @ self.rotation


def load_encoder(
    checkpoint: Checkpoint | ServedModel, device: torch.device | str = "cpu"
) -> Encoder:
    """The query encoder of a loaded checkpoint or exported folder (with its rotation), in
    eval mode, on `device`."""
    encoder = Encoder(checkpoint.model)
    encoder.load_state_dict(checkpoint.encoder_q)
    encoder.rotation = checkpoint.rotation
    return encoder.to(device).eval()
