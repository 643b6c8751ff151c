"""The server tests' shared fixture: a tiny trained checkpoint, one per test module."""

from __future__ import annotations

import pytest
from support import train_tiny


@pytest.fixture(scope="module")
def checkpoint(tiny_dataset, tmp_path_factory):
    return train_tiny(tiny_dataset, tmp_path_factory.mktemp("run"))
