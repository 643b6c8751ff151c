"""What the benchmark scripts share: where results go, a free port, writing a result JSON.

The scripts run as `python bench/<name>.py`, so they import this (and each other) by bare
module name: `from common import free_port`.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_result(path: Path, result: dict) -> None:
    """The JSON behind a figure, written whole (a partial run rewrites it as it goes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1) + "\n")


def memory(pid: int | str = "self") -> dict[str, int]:
    """VmRSS, VmHWM, RssAnon, RssFile of a process (this one), in kB (/proc/<pid>/status)."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            out[key + "_kb"] = int(value.split()[0])
    return out
