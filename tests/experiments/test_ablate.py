import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from core.cli import UsageError
from experiments import ablate
from experiments.ablate_report import markdown, plot, summarize
from experiments.grid import load_grid

GRID = """
out = "{out}"
seeds = [0, 1]
dims = [8, 16, 32]
common = "--epochs 1"
reference = "base"
[variants.base]
train = "--nesting-list 32"
[variants.mrl]
train = ["--nesting-list", "8,16,32", "--lr", "0.1"]
default = true
[variants.ff8]
train = "--nesting-list 8"
[variants.rand]
of = "mrl"
eval = "--random-init"
"""


def write_grid(tmp_path, text=GRID):
    path = tmp_path / "grid.toml"
    path.write_text(text.format(out=tmp_path / "out"))
    return path


def fake_eval(run, values: dict[int, float]) -> None:
    run.folder.mkdir(parents=True, exist_ok=True)
    rows = [{"dim": d, "knn_top1": v, "map_at_k": v / 2} for d, v in values.items()]
    run.result.write_text(json.dumps({"metrics": rows}))
    (run.folder / "timing.json").write_text(
        json.dumps({"train_s": 10.0, "eval_s": 1.0, "start": 100.0, "end": 111.0})
    )


def test_plan_trains_first_with_seeded_folders(tmp_path):
    grid = load_grid(write_grid(tmp_path))
    runs = ablate.plan(grid, [0, 1], None)
    assert [(r.variant, r.seed) for r in runs][-2:] == [("rand", 0), ("rand", 1)]
    mrl1 = next(r for r in runs if (r.variant, r.seed) == ("mrl", 1))
    seed_out = ["--seed", "1", "--output-dir", str(tmp_path / "out/mrl/seed1")]
    assert mrl1.train == ["--epochs", "1", "--nesting-list", "8,16,32", "--lr", "0.1", *seed_out]
    rand1 = runs[-1]
    assert rand1.train is None and rand1.checkpoint == mrl1.checkpoint
    assert rand1.eval == ["--random-init"] and rand1.folder != mrl1.folder
    assert [r.variant for r in ablate.plan(grid, [3], ["ff8"])] == ["ff8"]


