"""The int8 grid: fitted when training finishes, absent from older files (which still load),
and fitted in place by `python -m trainer.calibrate` with the fingerprint unchanged."""

from __future__ import annotations

import numpy as np
import torch
from support import train_tiny

from core.checkpoint import load_checkpoint
from trainer.calibrate import main


def test_training_fits_the_grid_and_calibrate_refits_it_for_old_files(tiny_dataset, tmp_path):
    path = train_tiny(tiny_dataset, tmp_path / "run")
    ckpt = load_checkpoint(path)
    fitted = ckpt.calibration
    assert fitted is not None and list(fitted.dims) == ckpt.model.nesting_list
    assert (fitted.high[:, :8] > fitted.low[:, :8]).all()
    assert not fitted.low[0, 8:].any() and not fitted.high[0, 8:].any()  # past dim 8: unused

    raw = torch.load(path, weights_only=True)  # as saved before the grid existed
    del raw["calibration"]
    torch.save(raw, tmp_path / "old.pt")
    old = load_checkpoint(tmp_path / "old.pt")
    assert old.calibration is None and old.fingerprint == ckpt.fingerprint

    assert main([str(tmp_path / "old.pt"), "--device", "cpu"]) == 0
    new = load_checkpoint(tmp_path / "old.pt")
    assert new.fingerprint == ckpt.fingerprint  # indexes built from it still load
    # the same fit as at training end: the served (rotated) coordinates of the same images
    assert np.allclose(new.calibration.low, fitted.low, atol=1e-5)
    assert np.allclose(new.calibration.high, fitted.high, atol=1e-5)
