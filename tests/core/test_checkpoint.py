import pytest
import torch

from core.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from core.encoder import load_encoder
from core.preprocess import IMAGENET_MEAN, IMAGENET_STD
from trainer.checkpointing import capture, train_config
from trainer.moco import build_moco
from trainer.train import train


def test_round_trip_and_encoder_load(tiny_config, tmp_path):
    cfg = tiny_config(max_steps=2)
    train(cfg)
    ckpt = load_checkpoint(cfg.output_dir / "checkpoint.pt")
    assert ckpt.step == 2 and ckpt.epoch == 0 and ckpt.world_size == 1
    assert ckpt.model == cfg.model_spec()
    assert ckpt.model.nesting_list == [8, 16, 32] and ckpt.model.full_dim == 32
    assert ckpt.model.mean == IMAGENET_MEAN and ckpt.model.std == IMAGENET_STD
    assert train_config(ckpt) == cfg and ckpt.optimizer is not None
    # weights_only load of the raw file works: plain types and tensors only.
    torch.load(cfg.output_dir / "checkpoint.pt", weights_only=True)
    encoder = load_encoder(ckpt)
    assert encoder(torch.randn(2, 3, 32, 32)).shape == (2, 32)
    save_checkpoint(ckpt, tmp_path / "copy.pt")
    again = load_checkpoint(tmp_path / "copy.pt")
    torch.testing.assert_close(again.queue, ckpt.queue)
    assert again.fingerprint == ckpt.fingerprint and again.model == ckpt.model


def v1_file(cfg, model, path, **config_changes) -> None:
    """A checkpoint exactly as format moco-matryoshka/1 wrote it (one flat config dict)."""
    config = cfg.plain() | {
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
        "world_size": 2,
        "embed_dim": cfg.embed_dim,
    }
    for key, value in config_changes.items():
        if value is None:
            del config[key]
        else:
            config[key] = value
    state = {
        "format": "moco-matryoshka/1",
        "config": config,
        "encoder_q": model.encoder_q.state_dict(),
        "encoder_k": model.encoder_k.state_dict(),
        "queue": model.queue,
        "queue_ptr": 0,
        "optimizer": {"state": {}, "param_groups": []},
        "scaler": {},
        "epoch": 1,
        "step": 7,
    }
    torch.save(state, path)


def test_v1_checkpoint_upgrades_to_the_same_model(tiny_config, tmp_path):
    cfg = tiny_config(head_bn=True, mlp_hidden=48)
    model = build_moco(cfg, bn_splits=1)
    v1_file(cfg, model, tmp_path / "v1.pt")
    ckpt = load_checkpoint(tmp_path / "v1.pt")
    assert ckpt.model == cfg.model_spec()
    assert (ckpt.step, ckpt.epoch, ckpt.world_size) == (7, 1, 2)
    assert (
        train_config(ckpt).nesting_list == cfg.nesting_list
        and train_config(ckpt).dataset == cfg.dataset
    )
    assert ckpt.fingerprint == capture(cfg, model).fingerprint
    x = torch.randn(3, 3, 32, 32)
    torch.testing.assert_close(load_encoder(ckpt)(x), model.encoder_q.eval()(x))


def test_v1_checkpoint_from_before_head_options(tiny_config, tmp_path):
    """Files older than --head-bn/--mlp-hidden were trained with neither; no mean/std: ImageNet."""
    cfg = tiny_config(head_bn=False)
    model = build_moco(cfg, bn_splits=1)
    v1_file(cfg, model, tmp_path / "old.pt", head_bn=None, mlp_hidden=None, mean=None, std=None)
    ckpt = load_checkpoint(tmp_path / "old.pt")
    assert not ckpt.model.head_bn and ckpt.model.mlp_hidden == 0
    assert not train_config(ckpt).head_bn
    assert ckpt.model.mean == IMAGENET_MEAN
    x = torch.randn(3, 3, 32, 32)
    torch.testing.assert_close(load_encoder(ckpt)(x), model.encoder_q.eval()(x))
    save_checkpoint(ckpt, tmp_path / "new.pt")  # an upgraded file is saved in today's format
    assert load_checkpoint(tmp_path / "new.pt").model == ckpt.model


def test_v1_checkpoint_with_a_bad_config_names_the_file(tiny_config, tmp_path):
    cfg = tiny_config()
    model = build_moco(cfg, bn_splits=1)
    v1_file(cfg, model, tmp_path / "odd.pt", arch="vit")
    with pytest.raises(CheckpointError, match=r"odd\.pt has an unusable config.*arch"):
        load_checkpoint(tmp_path / "odd.pt")


def test_truncated_checkpoint_gives_clear_error(tiny_config, tmp_path):
    cfg = tiny_config(max_steps=1)
    train(cfg)
    data = (cfg.output_dir / "checkpoint.pt").read_bytes()
    bad = tmp_path / "truncated.pt"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"truncated\.pt is truncated, corrupt"):
        load_checkpoint(bad)


def test_foreign_and_missing_files(tmp_path):
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, foreign)
    with pytest.raises(CheckpointError, match=r"foreign\.pt is not a MoCo-Matryoshka checkpoint"):
        load_checkpoint(foreign)
    text = tmp_path / "notes.pt"
    text.write_text("hello")
    with pytest.raises(CheckpointError, match=r"notes\.pt"):
        load_checkpoint(text)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")
    partial = tmp_path / "partial.pt"
    torch.save({"format": "moco-matryoshka/2", "model": {}, "train": {}}, partial)
    with pytest.raises(CheckpointError, match=r"partial\.pt is missing encoder_q, encoder_k"):
        load_checkpoint(partial)


def test_failed_save_leaves_previous_checkpoint_intact(tiny_config, tmp_path, monkeypatch):
    cfg = tiny_config()
    model = build_moco(cfg, bn_splits=1)
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(capture(cfg, model, step=1), path)

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(OSError):
        save_checkpoint(capture(cfg, model, step=2), path)
    monkeypatch.undo()
    assert load_checkpoint(path).step == 1
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]
