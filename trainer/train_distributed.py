"""`python -m trainer.train_distributed --num-gpus N ...`: the launcher's user-facing name
(the code is trainer.distributed.launch)."""

from core.cli import run_cli
from trainer.distributed.launch import PROG, main

if __name__ == "__main__":
    run_cli(main, PROG)
