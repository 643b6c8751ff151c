import torch

from core.encoder import SplitBatchNorm
from trainer.checkpointing import capture
from trainer.moco import MoCo, build_moco


def small_moco(tiny_config, **kw):
    return build_moco(tiny_config(**kw), bn_splits=1)


def test_queue_enqueue_wraps_around(tiny_config):
    model = small_moco(tiny_config, queue_size=64, nesting_list=[8, 16, 32])
    model.queue.zero_()
    for i in range(5):  # 5 x 24 = 120 keys into 64 slots: wraps once, pointer at 56
        model.enqueue(torch.full((24, 32), float(i + 1)))
    assert int(model.queue_ptr) == 120 % 64
    expected = torch.zeros(64)
    for i in range(5):
        for j in range(24):
            expected[(i * 24 + j) % 64] = i + 1
    torch.testing.assert_close(model.queue[:, 0], expected)


def test_enqueue_stores_raw_full_dim_keys(tiny_config):
    model = small_moco(tiny_config, queue_size=64, nesting_list=[8, 16, 32])
    keys = torch.randn(32, 32) * 5
    model.enqueue(keys)
    torch.testing.assert_close(model.queue[:32], keys)
    assert model.queue.shape == (64, 32)  # one queue, full dim: no per-dim queues


def test_momentum_update_rule(tiny_config):
    model: MoCo = small_moco(tiny_config)
    model.m = 0.9
    with torch.no_grad():
        for p in model.encoder_q.parameters():
            p.add_(torch.randn_like(p))
    before_k = [p.clone() for p in model.encoder_k.parameters()]
    q = [p.clone() for p in model.encoder_q.parameters()]
    model.momentum_update()
    for pk, k0, q0 in zip(model.encoder_k.parameters(), before_k, q, strict=True):
        torch.testing.assert_close(pk, 0.9 * k0 + 0.1 * q0)
    assert all(not p.requires_grad for p in model.encoder_k.parameters())


def test_split_batchnorm_equals_bn_per_interleaved_split():
    torch.manual_seed(0)
    x = torch.randn(8, 4, 5, 5)
    split = SplitBatchNorm(4, num_splits=2).train()
    plain = torch.nn.BatchNorm2d(4).train()
    out = split(x)
    for s in range(2):
        torch.testing.assert_close(out[s::2], plain(x[s::2]), rtol=1e-4, atol=1e-5)
    assert torch.allclose(split.running_mean, torch.zeros(4)) is False


def test_shuffled_keys_equal_unshuffled_in_eval_mode(tiny_config):
    model = small_moco(tiny_config).eval()
    x = torch.randn(16, 3, 32, 32)
    plain = model.keys(x, None)
    shuffled = model.keys(x, torch.Generator().manual_seed(3))
    torch.testing.assert_close(shuffled, plain, rtol=1e-4, atol=1e-5)


def test_resnet_cifar_stem_and_head_dim(tiny_config):
    cfg = tiny_config(arch="resnet18", nesting_list=[8, 64])
    model = build_moco(cfg, bn_splits=2)
    assert model.encoder_q.backbone.conv1.stride == (1, 1)
    out = model.encoder_q.eval()(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 64)


def test_head_bn_equalises_coordinate_energy_and_loads(tiny_config):
    from core.encoder import load_encoder

    cfg = tiny_config(head_bn=True)
    model = build_moco(cfg, bn_splits=2)
    enc = model.encoder_q.train()
    x = torch.randn(16, 3, 32, 32)
    out = enc(x)
    raw = enc.head[:-1](enc.backbone(x)).detach()  # the same batch's pre-norm embedding
    for split in (0, 1):  # each interleaved BN split is standardised on its own
        r = raw[split::2]
        expected = (r - r.mean(0)) / torch.sqrt(r.var(0, unbiased=False) + 1e-5)
        torch.testing.assert_close(out[split::2], expected, atol=1e-4, rtol=1e-4)
    encoder = load_encoder(capture(cfg, model))
    x = torch.randn(4, 3, 32, 32)
    torch.testing.assert_close(encoder(x), model.encoder_q.eval()(x))


def _grads(cfg, x: torch.Tensor, which: str):
    """Backbone and head gradients of the total (or the unweighted full-dim) loss on one batch,
    from the same initial weights."""
    from trainer.loss import build_loss

    torch.manual_seed(1)
    model = build_moco(cfg, bn_splits=1)
    q, k, q_prefix = model(x, x.flip(3))
    total, per_dim = build_loss(cfg)(q, k, model.queue, q_prefix)
    (total if which == "total" else per_dim[-1]).backward()
    enc = model.encoder_q
    backbone = [p.grad.clone() for p in enc.backbone.parameters()]
    return backbone, [p.grad.clone() for p in enc.head.parameters()]


def test_prefix_grad_scales_only_what_the_nested_losses_send_into_the_backbone(tiny_config):
    from trainer.config import training_weights

    torch.manual_seed(0)
    x = torch.randn(16, 3, 32, 32)
    configs = {a: tiny_config(prefix_grad=a, shuffle_bn=False) for a in (1.0, 0.5, 0.0)}
    for a, cfg in configs.items():
        torch.manual_seed(1)
        q, _, q_prefix = build_moco(cfg, bn_splits=1)(x, x)
        torch.testing.assert_close(q_prefix, q)  # the same embedding: only the backward differs
        assert (q_prefix is q) == (a == 1.0)
    grads = {a: _grads(cfg, x, "total") for a, cfg in configs.items()}
    # the head gets every loss in full, whatever the backbone gets
    for a in (0.5, 0.0):
        for g, g1 in zip(grads[a][1], grads[1.0][1], strict=True):
            torch.testing.assert_close(g, g1, rtol=1e-4, atol=1e-6)
    # at 0 the backbone gets the full-dim loss alone, at weight 1: the non-nested model's step
    full_only, _ = _grads(configs[0.0], x, "full")  # d L_D / d backbone, scaled by 1 / w_D
    w_full = training_weights(configs[0.0].nesting_list, configs[0.0].loss_weights)[-1]
    for g, g_full in zip(grads[0.0][0], full_only, strict=True):
        torch.testing.assert_close(g, g_full * w_full, rtol=1e-4, atol=1e-5)
    # in between, the backbone's gradient lies between the two
    diff = {
        a: sum((g - g1).norm() for g, g1 in zip(grads[a][0], grads[1.0][0], strict=True))
        for a in (0.5, 0.0)
    }
    assert 0 < diff[0.5] < diff[0.0]


def test_prefix_pass_leaves_the_head_running_statistics_alone(tiny_config):
    x = torch.randn(16, 3, 32, 32)
    stats = []
    for a in (1.0, 0.0):
        torch.manual_seed(1)
        model = build_moco(tiny_config(prefix_grad=a, shuffle_bn=False), bn_splits=1)
        model(x, x)
        bn = model.encoder_q.head[-1].bn
        stats.append((bn.running_mean.clone(), bn.running_var.clone()))
    torch.testing.assert_close(stats[0], stats[1])
