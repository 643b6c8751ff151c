import pytest
import torch

from trainer.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from trainer.model import load_encoder
from trainer.train import train


def test_round_trip_and_encoder_load(tiny_config, tmp_path):
    cfg = tiny_config(max_steps=2)
    train(cfg)
    state = load_checkpoint(cfg.output_dir / "checkpoint.pt")
    assert state["step"] == 2
    assert state["config"]["nesting_list"] == [8, 16, 32]
    assert state["config"]["mean"] and state["config"]["std"]
    # weights_only load of the raw file works: plain types and tensors only.
    raw = torch.load(cfg.output_dir / "checkpoint.pt", weights_only=True)
    assert set(raw) >= {"encoder_q", "encoder_k", "queue", "optimizer", "epoch", "step"}
    encoder = load_encoder(state)
    assert encoder(torch.randn(2, 3, 32, 32)).shape == (2, 32)
    save_checkpoint({k: v for k, v in state.items() if k != "format"}, tmp_path / "copy.pt")
    again = load_checkpoint(tmp_path / "copy.pt")
    torch.testing.assert_close(again["queue"], state["queue"])


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
    with pytest.raises(CheckpointError, match="not a MoCo-Matryoshka checkpoint"):
        load_checkpoint(foreign)
    text = tmp_path / "notes.pt"
    text.write_text("hello")
    with pytest.raises(CheckpointError, match=r"notes\.pt"):
        load_checkpoint(text)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")


def test_failed_save_leaves_previous_checkpoint_intact(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(
        {
            "config": {},
            "encoder_q": {},
            "encoder_k": {},
            "queue": torch.ones(2),
            "epoch": 0,
            "step": 1,
        },
        path,
    )

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(OSError):
        save_checkpoint({"config": {}}, path)
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]
