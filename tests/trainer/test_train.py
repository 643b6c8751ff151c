import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from core.checkpoint import load_checkpoint
from core.cli import UsageError
from trainer.train import train

CLI = [sys.executable, "-m", "trainer.train"]


def small_run(dataset: str, out, *extra: str) -> list[str]:
    """The trainer CLI on the tiny dataset with a small batch and queue, no workers."""
    return [*CLI, "--dataset", dataset, "--output-dir", str(out), "--batch-size", "32",
            "--queue-size", "64", "--workers", "0", *extra]  # fmt: skip


def test_resume_equals_straight_run(tiny_config, tmp_path):
    straight = tiny_config(output_dir=tmp_path / "straight", epochs=2)
    train(straight)
    spe = 320 // 32
    split = tiny_config(output_dir=tmp_path / "split", epochs=2, max_steps=spe)
    train(split)
    assert load_checkpoint(split.output_dir / "checkpoint.pt").step == spe
    train(tiny_config(output_dir=tmp_path / "split", epochs=2, resume="auto"))
    a = load_checkpoint(straight.output_dir / "checkpoint.pt")
    b = load_checkpoint(split.output_dir / "checkpoint.pt")
    assert a.step == b.step == 2 * spe
    for name in a.encoder_q:
        torch.testing.assert_close(a.encoder_q[name], b.encoder_q[name], rtol=0, atol=0)
    torch.testing.assert_close(a.queue, b.queue, rtol=0, atol=0)


def test_resume_refuses_another_dataset_seed(tiny_config, tmp_path):
    """A resumed run must keep training on the data it started on."""
    train(tiny_config(output_dir=tmp_path / "r", epochs=1, max_steps=2))
    with pytest.raises(UsageError, match=r"--data-seed 0 \(now 1\)"):
        train(tiny_config(output_dir=tmp_path / "r", epochs=1, resume="auto", seed=1))
    train(tiny_config(output_dir=tmp_path / "r", epochs=1, resume="auto", data_seed=0))
    assert load_checkpoint(tmp_path / "r" / "checkpoint.pt").step == 320 // 32


def test_mid_epoch_resume_is_exact(tiny_config, tmp_path):
    straight = tiny_config(output_dir=tmp_path / "a", epochs=1)
    train(straight)
    train(tiny_config(output_dir=tmp_path / "b", epochs=1, max_steps=3))
    train(tiny_config(output_dir=tmp_path / "b", epochs=1, resume="auto"))
    a = load_checkpoint(tmp_path / "a" / "checkpoint.pt")
    b = load_checkpoint(tmp_path / "b" / "checkpoint.pt")
    for name in a.encoder_q:
        torch.testing.assert_close(a.encoder_q[name], b.encoder_q[name], rtol=0, atol=0)


def test_short_run_lowers_loss_at_every_dim(tiny_config):
    result = train(tiny_config(epochs=6, batch_size=32, queue_size=64, lr=0.12))
    first, last = result["history"][0], result["history"][-1]
    for d in ("8", "16", "32"):
        assert last["loss_per_dim"][d] < first["loss_per_dim"][d] - 0.05, (d, first, last)
    lines = (result_dir := tiny_config().output_dir / "train_log.jsonl").read_text().splitlines()
    assert len(lines) == 6 and json.loads(lines[-1])["epoch"] == 6, result_dir


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--arch", "vgg"], "invalid choice: 'vgg'"),
        (["--nesting-list", "32,16"], "strictly ascending"),
        (["--nesting-list", "8,x"], "comma-separated integers"),
        (["--batch-size", "banana"], "--batch-size"),
        (["--queue-size", "100"], "multiple of the global batch"),
        (["--queue-size", "256"], "each image would meet its own older key"),
        (["--dataset", "/no/such/place"], "--dataset /no/such/place"),
    ],
)
def test_bad_flags_exit_2_with_one_line(flags, message, tiny_dataset, tmp_path):
    args = ["--dataset", tiny_dataset, "--output-dir", str(tmp_path), "--batch-size", "32"]
    proc = subprocess.run(CLI + args + flags, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert message in lines[0]


def test_truncated_checkpoint_on_resume_is_one_line(tiny_dataset, tmp_path):
    (tmp_path / "checkpoint.pt").write_bytes(b"PK\x03\x04garbage")
    proc = subprocess.run(
        small_run(tiny_dataset, tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "checkpoint.pt is truncated, corrupt or not a torch file" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_sigterm_mid_epoch_saves_and_resumes(tiny_dataset, tmp_path):
    out = tmp_path / "run"
    args = small_run(tiny_dataset, out, "--epochs", "200", "--nesting-list", "8,16,32")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(args, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 90
    while time.time() < deadline and not (out / "train_log.jsonl").exists():
        time.sleep(0.2)
    time.sleep(0.5)  # now mid-way through epoch 2
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "stop signal: saved step" in err
    step = load_checkpoint(out / "checkpoint.pt").step
    assert 10 <= step < 200 * 10
    resumed = subprocess.run(
        [*args, "--max-steps", str(step + 2)], capture_output=True, text=True, env=env, timeout=120
    )
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed from {out / 'checkpoint.pt'} at step {step}" in resumed.stderr
    assert load_checkpoint(out / "checkpoint.pt").step == step + 2


def test_prefix_heads_distill_and_prefix_grad_train_and_resume_exactly(tiny_config, tmp_path):
    opts = dict(epochs=1, prefix_heads=True, distill=1.0, val_fraction=0.2, prefix_grad=0.5)
    train(tiny_config(output_dir=tmp_path / "a", **opts))
    train(tiny_config(output_dir=tmp_path / "b", max_steps=3, **opts))
    train(tiny_config(output_dir=tmp_path / "b", resume="auto", **opts))
    a = load_checkpoint(tmp_path / "a" / "checkpoint.pt")
    b = load_checkpoint(tmp_path / "b" / "checkpoint.pt")
    assert a.step == 256 // 32  # 80% of 320 images train, 20% are held out
    head = a.loss["heads.heads.0.weight"]
    assert not torch.equal(head, torch.eye(8))  # the heads were trained
    for name in a.loss:
        torch.testing.assert_close(a.loss[name], b.loss[name], rtol=0, atol=0)
    for name in a.encoder_q:
        torch.testing.assert_close(a.encoder_q[name], b.encoder_q[name], rtol=0, atol=0)
