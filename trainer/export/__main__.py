from core.cli import run_cli
from trainer.export.cli import PROG, main

run_cli(main, PROG)
