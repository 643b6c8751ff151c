"""`python -m experiments.ablate GRID.toml`: train and score every variant x seed, then one table.

Runs are separate processes (trainer.train, then trainer.evaluate), as many at once as
--jobs, each with cores/jobs torch threads so the machine is busy but not oversubscribed.
A run whose eval.json exists is skipped; an interrupted one resumes from its checkpoint, so
re-running the same command finishes a sweep. Each run folder records the exact command;
re-running it with other flags is refused rather than mixed into the same numbers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from core.cli import UsageError, make_parser, run_cli
from core.nesting import parse_nesting_list
from experiments.ablate_report import summarize, write_report
from experiments.grid import Grid, load_grid
from trainer.config import parse_train_args

PROG = "python -m experiments.ablate"


@dataclass(frozen=True)
class Run:
    variant: str
    seed: int
    folder: Path
    train: list[str] | None  # trainer argv; None for an evaluate-only variant
    checkpoint: Path
    eval: list[str]
    width: int  # the embedding width the training flags give

    @property
    def result(self) -> Path:
        return self.folder / "eval.json"

    @property
    def done(self) -> bool:
        return self.result.exists()


def plan(grid: Grid, seeds: list[int], only: list[str] | None) -> list[Run]:
    """Every (variant, seed), trained variants first (evaluate-only ones read their checkpoints)."""
    runs = []
    for name, v in grid.variants.items():
        if only and name not in only:
            continue
        for seed in seeds:
            folder = grid.out / name / f"seed{seed}"
            trained = (grid.checkpoints or grid.out) / (v.of or name) / f"seed{seed}"
            argv = [*grid.common, *grid.variants[v.of or name].train, "--seed", str(seed),
                    "--output-dir", str(trained)]  # fmt: skip
            width = parse_train_args(argv).embed_dim  # also: bad flags fail here, not mid-sweep
            train = argv if v.of is None and grid.checkpoints is None else None
            flags = [*grid.eval_common, *v.eval]
            runs.append(Run(name, seed, folder, train, trained / "checkpoint.pt", flags, width))
    return sorted(runs, key=lambda r: r.train is None)


def _env(threads: int) -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    env.setdefault("PYTHONPATH", os.getcwd())
    return env


def _check_command(run: Run, command: dict) -> None:
    saved = run.folder / "command.json"
    if saved.exists():
        before = json.loads(saved.read_text())
        if before != command:
            raise UsageError(
                f"{run.folder} was run with other flags ({before}); this grid asks for "
                f"{command}. Use another `out` (or --out) or delete that folder"
            )
    else:
        run.folder.mkdir(parents=True, exist_ok=True)
        saved.write_text(json.dumps(command, indent=1) + "\n")


def execute(run: Run, dims: list[int], threads: int) -> dict:
    """Train (or resume) and evaluate one run; returns its timings. Logs go to the run folder."""
    py = sys.executable
    _check_command(run, {"train": run.train, "eval": run.eval, "checkpoint": str(run.checkpoint)})
    env = _env(threads)
    timings = {"threads": threads, "start": time.time()}
    if run.train is not None:
        t0 = time.perf_counter()
        with open(run.folder / "train.log", "a") as log:
            code = subprocess.call(
                [py, "-m", "trainer.train", *run.train], stdout=log, stderr=log, env=env
            )
        if code:
            raise RuntimeError(f"training failed (exit {code}), see {run.folder / 'train.log'}")
        timings["train_s"] = time.perf_counter() - t0
    if not run.checkpoint.exists():
        raise RuntimeError(f"no checkpoint {run.checkpoint} (did its variant train?)")
    scored = [d for d in dims if d < run.width] + [run.width]
    t0 = time.perf_counter()
    command = [py, "-m", "trainer.evaluate", "--checkpoint", str(run.checkpoint),
               "--output", str(run.folder / "eval.part.json"), "--no-plot", "--threads",
               str(threads), "--nesting-list", ",".join(map(str, scored)), *run.eval]  # fmt: skip
    with open(run.folder / "eval.log", "a") as log:
        code = subprocess.call(command, stdout=log, stderr=log, env=env)
    if code:
        raise RuntimeError(f"evaluation failed (exit {code}), see {run.folder / 'eval.log'}")
    timings["eval_s"] = time.perf_counter() - t0
    timings["end"] = time.time()
    (run.folder / "timing.json").write_text(json.dumps(timings) + "\n")
    (run.folder / "eval.part.json").replace(run.result)  # eval.json exists only when complete
    return timings


def run_grid(grid: Grid, runs: list[Run], jobs: int, threads: int) -> list[str]:
    """Run what is not done yet; returns one line per failed run."""
    todo = [r for r in runs if not r.done]
    failures: list[str] = []
    if not todo:
        return failures
    bar = tqdm(
        total=len(runs), initial=len(runs) - len(todo), desc="runs", unit="run", file=sys.stderr
    )
    trained, derived = (
        [r for r in todo if r.train is not None],
        [r for r in todo if r.train is None],
    )
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        for phase in (trained, derived):
            futures = {pool.submit(execute, r, grid.dims, threads): r for r in phase}
            for fut in as_completed(futures):
                r = futures[fut]
                try:
                    fut.result()
                except (RuntimeError, UsageError) as e:
                    failures.append(f"{r.variant} seed {r.seed}: {e}")
                    tqdm.write(f"FAILED {r.variant} seed {r.seed}: {e}", file=sys.stderr)
                bar.update()
                bar.set_postfix_str(f"last: {r.variant} seed {r.seed}")
    bar.close()
    return failures


def build_parser():
    parser = make_parser(PROG, "Train and score a grid of trainer variants x seeds.")
    parser.add_argument("grid", type=Path, help="a grid TOML file (see grids/)")
    parser.add_argument("--seeds", help="comma-separated seeds (default: the grid's)")
    parser.add_argument("--variants", help="comma-separated variant names (default: all)")
    parser.add_argument("--out", type=Path, help="run folder root (default: the grid's `out`)")
    parser.add_argument("--train-args", default="", help="extra trainer flags for every run")
    parser.add_argument(
        "--jobs", type=int, help="runs at once (default: the cores, at most the runs)"
    )
    parser.add_argument("--report-only", action="store_true", help="only rebuild the table")
    return parser


def main(argv: list[str] | None = None) -> int:
    import shlex

    args = build_parser().parse_args(argv)
    grid = load_grid(args.grid)
    if args.out:
        grid.out = args.out
    grid.common = [*grid.common, *shlex.split(args.train_args)]
    seeds = grid.seeds
    if args.seeds:
        try:
            seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
        except ValueError:
            raise UsageError(
                f"--seeds must be comma-separated integers, got {args.seeds!r}"
            ) from None
    only = args.variants.split(",") if args.variants else None
    unknown = set(only or ()) - set(grid.variants)
    if unknown:
        raise UsageError(
            f"--variants: no variant {sorted(unknown)} in {args.grid} "
            f"(has: {', '.join(grid.variants)})"
        )
    grid.dims = parse_nesting_list(grid.dims)
    runs = plan(grid, seeds, only)
    cores = len(os.sched_getaffinity(0))
    jobs = args.jobs or min(cores, len(runs))
    if jobs < 1:
        raise UsageError(f"--jobs must be >= 1, got {jobs}")
    threads = max(1, cores // jobs)
    t0 = time.perf_counter()
    failures = [] if args.report_only else run_grid(grid, runs, jobs, threads)
    wall = time.perf_counter() - t0
    summary = summarize(grid, runs, seeds, wall_s=wall, jobs=jobs, threads=threads)
    table = write_report(grid, summary)
    print(table)
    print(
        f"wrote {grid.out / 'results.json'}, {grid.out / 'table.md'}, {grid.out / 'ablate.png'}",
        file=sys.stderr,
    )
    for line in failures:
        print(f"{PROG}: failed: {line}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    run_cli(main, PROG)
