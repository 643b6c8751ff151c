"""The traced encoder the server runs equals the eager module, at any batch size."""

from __future__ import annotations

import pytest
import torch

from core.config import ModelConfig
from core.encoder import Encoder
from core.preprocess import IMAGENET_MEAN, IMAGENET_STD
from server.runtime import serving_encoder


def random_encoder(arch: str, head_bn: bool) -> Encoder:
    """Random weights and BN statistics (folding BN into the convs must keep them)."""
    torch.manual_seed(0)
    spec = ModelConfig(
        arch=arch,
        nesting_list=[8, 16, 32],
        image_size=32,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        mlp_hidden=64,
        head_bn=head_bn,
    )
    encoder = Encoder(spec)
    for m in encoder.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return encoder.eval()


@pytest.mark.parametrize(("arch", "head_bn"), [("convnet", True), ("resnet18", False)])
def test_torchscript_matches_eager_at_any_batch_size(arch, head_bn):
    encoder = random_encoder(arch, head_bn)
    traced = serving_encoder(encoder, 32, torch.device("cpu"), "torchscript")
    assert isinstance(traced, torch.jit.ScriptModule)
    for n in (1, 3, 32):  # traced at 2
        x = torch.randn(n, 3, 32, 32)
        with torch.inference_mode():
            want, got = encoder(x), traced(x)
        assert got.shape == want.shape == (n, 32)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_eager_runtime_is_the_module_itself():
    encoder = random_encoder("convnet", True)
    assert serving_encoder(encoder, 32, torch.device("cpu"), "eager") is encoder
