"""The post-hoc paths: the Matryoshka adaptor (trainer/posthoc.py, `evaluate --adaptor`) and the
PCA rotation fitted on a finished checkpoint (`python -m trainer.rotation`)."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch

from core.checkpoint import load_checkpoint
from core.cli import run_cli
from trainer.checkpointing import train_config
from trainer.evaluate.cli import PROG, main
from trainer.posthoc import Adaptor, AdaptorConfig, adaptor_loss, apply_adaptor, fit_adaptor
from trainer.rotation import main as rotation_main
from trainer.rotation import pca_rotation, rotate_checkpoint
from trainer.train import train


def clusters(n: int = 300, width: int = 32, classes: int = 6, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, width)) * np.linspace(2, 0.2, width)
    y = rng.integers(0, classes, n)
    x = centres[y] + 0.5 * rng.normal(size=(n, width))
    return (x @ pca_rotation(x)).astype(np.float32), y


def test_adaptor_starts_as_the_identity():
    x, _ = clusters()
    model = Adaptor(x.shape[1], 16)
    np.testing.assert_array_equal(apply_adaptor(model, x), x)


def test_fit_adaptor_lowers_its_loss_and_is_deterministic():
    x, _ = clusters()
    cfg = AdaptorConfig(dims=(2, 4, 8), hidden=32, steps=40, batch=128)
    xt = torch.from_numpy(x[:128])
    target = torch.nn.functional.normalize(xt, dim=1)
    target = target @ target.T

    def loss(model):
        with torch.no_grad():
            return float(adaptor_loss(model(xt), target, xt, [2, 4, 8], cfg))

    fitted = fit_adaptor(x, cfg)
    assert loss(fitted) < loss(Adaptor(x.shape[1], 32))
    again = fit_adaptor(x, cfg)
    np.testing.assert_array_equal(apply_adaptor(fitted, x), apply_adaptor(again, x))
    assert apply_adaptor(fitted, x[:5]).shape == (5, x.shape[1])


def test_fit_adaptor_refuses_too_few_rows():
    with pytest.raises(ValueError, match="at least 3"):
        fit_adaptor(np.zeros((2, 4), dtype=np.float32))


def evaluate(monkeypatch, capsys, *argv) -> dict:
    out = argv[argv.index("--output") + 1]
    monkeypatch.setattr(sys, "argv", [PROG, *map(str, argv)])
    with pytest.raises(SystemExit) as exc:
        run_cli(main, PROG)
    capsys.readouterr()
    assert exc.value.code == 0
    return json.loads(open(out).read())


def test_evaluate_adaptor_flag_scores_the_adapted_embeddings(tmp_path, monkeypatch, capsys):
    x, y = clusters()
    np.savez(tmp_path / "e.npz", train_x=x[:200], train_y=y[:200], test_x=x[200:], test_y=y[200:])
    common = ["--embeddings", tmp_path / "e.npz", "--no-plot", "--nesting-list", "4,8,32"]
    plain = evaluate(monkeypatch, capsys, *common, "--output", tmp_path / "a.json")
    adapted = evaluate(monkeypatch, capsys, *common, "--adaptor", "--output", tmp_path / "b.json")
    assert "posthoc" not in plain and adapted["posthoc"] == "adaptor"
    assert [r["dim"] for r in adapted["metrics"]] == [4, 8, 32]
    assert all(0 <= r["knn_top1"] <= 1 for r in adapted["metrics"])


def test_rotate_checkpoint_fits_what_training_would_have(tiny_config, tmp_path, capsys):
    rotated = tiny_config(epochs=1, output_dir=tmp_path / "pca")
    plain = tiny_config(epochs=1, output_dir=tmp_path / "none", rotation="none")
    train(rotated)
    train(plain)
    out = rotate_checkpoint(plain.output_dir / "checkpoint.pt", tmp_path / "after.pt", "cpu")
    after, before = load_checkpoint(out), load_checkpoint(rotated.output_dir / "checkpoint.pt")
    assert train_config(after).rotation == "pca"
    torch.testing.assert_close(after.rotation, before.rotation, atol=1e-4, rtol=0)
    assert load_checkpoint(plain.output_dir / "checkpoint.pt").rotation is None  # not in place
    assert rotation_main([str(plain.output_dir / "checkpoint.pt"), "--device", "cpu"]) == 0
    assert "wrote" in capsys.readouterr().out
    assert load_checkpoint(plain.output_dir / "checkpoint.pt").rotation is not None
