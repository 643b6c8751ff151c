"""The Makefile's guard rails and its help, run as a user would (the venv stamp is taken as
made, so nothing is installed)."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def make(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["make", "--no-print-directory", "-o", ".venv/.installed", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_eval_on_a_missing_run_refuses_instead_of_training(tmp_path):
    out = tmp_path / "typo"
    r = make("eval", f"OUTPUT={out}")
    assert r.returncode == 2
    assert f"{out}/checkpoint.pt does not exist" in r.stderr
    assert f"make train OUTPUT={out}" in r.stderr and "TRAIN=1" in r.stderr
    assert "trainer.train" not in r.stdout and not out.exists()


def test_eval_on_a_missing_run_trains_when_asked(tmp_path):
    r = make("-n", "eval", f"OUTPUT={tmp_path / 'new'}", "TRAIN=1")
    assert r.returncode == 0, r.stderr
    assert "make train" in r.stdout or "trainer.train" in r.stdout


def test_help_lists_variables_with_their_values_expanded():
    r = make("help", "OUTPUT=runs/mine", "SERVE_PORT=9001")
    assert r.returncode == 0, r.stderr
    assert "$(" not in r.stdout
    lines = {line.split()[0]: line for line in r.stdout.splitlines() if " = " in line}
    assert "runs/mine " in lines["OUTPUT"] and "runs/mine/index" in lines["INDEX"]
    assert "9001" in lines["SERVE_PORT"] and "shapes" in lines["DATASET"]
    assert {"train", "eval", "serve", "test"} <= {
        line.split()[0] for line in r.stdout.splitlines() if line.startswith("  ")
    }
