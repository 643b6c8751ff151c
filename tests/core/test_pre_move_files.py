"""Checkpoints and index folders written before the packages moved (core/, index/ split out of
trainer/ and server/) load and serve with today's code. The old writer is the last commit of the
old layout, taken from git history and run in a subprocess."""

from __future__ import annotations

import io
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from core.checkpoint import load_checkpoint
from core.encoder import load_encoder
from index.plan import SearchPlan
from index.store import IndexStore, read_manifest
from trainer.checkpointing import train_config

ROOT = Path(__file__).resolve().parents[2]
PRE_MOVE = "115680a"  # the last commit with trainer/checkpoint.py and server/index.py

WRITE = """
import sys
sys.path.insert(0, "tests")
from conftest import save_tiny_shapes
from trainer.config import TrainConfig
from trainer.train import train
from server.index import build_index_folder
out = sys.argv[1]
ds = save_tiny_shapes(out + "/data", n_train=64, n_test=16)
cfg = TrainConfig(dataset=ds, output_dir=out + "/run", cache_dir=out + "/cache", batch_size=32,
                  queue_size=32, allow_large_queue=True, epochs=1, nesting_list=[8, 16, 32],
                  workers=0, device="cpu", resume="never")
train(cfg)
build_index_folder(out + "/run/checkpoint.pt", ds, "train", out + "/index", batch_size=64,
                   limit=20, thumbnail_size=16)
"""


def old_tree(dest: Path) -> bool:
    """The pre-move sources, or False when this clone lacks that history (a shallow clone)."""
    try:
        blob = subprocess.run(
            ["git", "archive", PRE_MOVE, "trainer", "server", "tests/conftest.py"],
            cwd=ROOT,
            capture_output=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return False
    with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
        tar.extractall(dest, filter="data")
    return True


@pytest.fixture(scope="module")
def pre_move(tmp_path_factory) -> Path:
    src, out = tmp_path_factory.mktemp("old-src"), tmp_path_factory.mktemp("old-out")
    if not old_tree(src):
        pytest.skip(f"commit {PRE_MOVE} is not in this clone's history (shallow clone)")
    subprocess.run(
        [sys.executable, "-c", WRITE, str(out)], cwd=src, check=True, capture_output=True
    )
    return out


def test_a_pre_move_checkpoint_loads_and_embeds(pre_move):
    ckpt = load_checkpoint(pre_move / "run" / "checkpoint.pt")
    assert ckpt.model.nesting_list == [8, 16, 32] and ckpt.rotation is not None
    cfg = train_config(ckpt)
    assert cfg.queue_size == 32 and cfg.epochs == 1
    encoder = load_encoder(ckpt)
    with torch.inference_mode():
        z = encoder(torch.randn(2, 3, 32, 32))
    assert z.shape == (2, 32) and torch.isfinite(z).all()


def test_a_pre_move_index_folder_opens_and_searches(pre_move):
    ckpt = load_checkpoint(pre_move / "run" / "checkpoint.pt")
    folder = pre_move / "index"
    manifest = read_manifest(folder)
    store = IndexStore.open(folder, ckpt.fingerprint, 32, writable=False)
    try:
        assert len(store) == manifest["count"] == 20
        x = store.vectors.rows[np.arange(3)]
        hits = store.search(x, SearchPlan(k=1, dim=16))
        assert [hits.items[r[0]]["id"] for r in hits.rows.tolist()] == [
            "train-0",
            "train-1",
            "train-2",
        ]
        assert store.thumbnail("train-0")
    finally:
        store.close()
