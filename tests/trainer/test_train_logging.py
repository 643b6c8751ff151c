"""--log-every: losses are read back every N steps (no per-step host sync), same training."""

from __future__ import annotations

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from core.checkpoint import load_checkpoint
from trainer.train import train


def logged(out) -> dict[str, list[tuple[int, float]]]:
    acc = EventAccumulator(str(out / "tb"))
    acc.Reload()
    return {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}


def test_log_every_logs_window_means_and_trains_the_same(tiny_config, tmp_path):
    every = tiny_config(output_dir=tmp_path / "every", epochs=1, log_every=1)
    sparse = tiny_config(output_dir=tmp_path / "sparse", epochs=1, log_every=3)
    a, b = train(every), train(sparse)
    one, three = logged(every.output_dir), logged(sparse.output_dir)
    # 10 steps per epoch: logs at 3, 6, 9 and at the epoch's end
    assert [s for s, _ in three["train/loss_dim_8"]] == [3, 6, 9, 10]
    per_step = dict(one["train/loss_dim_8"])
    assert len(per_step) == 10
    for step, value in three["train/loss_dim_8"]:
        window = [per_step[s] for s in range(step - (3 if step % 3 == 0 else 1) + 1, step + 1)]
        assert value == pytest.approx(sum(window) / len(window), rel=1e-5)
    assert b["history"][0]["loss_per_dim"] == pytest.approx(a["history"][0]["loss_per_dim"])
    sa = load_checkpoint(every.output_dir / "checkpoint.pt")
    sb = load_checkpoint(sparse.output_dir / "checkpoint.pt")
    for name, tensor in sa.encoder_q.items():
        torch.testing.assert_close(sb.encoder_q[name], tensor, rtol=0, atol=0)
    torch.testing.assert_close(sb.queue, sa.queue, rtol=0, atol=0)
    assert sb.queue_ptr == sa.queue_ptr
