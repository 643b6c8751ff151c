"""trainer.distributed.torchrun: one exit code per outcome, as a container's PID 1 needs.

The fast tests drive run_agent with torch's own exceptions; the slow ones run the real
agent and worker and stop it with SIGTERM, as a kubelet or `docker stop` does.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from torch.distributed.elastic.multiprocessing.api import SignalException
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure

from core.checkpoint import load_checkpoint
from trainer.distributed.launch import run_agent

AGENT = [sys.executable, "-m", "trainer.distributed.torchrun", "--standalone", "--nproc-per-node=1"]


def _raise(exc: BaseException):
    def start():
        raise exc

    return start


def _child_failed(exitcode: int) -> ChildFailedError:
    failure = ProcessFailure(local_rank=0, pid=1, exitcode=exitcode, error_file="")
    return ChildFailedError("trainer.train", {0: failure})


def test_sigterm_is_143_with_one_line(capsys):
    code = run_agent(_raise(SignalException("got 15", signal.SIGTERM)), "prog")
    assert code == 143
    err = capsys.readouterr().err
    assert err == "prog: stopped by SIGTERM; workers were asked to save\n"


@pytest.mark.parametrize(("exitcode", "expected"), [(2, 2), (1, 1), (-9, 1)])
def test_failed_worker_keeps_its_exit_code(exitcode, expected, capsys):
    """A worker's usage error stays 2 (the Job's FailJob rule); a signal death is 1."""
    assert run_agent(_raise(_child_failed(exitcode)), "prog") == expected
    assert capsys.readouterr().err.startswith("prog: error: worker rank 0 failed")


def test_success_is_0():
    assert run_agent(lambda: None) == 0


@pytest.mark.slow
def test_bad_trainer_flag_through_the_agent_exits_2():
    r = subprocess.run(
        [*AGENT, "-m", "trainer.train", "--epochs", "zero"],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert r.returncode == 2, r.stderr
    assert "worker rank 0 failed with exit code 2" in r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.slow
def test_sigterm_to_the_agent_saves_and_exits_143(tiny_dataset, tmp_path):
    out = tmp_path / "run"
    args = [*AGENT, "-m", "trainer.train", "--dataset", tiny_dataset, "--output-dir", str(out),
            "--batch-size", "32", "--queue-size", "64", "--workers", "0", "--epochs", "200",
            "--nesting-list", "8,16,32"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(args, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 120
    while time.time() < deadline and not (out / "train_log.jsonl").exists():
        time.sleep(0.2)
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=90)
    assert proc.returncode == 143, err
    assert "stopped by SIGTERM; workers were asked to save" in err
    assert "Traceback" not in err
    assert load_checkpoint(out / "checkpoint.pt").step >= 10
