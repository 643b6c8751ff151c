"""The evaluation CLI and library: npz and checkpoint paths, one extraction, bad input -> exit 2."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from search_reference import search

from core.checkpoint import load_checkpoint, save_checkpoint
from core.cli import run_cli
from core.nesting import truncate_normalize, truncate_normalize_np
from trainer.checkpointing import capture
from trainer.evaluate.cli import PROG, Embedded, evaluate_embeddings, evaluate_encoder, main
from trainer.evaluate.metrics import average_precision_at_k, knn_predict

KEYS = {
    "checkpoint",
    "dataset",
    "rotation",
    "n_train",
    "n_test",
    "metrics",
    "int8_calibration",
    "dtypes",
}
ROW_KEYS = {"dim", "knn_top1", "map_at_k", "k", "map_k"}


def cli(monkeypatch, capsys, *argv: str) -> tuple[int, str, str]:
    """Run the CLI in-process exactly as `python -m trainer.evaluate` would."""
    monkeypatch.setattr(sys, "argv", [PROG, *map(str, argv)])
    with pytest.raises(SystemExit) as exc:
        run_cli(main, PROG)
    out, err = capsys.readouterr()
    return exc.value.code, out, err


def clustered(seed: int = 0, n_train: int = 300, n_test: int = 60, width: int = 48) -> dict:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((4, width))
    train_y, test_y = rng.integers(0, 4, n_train), rng.integers(0, 4, n_test)
    return {
        "train_x": (centres[train_y] + 2 * rng.standard_normal((n_train, width))).astype(
            np.float32
        ),
        "train_y": train_y,
        "test_x": (centres[test_y] + 2 * rng.standard_normal((n_test, width))).astype(np.float32),
        "test_y": test_y,
    }


@pytest.fixture
def npz(tmp_path):
    path = tmp_path / "emb.npz"
    np.savez(path, **clustered())
    return path


def test_npz_cli_writes_json_table_and_plot(monkeypatch, capsys, tmp_path, npz):
    out = tmp_path / "mrl" / "eval.json"
    code, stdout, _ = cli(monkeypatch, capsys, "--embeddings", npz, "--output", out, "--k", 5)
    assert code == 0
    result = json.loads(out.read_text())
    assert set(result) == KEYS
    assert (result["n_train"], result["n_test"]) == (300, 60)
    assert [r["dim"] for r in result["metrics"]] == [8, 16, 32, 48]
    assert all(set(r) == ROW_KEYS and r["k"] == 5 and r["map_k"] == 10 for r in result["metrics"])
    data = clustered()
    for row in result["metrics"]:
        scores, ids = search(data["train_x"], data["test_x"], 10, row["dim"])
        pred = knn_predict(scores, ids, data["train_y"], 5)
        assert row["knn_top1"] == float(np.mean(pred == data["test_y"]))
        ap = average_precision_at_k(ids, data["train_y"], data["test_y"], 10)
        assert row["map_at_k"] == float(np.mean(ap))
    header, *table = stdout.splitlines()
    assert header.startswith(f"embeddings on {npz}: 300 train images as the bank, 60 test")
    assert table[0] == "| dim | kNN top-1 | mAP@10 |"
    assert len(table) == 2 * (2 + 4)  # per dim, then per (dim, output type)
    assert table[6].startswith("| dim | float | float16 | int8 / uint8 |")
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_compare_overlays_a_second_run(monkeypatch, capsys, tmp_path, npz):
    base = tmp_path / "baseline" / "eval.json"
    assert (
        cli(monkeypatch, capsys, "--embeddings", npz, "--output", base, "--nesting-list", 48)[0]
        == 0
    )
    out, png = tmp_path / "mrl" / "eval.json", tmp_path / "cmp.png"
    code, stdout, _ = cli(
        monkeypatch, capsys, "--embeddings", npz, "--output", out, "--compare", base, "--plot", png
    )
    assert code == 0
    lines = stdout.splitlines()[1:]
    assert lines[0] == "| dim | kNN top-1 mrl | kNN top-1 baseline | mAP@10 mrl | mAP@10 baseline |"
    assert lines[2].startswith("| 8 | ") and lines[2].count(" - ") == 2
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_nesting_list_selects_dims(npz):
    data = clustered()
    rows = evaluate_embeddings(Embedded(**data), [4, 48], k=3, map_k=4)
    assert [(r["dim"], r["k"], r["map_k"]) for r in rows] == [(4, 3, 4), (48, 3, 4)]


def bad_npz(tmp_path, **changes) -> str:
    arrays = {**clustered(), **changes}
    arrays = {k: v for k, v in arrays.items() if v is not None}
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    return str(path)


def one_row_bank(tmp_path) -> str:
    a = clustered()
    return bad_npz(tmp_path, train_x=a["train_x"][:1], train_y=a["train_y"][:1])


@pytest.mark.parametrize(
    ("make_args", "message"),
    [
        (lambda p: ["--checkpoint", p / "missing.pt"], "does not exist"),
        (lambda p: ["--checkpoint", write(p / "x.pt", b"not a checkpoint")], "not a torch file"),
        (lambda p: ["--checkpoint", torch_file(p / "y.pt")], "not a MoCo-Matryoshka checkpoint"),
        (lambda p: ["--embeddings", p / "none.npz"], "no such file"),
        (lambda p: ["--embeddings", write(p / "z.npz", b"garbage")], "not a readable .npz"),
        (lambda p: ["--embeddings", bad_npz(p, test_y=None)], "lacks test_y"),
        (lambda p: ["--embeddings", bad_npz(p, train_y=np.zeros(7, int))], "300 rows but"),
        (lambda p: ["--embeddings", bad_npz(p, test_x=nan_x())], "NaN"),
        (lambda p: ["--embeddings", bad_npz(p, test_x=np.ones((60, 8), "f4"))], "width"),
        (lambda p: ["--embeddings", bad_npz(p, test_y=np.ones(60))], "integer labels"),
        (lambda p: ["--embeddings", bad_npz(p), "--k", 301], "larger than the bank"),
        (lambda p: ["--embeddings", bad_npz(p), "--map-k", 0], "must be >= 1"),
        (lambda p: ["--embeddings", bad_npz(p), "--nesting-list", "8,64"], "larger than the"),
        (lambda p: ["--embeddings", bad_npz(p), "--nesting-list", "16,8"], "ascending"),
        (lambda p: ["--embeddings", bad_npz(p), "--compare", p / "no.json"], "no such file"),
        (lambda p: ["--embeddings", bad_npz(p), "--k", "many"], "invalid int"),
        (lambda p: ["--embeddings", bad_npz(p), "--checkpoint", p / "c.pt"], "not allowed"),
        (
            lambda p: [
                "--embeddings",
                one_row_bank(p),
                "--k",
                1,
                "--map-k",
                1,
                "--rotation",
                "pca",
            ],
            "at least 2 train",
        ),
        (lambda p: ["--embeddings", bad_npz(p), "--rotation", "svd"], "invalid choice"),
        (lambda p: [], "one of the arguments"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(monkeypatch, capsys, tmp_path, make_args, message):
    code, _, err = cli(monkeypatch, capsys, *make_args(tmp_path))
    assert code == 2
    assert len(err.strip().splitlines()) == 1, err
    assert message in err


def write(path, data: bytes):
    path.write_bytes(data)
    return path


def torch_file(path):
    torch.save({"weights": torch.zeros(2)}, path)
    return path


def nan_x() -> np.ndarray:
    x = np.ones((60, 48), dtype=np.float32)
    x[3, 5] = np.nan
    return x


@pytest.fixture
def checkpoint(tiny_config, tmp_path):
    """A real (untrained) checkpoint of the tiny config's model."""
    from trainer.moco import build_moco

    cfg = tiny_config()
    torch.manual_seed(0)
    model = build_moco(cfg, bn_splits=1)
    path = tmp_path / "run" / "checkpoint.pt"
    save_checkpoint(capture(cfg, model), path)
    return path, cfg, model.encoder_q.eval()


