"""`python -m trainer.evaluate`."""

from core.cli import run_cli
from trainer.evaluate.cli import PROG, main

run_cli(main, PROG)
