"""The served rotation: PCA basis fitted when training finishes, stored in the checkpoint,
applied wherever a checkpoint is loaded; full-dim similarities stay exactly as trained."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch

from core.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from core.cli import run_cli
from core.encoder import load_encoder
from trainer.checkpointing import train_config
from trainer.evaluate.cli import PROG, main
from trainer.rotation import pca_rotation
from trainer.train import train


def anisotropic(n: int = 400, width: int = 16, seed: int = 0) -> np.ndarray:
    """Rows whose spread grows with the coordinate: the last axis matters most."""
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, width)) * np.geomspace(1, 100, width)).astype(np.float32)


def cosine(x: np.ndarray) -> np.ndarray:
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    return x @ x.T


def test_pca_rotation_is_orthogonal_puts_variance_first_and_keeps_similarities():
    x = anisotropic()
    r = pca_rotation(x)
    np.testing.assert_allclose(r.T @ r, np.eye(16), atol=1e-5)
    variance = (x @ r).var(0)
    assert np.all(np.diff(variance) <= 1e-3), variance
    # the last (widest) coordinate becomes the first one, sign made positive
    assert r[-1, 0] > 0.95
    np.testing.assert_allclose(cosine(x @ r), cosine(x), atol=1e-5)
    # the same axes as an SVD, and the same signs on a refit
    _, _, vt = np.linalg.svd(x - x.mean(0), full_matrices=False)
    np.testing.assert_allclose(np.abs(r.T @ vt.T).max(0), 1, atol=1e-4)
    np.testing.assert_array_equal(pca_rotation(x.copy()), r)


def test_pca_rotation_needs_two_rows():
    with pytest.raises(ValueError, match="at least 2"):
        pca_rotation(np.ones((1, 4), np.float32))


def test_training_fits_the_rotation_the_encoder_serves(tiny_config, tiny_dataset):
    cfg = tiny_config(epochs=1)
    train(cfg)
    ckpt = load_checkpoint(cfg.output_dir / "checkpoint.pt")
    assert train_config(ckpt).rotation == "pca" and ckpt.rotation.shape == (32, 32)
    torch.testing.assert_close(ckpt.rotation.T @ ckpt.rotation, torch.eye(32), atol=1e-5, rtol=0)
    served = load_encoder(ckpt)
    raw = load_encoder(ckpt)
    raw.rotation = None
    images = torch.randn(6, 3, 32, 32)
    with torch.no_grad():
        a, b = served(images).numpy(), raw(images).numpy()
    np.testing.assert_allclose(a, b @ ckpt.rotation.numpy(), atol=1e-5)
    np.testing.assert_allclose(cosine(a), cosine(b), atol=1e-5)
    # resuming a finished run trains nothing and refits the same rotation
    train(cfg.model_copy(update={"resume": "auto"}))
    again = load_checkpoint(cfg.output_dir / "checkpoint.pt")
    torch.testing.assert_close(again.rotation, ckpt.rotation, atol=1e-5, rtol=0)
    assert again.fingerprint != _without_rotation(again).fingerprint


def _without_rotation(ckpt):
    from dataclasses import replace

    return replace(ckpt, rotation=None)


def test_rotation_none_and_stopped_runs_serve_the_trained_coordinates(tiny_config, tmp_path):
    cfg = tiny_config(epochs=1, rotation="none")
    train(cfg)
    assert load_checkpoint(cfg.output_dir / "checkpoint.pt").rotation is None


def test_old_checkpoint_without_rotation_loads_as_none(tiny_config, tmp_path):
    cfg = tiny_config(max_steps=1)
    train(cfg)
    raw = torch.load(cfg.output_dir / "checkpoint.pt", weights_only=True)
    del raw["rotation"], raw["train"]["rotation"]
    torch.save(raw, tmp_path / "old.pt")
    old = load_checkpoint(tmp_path / "old.pt")
    assert old.rotation is None and train_config(old).rotation == "none"


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (torch.eye(31), r"rotation \(31, 31\), not a \[32, 32\]"),
        (torch.full((32, 32), float("nan")), "NaN"),
        ([[1.0]], "rotation list"),
    ],
)
def test_bad_rotation_in_a_checkpoint_is_a_clear_error(tiny_config, tmp_path, bad, message):
    cfg = tiny_config(max_steps=1)
    train(cfg)
    ckpt = load_checkpoint(cfg.output_dir / "checkpoint.pt")
    ckpt.rotation = bad
    save_checkpoint(ckpt, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(tmp_path / "bad.pt")


def evaluate(monkeypatch, capsys, *argv) -> dict:
    out = argv[argv.index("--output") + 1]
    monkeypatch.setattr(sys, "argv", [PROG, *map(str, argv)])
    with pytest.raises(SystemExit) as exc:
        run_cli(main, PROG)
    capsys.readouterr()
    assert exc.value.code == 0
    return json.loads(open(out).read())


def test_evaluate_rotation_flag_scores_raw_and_refitted_bases(
    tiny_config, tmp_path, monkeypatch, capsys
):
    """--rotation pca on a raw checkpoint scores what training with --rotation pca serves."""
    rotated = tiny_config(epochs=1, output_dir=tmp_path / "pca")
    plain = tiny_config(epochs=1, output_dir=tmp_path / "none", rotation="none")
    train(rotated)
    train(plain)

    def score(run, *flags):
        path = run.output_dir / "checkpoint.pt"
        result = evaluate(monkeypatch, capsys, "--checkpoint", path, "--output",
                          tmp_path / "e.json", "--no-plot", *flags)  # fmt: skip
        return result["rotation"], [(r["knn_top1"], r["map_at_k"]) for r in result["metrics"]]

    served, refit = score(rotated), score(plain, "--rotation", "pca")
    assert served[0] == refit[0] == "pca"
    np.testing.assert_allclose(served[1], refit[1], atol=1e-9)
    stripped, trained = score(rotated, "--rotation", "none"), score(plain)
    assert stripped[0] == trained[0] == "none"
    np.testing.assert_allclose(stripped[1], trained[1], atol=1e-9)
    # the full dim is the same whichever basis; the small dims are not
    assert served[1][-1] == pytest.approx(stripped[1][-1], abs=1 / 80)  # one near-tie may flip
    assert served[1] != stripped[1]