def test_checkpoint_and_embeddings_paths_agree(monkeypatch, capsys, tmp_path, checkpoint):
    path, cfg, _ = checkpoint
    out, npz = tmp_path / "ck.json", tmp_path / "saved.npz"
    args = ["--checkpoint", path, "--output", out, "--save-embeddings", npz, "--no-plot"]
    code, stdout, stderr = cli(monkeypatch, capsys, *args)
    assert code == 0
    assert stdout.startswith(f"{path} (step 0, epoch 0) on {cfg.dataset}: 320 train images")
    assert "\r" not in stdout + stderr and "embed train" not in stderr  # no bars off a terminal
    from_ckpt = json.loads(out.read_text())
    assert set(from_ckpt) == KEYS | {"step", "epoch"} and from_ckpt["checkpoint"] == str(path)
    assert (from_ckpt["step"], from_ckpt["epoch"]) == (0, 0)
    assert [r["dim"] for r in from_ckpt["metrics"]] == cfg.nesting_list
    assert (from_ckpt["n_train"], from_ckpt["n_test"]) == (320, 80)
    out2 = tmp_path / "npz.json"
    args = ["--embeddings", npz, "--output", out2, "--nesting-list", "8,16,32", "--no-plot"]
    assert cli(monkeypatch, capsys, *args)[0] == 0
    assert json.loads(out2.read_text())["metrics"] == from_ckpt["metrics"]


