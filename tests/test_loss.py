import torch
import torch.nn.functional as F

from trainer.loss import MoCoMatryoshkaLoss, training_weights


def reference_infonce(q, k, queue, d, t):
    """Hand-written InfoNCE at one prefix, one sample at a time."""
    total = 0.0
    for i in range(len(q)):
        qi = q[i, :d] / q[i, :d].norm()
        ki = k[i, :d] / k[i, :d].norm()
        pos = torch.exp(qi @ ki / t)
        neg = sum(torch.exp(qi @ (n[:d] / n[:d].norm()) / t) for n in queue)
        total = total - torch.log(pos / (pos + neg))
    return total / len(q)


def fixed_tensors(n=6, d=16, k=10):
    g = torch.Generator().manual_seed(0)
    return (
        torch.randn(n, d, generator=g, dtype=torch.float64) * 3,
        torch.randn(n, d, generator=g, dtype=torch.float64),
        torch.randn(k, d, generator=g, dtype=torch.float64) * 2,
    )


def test_loss_equals_per_dim_reference():
    q, k, queue = fixed_tensors()
    nesting = [2, 4, 8, 16]
    weights = [0.1, 0.2, 0.3, 0.4]
    total, per_dim = MoCoMatryoshkaLoss(nesting, 0.2, weights)(q, k, queue)
    expected = torch.stack([reference_infonce(q, k, queue, d, 0.2) for d in nesting]).float()
    torch.testing.assert_close(per_dim, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(
        total, (torch.tensor(weights) * expected).sum(), rtol=1e-5, atol=1e-5
    )


def test_default_weights_are_ones_and_training_mean_divides():
    q, k, queue = fixed_tensors()
    total, per_dim = MoCoMatryoshkaLoss([4, 8, 16], 0.1)(q, k, queue)
    torch.testing.assert_close(total, per_dim.sum())
    assert training_weights([4, 8, 16], "mean") == [1 / 3] * 3
    assert training_weights([4, 8, 16], "ones") == [1.0] * 3
    linear = training_weights([4, 8, 16], "linear")
    assert abs(sum(linear) - 1) < 1e-9 and linear[2] == 4 * linear[0]
    sqrt = training_weights([4, 16], "sqrt")
    assert abs(sum(sqrt) - 1) < 1e-9 and abs(sqrt[1] - 2 * sqrt[0]) < 1e-9
    assert training_weights([256], "sqrt") == training_weights([256], "mean") == [1.0]


def test_single_dim_is_plain_moco_infonce():
    q, k, queue = fixed_tensors()
    qn, kn, negn = (F.normalize(x.float(), dim=1) for x in (q, k, queue))
    logits = torch.cat([(qn * kn).sum(1, keepdim=True), qn @ negn.T], 1) / 0.07
    plain = F.cross_entropy(logits, torch.zeros(len(q), dtype=torch.long))
    total, per_dim = MoCoMatryoshkaLoss([16], 0.07)(q, k, queue)
    torch.testing.assert_close(total, plain)
    assert per_dim.shape == (1,)


def test_gradients_reach_every_prefix_and_not_the_keys():
    q, k, queue = fixed_tensors()
    nesting = [2, 4, 8, 16]
    for d in nesting:
        qq = q.clone().float().requires_grad_(True)
        kk = k.clone().float().requires_grad_(True)
        loss_fn = MoCoMatryoshkaLoss(nesting, 0.2, [1.0 if x == d else 0.0 for x in nesting])
        loss_fn(qq, kk, queue)[0].backward()
        # The loss at dim d moves exactly the first d coordinates of q.
        assert qq.grad[:, :d].abs().sum() > 0
        assert qq.grad[:, d:].abs().sum() == 0
        assert kk.grad is None


def test_rejects_wrong_number_of_weights():
    import pytest

    with pytest.raises(ValueError, match="one weight per nesting dim"):
        MoCoMatryoshkaLoss([8, 16], 0.2, [1.0])
