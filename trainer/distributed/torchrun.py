"""`python -m trainer.distributed.torchrun ARGS`: `torchrun ARGS` with a container's exit codes.

Plain torchrun as a container's PID 1 turns a SIGTERM (pod eviction, `docker stop`) into
exit code 1 and a SignalException traceback, and any worker failure into exit code 1, so a
Job cannot tell a preemption from a crash or a usage error. Here the same agent, with
torchrun's own flags, exits 128 + signal (143 for SIGTERM) after the workers were asked to
save, and with a failed worker's own exit code (2 for a bad flag), one line each.
"""

from __future__ import annotations

import sys

from torch.distributed.run import parse_args, run

from trainer.distributed.launch import run_agent

PROG = "python -m trainer.distributed.torchrun"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    return run_agent(lambda: run(args), PROG)


if __name__ == "__main__":
    sys.exit(main())