@pytest.mark.parametrize(
    "text, message",
    [
        ("out = 'x'\n[variants]\n", "no \\[variants.NAME\\]"),
        ("out = 'x'\n[variants.a]\ntrain = '--lr 1'\nlr = 1\n", "variants.a.lr: Extra inputs"),
        ("out = 'x'\n[variants.a]\nof = 'b'\n", "of = 'b' is not a trained variant"),
        ("out = 'x'\nreference = 'z'\n[variants.a]\n", "reference = 'z'"),
        ("out = 'x'\n[variants.a\n", "not valid TOML"),
        ("out = 'x'\n[variants.\"../a\"]\n", "use letters, digits"),
    ],
)
def test_bad_grids_are_one_line_errors(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(UsageError, match=message):
        load_grid(path)
    with pytest.raises(UsageError, match="no such file"):
        load_grid(tmp_path / "missing.toml")


@pytest.mark.parametrize(
    "path", sorted((Path(__file__).parents[2] / "grids").glob("*.toml")), ids=lambda p: p.name
)
def test_committed_grids_load_and_every_run_parses(path):
    """Every grid in grids/ is valid and each of its runs' trainer flags parse."""
    grid = load_grid(path)
    runs = ablate.plan(grid, grid.seeds, None)
    assert len(runs) == len(grid.variants) * len(grid.seeds)
    assert all(r.width in (8, 32, 256) for r in runs)


def summary_of(tmp_path, evals: dict[tuple[str, int], dict[int, float]]) -> dict:
    """The summary of the test grid (seeds 0 and 1) after the given (variant, seed) evals."""
    grid = load_grid(write_grid(tmp_path))
    runs = ablate.plan(grid, [0, 1], None)
    for r in runs:
        if (r.variant, r.seed) in evals:
            fake_eval(r, evals[r.variant, r.seed])
    return summarize(grid, runs, [0, 1], wall_s=5.0, jobs=2, threads=1)


def test_table_is_mean_and_std_over_seeds_per_dim(tmp_path):
    summary = summary_of(
        tmp_path,
        {
            ("base", 0): {8: 0.5, 16: 0.6, 32: 0.7},
            ("base", 1): {8: 0.7, 16: 0.6, 32: 0.9},
            ("mrl", 0): {8: 0.7, 16: 0.7, 32: 0.8},
            ("ff8", 0): {8: 0.65},
        },
    )
    base, mrl, ff8, rand = summary["variants"]
    assert base["seeds_done"] == [0, 1] and rand["seeds_done"] == [] and rand["rows"] == []
    row8 = base["rows"][0]
    assert row8["knn_top1"]["mean"] == pytest.approx(0.6)
    assert row8["knn_top1"]["std"] == pytest.approx(0.1414, abs=1e-4)  # sample std, n - 1
    assert row8["map_at_k"]["values"] == [0.25, 0.35]
    assert mrl["rows"][0]["knn_top1"]["std"] is None  # one seed: no spread claimed
    assert [r["dim"] for r in ff8["rows"]] == [8]
    diff = summary["differences"]["mrl"]
    assert diff[0]["knn_top1"] == pytest.approx(10.0) and diff[2]["knn_top1"] == pytest.approx(0)
    assert summary["compute_s"] == 44.0 and summary["span_s"] == 11.0
    table = markdown(summary)
    assert "| base | 2 | 0.600 ± 0.141 | 0.600 ± 0.000 | 0.800 ± 0.141 |" in table
    assert "| **mrl (default)** | 1 | 0.700 | 0.700 | 0.800 |" in table
    assert "| ff8 | 1 | 0.650 | - | - |" in table
    assert "| **mrl (default)** | +10.0 / +5.0 | +10.0 / +5.0 | +0.0 / +0.0 |" in table


def test_table_gives_each_variants_seed_std_relative_to_the_reference(tmp_path):
    summary = summary_of(
        tmp_path,
        {
            ("base", 0): {8: 0.5, 16: 0.6, 32: 0.7},
            ("base", 1): {8: 0.7, 16: 0.6, 32: 0.8},
            ("mrl", 0): {8: 0.7, 16: 0.7, 32: 0.7},
            ("mrl", 1): {8: 0.8, 16: 0.9, 32: 0.9},
            ("ff8", 0): {8: 0.65},
        },
    )
    ratio = [r["std_ratio"]["knn_top1"] for r in summary["differences"]["mrl"]]
    assert ratio[0] == pytest.approx(0.5) and ratio[1] is None and ratio[2] == pytest.approx(2.0)
    assert summary["differences"]["ff8"][0]["std_ratio"]["knn_top1"] is None  # one seed
    table = markdown(summary)
    assert "Seed std as a multiple of base's" in table
    assert "| **mrl (default)** | 0.50x / 0.50x | - / - | 2.00x / 2.00x |" in table
    assert "| ff8 | - / - | - | - |" in table


def test_differences_carry_90_percent_intervals_over_the_seeds_both_have(tmp_path):
    grid = load_grid(write_grid(tmp_path))
    runs = ablate.plan(grid, [0, 1, 2], None)
    base = {0: 0.50, 1: 0.60, 2: 0.80}
    mrl = {0: 0.52, 1: 0.64, 2: 0.86}  # +2, +4, +6 points: mean +4, sd 2
    for r in runs:
        if r.variant == "base":
            fake_eval(r, {8: base[r.seed]})
        elif r.variant == "mrl" and r.seed in (2, 0):
            fake_eval(r, {8: mrl[r.seed]})
        elif r.variant == "ff8":
            fake_eval(r, {8: base[r.seed] + 0.01 * (r.seed == 1)})
    summary = summarize(grid, runs, [0, 1, 2], wall_s=5.0, jobs=2, threads=1)
    mrl_row, ff8_row = summary["differences"]["mrl"][0], summary["differences"]["ff8"][0]
    # mrl has seeds 0 and 2: paired with base's seeds 0 and 2 (+2, +6), not with its first two
    assert mrl_row["knn_top1"] == pytest.approx(100 * (0.69 - 0.6333), abs=1e-2)
    paired = mrl_row["paired"]["knn_top1"]
    assert paired["seeds"] == 2 and paired["std_ratio_interval"] is None
    assert paired["difference_half_width"] == pytest.approx(6.314 * 2.0, rel=1e-3)
    ff8 = ff8_row["paired"]["knn_top1"]
    lo, hi = ff8["std_ratio_interval"]
    assert ff8["seeds"] == 3 and lo < ff8_row["std_ratio"]["knn_top1"] < hi
    table = markdown(summary)
    assert "± the 90% interval of the seed-by-seed difference" in table
    assert f"| ff8 | {ff8_row['knn_top1']:+.1f} ±{ff8['difference_half_width']:.1f} / " in table
    assert f"({lo:.2f}-{hi:.2f})" in table
    plot(summary, tmp_path / "with.png")  # a second row of panels: the differences
    summary.pop("differences")
    plot(summary, tmp_path / "without.png")
    assert Image.open(tmp_path / "with.png").size == (1440, 1080)
    assert Image.open(tmp_path / "without.png").size == (1440, 540)


def test_variants_without_the_reference_get_a_table_without_differences(tmp_path):
    grid = load_grid(write_grid(tmp_path))
    runs = ablate.plan(grid, [0], ["mrl"])
    fake_eval(runs[0], {8: 0.7, 16: 0.7, 32: 0.8})
    summary = summarize(grid, runs, [0], wall_s=5.0, jobs=1, threads=1)
    assert [v["name"] for v in summary["variants"]] == ["mrl"] and "differences" not in summary
    assert "| **mrl (default)** | 1 | 0.700 | 0.700 | 0.800 |" in markdown(summary)


def test_finished_runs_are_skipped(tmp_path, monkeypatch):
    grid = load_grid(write_grid(tmp_path))
    runs = ablate.plan(grid, [0], None)
    for r in runs[:-1]:
        fake_eval(r, {8: 0.5})
    started = []
    monkeypatch.setattr(ablate, "execute", lambda run, dims, threads: started.append(run))
    assert ablate.run_grid(grid, runs, jobs=2, threads=1) == []
    assert started == [runs[-1]]


def test_a_run_folder_refuses_other_flags(tmp_path):
    grid = load_grid(write_grid(tmp_path))
    run = ablate.plan(grid, [0], ["base"])[0]
    ablate._check_command(run, {"train": run.train})
    ablate._check_command(run, {"train": run.train})
    with pytest.raises(UsageError, match="was run with other flags"):
        ablate._check_command(run, {"train": [*run.train, "--lr", "9"]})


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_ablate_cli_trains_scores_and_resumes(tmp_path, tiny_dataset):
    """The real thing: trainer and evaluator processes, 2 seeds, a derived random-init row."""
    lean = GRID.replace('reference = "base"\n[variants.base]\ntrain = "--nesting-list 32"\n', "")
    text = lean.replace('common = "--epochs 1"', f'common = "--epochs 1 --dataset {tiny_dataset} '
                        f'--cache-dir {tmp_path / "cache"} --batch-size 32 --queue-size 64 '
                        '--max-steps 2 --workers 0"')  # fmt: skip
    grid = write_grid(tmp_path, text)
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    cmd = [sys.executable, "-m", "experiments.ablate", str(grid), "--jobs", "2"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, done.stderr[-2000:]
    out = tmp_path / "out"
    summary = json.loads((out / "results.json").read_text())
    names = {v["name"]: v for v in summary["variants"]}
    assert set(names) == {"mrl", "ff8", "rand"}
    assert all(v["seeds_done"] == [0, 1] for v in names.values())
    assert [r["dim"] for r in names["ff8"]["rows"]] == [8]
    assert [r["dim"] for r in names["rand"]["rows"]] == [8, 16, 32]
    assert names["mrl"]["rows"][0]["knn_top1"]["std"] is not None
    assert (out / "ablate.png").stat().st_size > 0 and "± " in (out / "table.md").read_text()
    log = (out / "mrl" / "seed0" / "train.log").read_text()
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0
    assert (out / "mrl" / "seed0" / "train.log").read_text() == log  # nothing re-ran
