import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

from trainer.config import TrainConfig, training_weights
from trainer.loss import MoCoMatryoshkaLoss, build_loss


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


def test_explicit_dim_weights_are_scaled_to_sum_to_one():
    assert training_weights([8, 16, 32], "mean", [1, 1, 2]) == [0.25, 0.25, 0.5]
    cfg = TrainConfig(nesting_list=[8, 16, 32], dim_weights="1,3,4")
    assert build_loss(cfg).weights.tolist() == [0.125, 0.375, 0.5]
    with pytest.raises(ValidationError, match="one per nesting dim"):
        TrainConfig(nesting_list=[8, 16, 32], dim_weights=[1, 1])


def test_distillation_teacher_is_detached():
    """The KL moves only the prefixes: no gradient reaches the coordinates only the teacher sees."""
    q, k, queue = (x.float() for x in fixed_tensors(d=16))
    q.requires_grad_(True)
    loss_fn = MoCoMatryoshkaLoss([4, 8, 16], 0.2, [0.0, 0.0, 0.0], distill=1.0)
    total, _ = loss_fn(q, k, queue)
    total.backward()
    assert total > 0
    assert q.grad[:, 8:].abs().max() == 0  # dims 9..16 feed only the (detached) teacher
    assert q.grad[:, :8].abs().max() > 0
    # Not detaching would move them: the check above can fail.
    logits = loss_fn.logits(q, k, queue)
    teacher = F.log_softmax(logits[-1], dim=1)
    leaky = F.kl_div(F.log_softmax(logits[0], 1), teacher, reduction="batchmean", log_target=True)
    (grad,) = torch.autograd.grad(leaky, q)
    assert grad[:, 8:].abs().max() > 0


def test_distillation_is_the_mean_kl_from_full_dim_to_each_prefix():
    q, k, queue = (x.float() for x in fixed_tensors(d=16))
    loss_fn = MoCoMatryoshkaLoss([4, 8, 16], 0.2, [0.0, 0.0, 0.0], distill=0.5)
    total, _ = loss_fn(q, k, queue)
    logits = loss_fn.logits(q, k, queue)
    p = F.softmax(logits[-1], 1)
    kl = [(p * (p.log() - F.log_softmax(s, 1))).sum(1).mean() for s in logits[:-1]]
    torch.testing.assert_close(total, 0.5 * (kl[0] + kl[1]) / 2)
    single = MoCoMatryoshkaLoss([16], 0.2, distill=1.0)  # nothing to distil into
    torch.testing.assert_close(single(q, k, queue)[0], single(q, k, queue)[1].sum())


def test_prefix_heads_start_as_identity_and_are_trained_by_the_loss():
    q, k, queue = (x.float() for x in fixed_tensors(d=16))
    plain = MoCoMatryoshkaLoss([4, 8, 16], 0.2)
    heads = MoCoMatryoshkaLoss([4, 8, 16], 0.2, prefix_heads=True)
    torch.testing.assert_close(heads(q, k, queue), plain(q, k, queue))
    assert [h.weight.shape for h in heads.heads.heads] == [(4, 4), (8, 8), (16, 16)]
    heads(q, k, queue)[0].backward()
    assert all(h.weight.grad.abs().max() > 0 for h in heads.heads.heads)
    cfg = TrainConfig(nesting_list=[8, 16], prefix_heads=True)
    assert len(list(build_loss(cfg).parameters())) == 4


def test_sqrt_weights_balance_the_gradient_each_dim_sends_into_the_network():
    """Why the default is sqrt: with unit-variance coordinates |q[:d]| ~ sqrt(d), so a small
    prefix's loss sends a larger gradient through the normalisation than the full dim's; mean
    weights let the smallest dim dominate, sqrt weights even the shares out."""
    torch.manual_seed(0)
    dims = [8, 32, 128]
    feats = torch.randn(64, 16)
    head = torch.nn.Sequential(torch.nn.Linear(16, 128), torch.nn.BatchNorm1d(128, affine=False))
    q = head(feats)
    k = head(feats + 0.3 * torch.randn_like(feats)).detach()
    queue = torch.randn(256, 128)
    _, per_dim = MoCoMatryoshkaLoss(dims, 0.2)(q, k, queue)
    norms = torch.stack(
        [torch.autograd.grad(loss, head[0].weight, retain_graph=True)[0].norm() for loss in per_dim]
    )
    assert norms[0] > 1.5 * norms[-1]

    def spread(mode):
        share = torch.tensor(training_weights(dims, mode)) * norms
        return float(share.max() / share.min())

    assert spread("sqrt") < spread("mean") / 1.5
    assert TrainConfig().loss_weights == "sqrt"
