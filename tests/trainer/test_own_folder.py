"""Your own photos: a small image folder trains with the defaults, the choices are printed and
recorded, impossible flags are refused with a fix that works, a resume cannot change the
schedule, and logs without a terminal are lines (text or JSON), not progress bars."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from core.checkpoint import load_checkpoint
from core.cli import UsageError
from trainer.checkpointing import split_record, train_config
from trainer.config import TrainConfig
from trainer.progress import use_bars
from trainer.sizing import check_config, choose_sizes
from trainer.train import train

CLI = [sys.executable, "-m", "trainer.train"]
CLASSES = ("brick", "leaf", "sky", "sand")


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory) -> Path:
    """80 images in 4 class folders: 60 RGB PNGs of 48x40, 10 grayscale PNGs of 20x24 and 10
    RGB JPEGs of 96x72, so any 90% of them has a median size of 48x40."""
    root = tmp_path_factory.mktemp("photos") / "photos"
    for c, name in enumerate(CLASSES):
        folder = root / name
        folder.mkdir(parents=True)
        for i in range(20):
            colour = (60 * c + 3 * i, 255 - 50 * c, (40 * i) % 256)
            if i < 15:
                Image.new("RGB", (48, 40), colour).save(folder / f"{i:02d}.png")
            elif c < 2:
                Image.new("L", (20, 24), colour[0]).save(folder / f"{i:02d}.png")
            else:
                Image.new("RGB", (96, 72), colour).save(folder / f"{i:02d}.jpg", quality=90)
    return root


def run_cli(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    """The trainer as a user runs it, stdout a pipe (not a terminal), caches in tmp_path."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_DATASETS_CACHE": str(tmp_path / "hf")}
    return subprocess.run(
        [*CLI, "--workers", "0", "--cache-dir", str(tmp_path / "cache"), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def test_small_folder_trains_with_the_defaults_and_says_what_it_chose(photo_folder, tmp_path):
    out = tmp_path / "mine"
    proc = run_cli(["--dataset", str(photo_folder), "--output-dir", str(out), "--epochs", "2"],
                   tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    err = proc.stderr
    # 72 train images: a global batch of 16 is the smallest allowed, one batch of keys the queue
    assert "queue size 16 = 22% of 72 training images" in err, err
    assert "batch size 16 (halved from the default 128 to fit)" in err, err
    assert "train 72 / held out 8 (10% of the folder, seeded by --data-seed 0)" in err, err
    assert "images: median 48x40 px; training at 32 px (--image-size)" in err, err
    # no bars: no carriage returns, no tqdm "|###|" lines; one text line per epoch instead
    assert "\r" not in proc.stdout + err
    assert "it/s" not in proc.stdout + err
    lines = proc.stdout.splitlines()
    epochs = [line for line in lines if line.startswith("epoch ")]
    assert epochs[0].startswith("epoch 1/2 done (step 4/8) | per dim 8:"), proc.stdout
    assert len(epochs) == 2 and lines[-1].startswith("epoch 2/2 done"), proc.stdout
    assert err.rstrip().splitlines()[-2] == f"checkpoint: {out / 'checkpoint.pt'} (step 8)"
    assert f"make eval OUTPUT={out}" in err.rstrip().splitlines()[-1]
    ckpt = load_checkpoint(out / "checkpoint.pt")
    cfg = train_config(ckpt)
    assert (cfg.batch_size, cfg.queue_size, ckpt.step) == (16, 16, 8)
    record = split_record(ckpt)
    assert record is not None and (record.n_train, record.n_test) == (72, 8)
    assert record.test_split is None and record.held_out_fraction == 0.1 and record.from_folder


def test_json_log_lines_parse_and_end_with_the_checkpoint(tiny_dataset, tmp_path):
    out = tmp_path / "run"
    args = ["--dataset", tiny_dataset, "--output-dir", str(out), "--batch-size", "32",
            "--queue-size", "64", "--epochs", "2", "--nesting-list", "8,16,32",
            "--log-every", "3", "--log-format", "json", "--rotation", "none"]  # fmt: skip
    proc = run_cli(args, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(line) for line in proc.stdout.splitlines()]  # every line is JSON
    events = [r["event"] for r in records]
    # 10 steps per epoch, a line every 3 steps; the epoch's end is its own line
    assert events == ["step"] * 3 + ["epoch"] + ["step"] * 3 + ["epoch", "done"], events
    first = records[0]
    assert first["step"] == 3 and first["epoch"] == 1 and first["total_steps"] == 20
    assert set(first["loss_per_dim"]) == {"8", "16", "32"} and first["loss"] > 0
    assert first["images_per_s"] > 0 and 0 <= first["data_wait_fraction"] <= 1
    assert records[-1]["checkpoint"] == str(out / "checkpoint.pt")
    assert records[-1]["next"].startswith(f"make eval OUTPUT={out}")
    assert "train 320 / test 80 (split 'test')" in proc.stderr
    assert "\r" not in proc.stderr
    record = split_record(load_checkpoint(out / "checkpoint.pt"))
    assert record is not None and (record.n_train, record.n_test, record.test_split) == (
        320,
        80,
        "test",
    )


def test_bars_only_on_a_terminal(monkeypatch):
    class Terminal:
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(sys, "stdout", Terminal())
    assert use_bars("auto")
    assert not use_bars("text") and not use_bars("json")
    monkeypatch.setattr(sys, "stdout", open(os.devnull, "w"))  # noqa: SIM115
    assert not use_bars("auto")


def test_defaults_that_fit_are_left_alone():
    """The built-in shapes run (5,000 train images, queue 512, batch 128) is unchanged, and so
    is a large folder; a config with both flags set gets no note."""
    for n_train in (5000, 1_000_000):
        sizes = choose_sizes(TrainConfig(), n_train, 1)
        assert (sizes.batch_size, sizes.queue_size) == (128, 512)
        assert "(the default)" in (sizes.note or "")
    explicit = TrainConfig(batch_size=128, queue_size=512)
    assert choose_sizes(explicit, 5000, 1).note is None
    cfg = TrainConfig()
    sized = cfg.model_copy(update={"batch_size": 128, "queue_size": 512})  # what setup does
    assert sized.plain() == cfg.plain()


def test_a_set_batch_too_large_for_any_queue_gets_a_batch_that_works():
    with pytest.raises(UsageError, match=r"; use --batch-size 16$") as refused:
        choose_sizes(TrainConfig(batch_size=128), 270, 1)
    assert "too few for --batch-size 128" in str(refused.value)
    sizes = choose_sizes(TrainConfig(batch_size=16), 270, 1)
    check_config(TrainConfig(batch_size=16, queue_size=sizes.queue_size), 270, 1)


def test_too_few_images_for_the_smallest_batch():
    with pytest.raises(UsageError, match=r"add images .*at least 64.* or pass --allow-large-queue"):
        choose_sizes(TrainConfig(), 40, 1)
    sizes = choose_sizes(TrainConfig(allow_large_queue=True), 40, 1)
    assert (sizes.batch_size, sizes.queue_size) == (16, 16)


@pytest.mark.parametrize(
    ("n_train", "world", "expected"),
    [
        (270, 1, (16, 16)),
        (1800, 1, (128, 128)),
        (900, 1, (64, 64)),
        (2700, 2, (128, 512)),
        (1200, 2, (32, 64)),
    ],
)
def test_queue_and_batch_follow_the_data(n_train, world, expected):
    sizes = choose_sizes(TrainConfig(), n_train, world)
    assert (sizes.batch_size, sizes.queue_size) == expected
    check_config(TrainConfig(batch_size=sizes.batch_size, queue_size=sizes.queue_size), n_train,
                 world)  # fmt: skip


@pytest.mark.parametrize(
    ("n_train", "batch", "queue"),
    [(270, 128, 512), (270, 128, 64), (270, 32, 512), (5000, 128, 100), (72, 64, 64),
     (320, 32, 256)],
)  # fmt: skip
def test_impossible_explicit_flags_suggest_values_that_pass(n_train, batch, queue):
    cfg = TrainConfig(batch_size=batch, queue_size=queue)
    with pytest.raises(UsageError) as refused:
        check_config(cfg, n_train, 1)
    message = str(refused.value)
    assert "\n" not in message
    suggested = re.search(r"; use (--batch-size (\d+) )?--queue-size (\d+)$", message)
    assert suggested, message
    fixed = {"queue_size": int(suggested.group(3))}
    if suggested.group(2):
        fixed["batch_size"] = int(suggested.group(2))
    check_config(cfg.model_copy(update=fixed), n_train, 1)  # the next check accepts it


def test_cli_refuses_an_impossible_queue_in_one_line(photo_folder, tmp_path):
    args = ["--dataset", str(photo_folder), "--output-dir", str(tmp_path / "r"),
            "--queue-size", "512"]  # fmt: skip
    proc = run_cli(args, tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert "--queue-size 512 is 711% of the 72 training images" in lines[0]
    assert lines[0].endswith("; use --queue-size 16")


def test_resume_with_another_schedule_is_refused_naming_every_flag(tiny_config, tmp_path):
    out = tmp_path / "r"
    train(tiny_config(output_dir=out, epochs=2, max_steps=2))
    with pytest.raises(UsageError) as refused:
        train(tiny_config(output_dir=out, epochs=4, lr=0.03, resume="auto"))
    message = str(refused.value)
    assert "\n" not in message
    assert "--epochs 2 (now 4)" in message and "--lr 0.015 (now 0.03)" in message
    assert "--batch-size" not in message  # only what differs
    assert "another --output-dir" in message and "--resume never" in message
    assert load_checkpoint(out / "checkpoint.pt").step == 2  # nothing was trained
    train(tiny_config(output_dir=out, epochs=2, max_steps=3, resume="auto"))
    assert load_checkpoint(out / "checkpoint.pt").step == 3
