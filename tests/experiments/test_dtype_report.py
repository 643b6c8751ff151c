"""experiments.dtype_report: each output type's cost is its paired difference from the same
model's float vectors, over the seeds that finished (unfinished ones are skipped, not zeroed)."""

from __future__ import annotations

import json

import pytest

from experiments import dtype_report


def write_grid(tmp_path):
    grid = tmp_path / "g.toml"
    grid.write_text(
        f'out = "{tmp_path / "runs"}"\nseeds = [0, 1, 2]\n'
        '[variants.a]\nnote = "model a"\n[variants.b]\ntrain = "--nesting-list 8"\n'
    )
    return grid


def write_eval(tmp_path, variant, seed, float_map, binary_map):
    folder = tmp_path / "runs" / variant / f"seed{seed}"
    folder.mkdir(parents=True)
    rows = [
        {"dim": 8, "dtype": "float", "bytes": 32, "knn_top1": 0.8, "map_at_k": float_map},
        {"dim": 8, "dtype": "binary", "bytes": 1, "knn_top1": 0.6, "map_at_k": binary_map},
    ]
    (folder / "eval.json").write_text(json.dumps({"dtypes": rows}))


def test_paired_cost_over_finished_seeds(tmp_path):
    grid = write_grid(tmp_path)
    write_eval(tmp_path, "a", 0, 0.60, 0.40)
    write_eval(tmp_path, "a", 1, 0.70, 0.48)  # seed 2 of a never finished
    write_eval(tmp_path, "b", 0, 0.50, 0.45)
    summary = dtype_report.summarize(grid)
    a, b = summary["variants"]
    assert (a["name"], a["seeds"], b["seeds"]) == ("a", [0, 1], [0])
    binary = next(c for c in a["cells"] if c["dtype"] == "binary")
    assert binary["map_at_k"] == pytest.approx(0.44)
    assert binary["map_at_k_vs_float"]["mean"] == pytest.approx(-0.21)
    # differences -0.20 and -0.22: t(0.95, 1) = 6.314 x sd 0.01414 / sqrt 2
    assert binary["map_at_k_vs_float"]["half"] == pytest.approx(0.0631, abs=1e-3)
    one_seed = next(c for c in b["cells"] if c["dtype"] == "binary")["map_at_k_vs_float"]
    assert one_seed == {"mean": pytest.approx(-0.05), "half": None}
    table = dtype_report.markdown(summary)
    assert "| 8 | 0.650 | - | - | - | 0.440 (-21.0 ±6.3) | - |" in table
    assert "| 8 | 0.500 | - | - | - | 0.450 (-5.0) | - |" in table


def test_refuses_a_grid_with_no_scored_runs(tmp_path):
    grid = write_grid(tmp_path)
    with pytest.raises(SystemExit, match=r"no run of .* has output-type rows"):
        dtype_report.main([str(grid), "--out", str(tmp_path / "out")])