def test_one_extraction_sliced_equals_embedding_each_dim(tiny_dataset, checkpoint):
    import datasets

    from core.preprocess import IMAGENET_MEAN, IMAGENET_STD, EvalPreprocess
    from trainer.embed import extract_embeddings

    _, cfg, encoder = checkpoint
    ds = datasets.load_from_disk(tiny_dataset)["test"]
    pre = EvalPreprocess(cfg.image_size, IMAGENET_MEAN, IMAGENET_STD)
    full, labels = extract_embeddings(encoder, ds, pre, "image", "label", "cpu", batch_size=32)
    assert full.shape == (80, 32) and labels.tolist() == ds["label"]
    for dim in cfg.nesting_list:

        def at_dim(x, dim=dim):
            return truncate_normalize(encoder(x), dim)

        alone, _ = extract_embeddings(at_dim, ds, pre, "image", "label", "cpu", batch_size=16)
        np.testing.assert_allclose(truncate_normalize_np(full, dim), alone, atol=1e-5)


@pytest.mark.parametrize("rotation", ["none", "pca"])
def test_evaluate_encoder_matches_cli_and_restores_train_mode(
    monkeypatch, capsys, tmp_path, checkpoint, rotation
):
    """In-training evaluation scores what the checkpoint will serve, rotation included."""
    from trainer.rotation import fit_rotation

    path, cfg, encoder = checkpoint
    cfg = cfg.model_copy(update={"rotation": rotation})
    ckpt = load_checkpoint(path)
    if rotation == "pca":
        ckpt.rotation = fit_rotation(encoder, cfg, torch.device("cpu"))
    save_checkpoint(ckpt, path)
    encoder.train()
    rows = evaluate_encoder(encoder, cfg, "cpu", batch_size=64)
    assert encoder.training
    out = tmp_path / "ck.json"
    assert cli(monkeypatch, capsys, "--checkpoint", path, "--output", out, "--no-plot")[0] == 0
    served = json.loads(out.read_text())
    assert served["rotation"] == rotation
    for got, want in zip(rows, served["metrics"], strict=True):
        assert got == pytest.approx(want, abs=1e-9)


def test_random_init_scores_a_reinitialised_network(monkeypatch, capsys, tmp_path, checkpoint):
    path, _, _ = checkpoint
    out = tmp_path / "rand.json"
    args = ["--checkpoint", path, "--output", out, "--random-init", "--no-plot"]
    code, stdout, _ = cli(monkeypatch, capsys, *args)
    assert code == 0 and "kNN top-1" in stdout
    assert len(json.loads(out.read_text())["metrics"]) == 3


def _extract_on_rank(rank: int, world_size: int, init_file: str, dataset: str, out: str) -> None:
    import datasets
    import torch.distributed as dist

    from trainer.embed import extract_embeddings

    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size
    )
    ds = datasets.load_from_disk(dataset)["test"].select(range(77))
    torch.manual_seed(0)
    encoder = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 12)).eval()
    pre = lambda image: torch.from_numpy(np.asarray(image, np.float32) / 255).permute(2, 0, 1)  # noqa: E731
    x, y = extract_embeddings(encoder, ds, pre, "image", "label", "cpu", 8, rank, world_size)
    np.savez(f"{out}-{rank}.npz", x=x, y=y)
    dist.destroy_process_group()


@pytest.mark.slow
def test_sharded_extraction_gathers_dataset_order(tiny_dataset, tmp_path):
    import datasets

    world_size = 3
    torch.multiprocessing.spawn(
        _extract_on_rank,
        args=(world_size, str(tmp_path / "init"), tiny_dataset, str(tmp_path / "out")),
        nprocs=world_size,
    )
    ds = datasets.load_from_disk(tiny_dataset)["test"].select(range(77))
    torch.manual_seed(0)
    encoder = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 12))
    images = torch.stack(
        [torch.from_numpy(np.asarray(im, np.float32) / 255).permute(2, 0, 1) for im in ds["image"]]
    )
    with torch.no_grad():
        expected = encoder(images).numpy()
    for rank in range(world_size):
        got = np.load(tmp_path / f"out-{rank}.npz")
        np.testing.assert_allclose(got["x"], expected, atol=1e-5)
        assert got["y"].tolist() == ds["label"]
