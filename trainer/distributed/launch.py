"""Launch N local `python -m trainer.train` workers through torchrun's own launcher API.

`python -m trainer.train_distributed --num-gpus N [--nnodes ..] [--max-restarts ..] [flags]`
is `torchrun --nproc-per-node N -m trainer.train [flags]` with a standalone rendezvous:
same agent, same environment for the workers, same elastic restarts and SIGTERM
forwarding. Every flag this launcher does not know goes to trainer.train unchanged.
"""

from __future__ import annotations

import argparse
import os
import sys
import uuid
from collections.abc import Callable, MutableMapping

from torch.distributed.elastic.multiprocessing.api import SignalException
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.launcher.api import LaunchConfig, elastic_launch

from core.cli import UsageError, make_parser
from trainer.config import parse_train_args

PROG = "python -m trainer.train_distributed"
TRAIN_MODULE = "trainer.train"


def _whole_number(minimum: int):
    """argparse type: an int >= minimum, with a one-line message otherwise."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} must be at least {minimum}")
        return value

    return parse


def _nnodes(text: str) -> tuple[int, int]:
    """`2` or `1:4` (elastic min:max), as torchrun spells it."""
    lo, _, hi = text.partition(":")
    try:
        low, high = int(lo), int(hi or lo)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not N or MIN:MAX") from None
    if not 0 < low <= high:
        raise argparse.ArgumentTypeError(f"{text!r} needs 0 < MIN <= MAX")
    return low, high


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    parser = make_parser(PROG, __doc__.splitlines()[0])
    parser.allow_abbrev = False
    parser.add_argument(
        "--num-gpus",
        "--nproc-per-node",
        dest="num_gpus",
        type=_whole_number(1),
        required=True,
        metavar="N",
        help="worker processes on this machine (one per GPU or MIG slice; any N on CPU)",
    )
    parser.add_argument(
        "--nnodes", type=_nnodes, default=(1, 1), metavar="N|MIN:MAX", help="(default: 1)"
    )
    parser.add_argument(
        "--max-restarts",
        type=_whole_number(0),
        default=0,
        metavar="N",
        help="restart the worker group up to N times after a failure; it resumes from "
        "the checkpoint (default: 0)",
    )
    parser.add_argument(
        "--rdzv-endpoint",
        default="",
        metavar="HOST:PORT",
        help="c10d rendezvous of a multi-node job (default: a free local port)",
    )
    parser.add_argument(
        "--rdzv-id", default="", metavar="ID", help="job id shared by all nodes of a job"
    )
    return parser.parse_known_args(argv)


def launch_config(ns: argparse.Namespace) -> LaunchConfig:
    """Standalone rendezvous on one node (port 0 = any free port), c10d across nodes."""
    min_nodes, max_nodes = ns.nnodes
    endpoint, run_id = ns.rdzv_endpoint, ns.rdzv_id
    if max_nodes > 1 and not endpoint:
        raise UsageError("--nnodes above 1 needs --rdzv-endpoint HOST:PORT (the same on all nodes)")
    if not endpoint:
        endpoint, run_id = "localhost:0", run_id or str(uuid.uuid4())
    return LaunchConfig(
        min_nodes=min_nodes,
        max_nodes=max_nodes,
        nproc_per_node=ns.num_gpus,
        run_id=run_id or "moco-matryoshka",
        role="trainer",
        rdzv_backend="c10d",
        rdzv_endpoint=endpoint,
        max_restarts=ns.max_restarts,
    )


def launch(
    argv: list[str] | None,
    environ: MutableMapping[str, str],
    module: str = TRAIN_MODULE,
) -> int:
    """Run `python -m <module> <passthrough flags>` N times; returns the job's exit code
    (run_agent's)."""
    ns, passthrough = parse_args(argv)
    if module == TRAIN_MODULE:
        parse_train_args(passthrough)
    config = launch_config(ns)
    if "OMP_NUM_THREADS" not in environ:
        environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // ns.num_gpus))
    return run_agent(
        lambda: elastic_launch(config, sys.executable)("-u", "-m", module, *passthrough)
    )


def run_agent(start: Callable[[], object], prog: str = PROG) -> int:
    """Run a torchelastic agent; its failures become one stderr line and an exit code.

    A failed worker gives its exit code (1 if it died of a signal), so a worker's usage
    error (2) stays 2. A SIGTERM/SIGINT to the agent is forwarded to the workers (rank 0
    checkpoints) and gives 128 + signal: 143 for SIGTERM, the code the Kubernetes Job's
    pod failure policy matches. Neither prints a traceback.
    """
    try:
        start()
    except ChildFailedError as e:
        rank, failure = e.get_first_failure()
        print(
            f"{prog}: error: worker rank {rank} failed with exit code {failure.exitcode}",
            file=sys.stderr,
        )
        return failure.exitcode if failure.exitcode > 0 else 1
    except SignalException as e:
        print(f"{prog}: stopped by {e.sigval.name}; workers were asked to save", file=sys.stderr)
        return 128 + int(e.sigval)
    return 0


def main(argv: list[str] | None = None) -> int:
    return launch(argv, os.environ)
