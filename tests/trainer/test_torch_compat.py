"""The code must run on the GPU machine's older torch (2.11, docs/GPU.md) as well as the pin."""

from __future__ import annotations

import torch.nn as nn
import torch.nn.parallel

from trainer.distributed import process_group as distributed


class _OldDDP:
    """DistributedDataParallel as torch 2.11 spells it: no forward_sync_buffers."""

    def __init__(self, module, device_ids=None, broadcast_buffers=True):
        self.module, self.broadcast_buffers = module, broadcast_buffers


class _NewDDP:
    def __init__(self, module, broadcast_buffers=None, forward_sync_buffers=None):
        self.module = module
        self.broadcast_buffers, self.forward_sync_buffers = broadcast_buffers, forward_sync_buffers


def test_ddp_buffer_sync_off_on_old_and_new_torch(monkeypatch):
    model = nn.Linear(2, 2)
    monkeypatch.setattr(torch.nn.parallel, "DistributedDataParallel", _OldDDP)
    old = distributed.wrap_ddp(model)
    assert old.module is model and old.broadcast_buffers is False
    monkeypatch.setattr(torch.nn.parallel, "DistributedDataParallel", _NewDDP)
    new = distributed.wrap_ddp(model)
    assert new.forward_sync_buffers is False and new.broadcast_buffers is None
