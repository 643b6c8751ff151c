"""What each output type costs, model by model: a grid's eval.json `dtypes` rows (every
(dim, output type) pair `/v1/embed` can return, scored by `make eval`) as one table.

    python -m experiments.dtype_report grids/compare.toml --out docs/results/compare-dtypes

Each cell is the mean over the grid's finished seeds of mAP@10 and kNN top-1, and its paired
difference from the same model's float vectors at the same dim (the cost of the type alone;
with one seed the difference is shown without an interval). Writes results.json, table.md and
a plot of mAP@10 against bytes per vector, one panel per model.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from experiments.grid import load_grid
from experiments.seed_stats import paired_difference

SHOWN = ("float16", "int8", "uint8", "binary", "binary+rerank")
METRICS = ("map_at_k", "knn_top1")


def _difference(x: list[float], y: list[float]) -> dict:
    if len(x) < 2:
        return {"mean": x[0] - y[0], "half": None}
    mean, half = paired_difference(x, y)
    return {"mean": mean, "half": half}


def summarize(grid_path: Path, out_root: Path | None = None) -> dict:
    """Per variant: the seeds read and, per (dim, dtype), means and differences from float."""
    grid = load_grid(grid_path)
    root = out_root or grid.out
    variants = []
    for name, v in grid.variants.items():
        seeds, rows = [], {}
        for seed in grid.seeds:
            path = root / name / f"seed{seed}" / "eval.json"
            if not path.exists():
                continue
            result = json.loads(path.read_text())
            if not result.get("dtypes"):
                continue
            seeds.append(seed)
            for r in result["dtypes"]:
                rows.setdefault((r["dim"], r["dtype"]), []).append(r)
        if not seeds:
            continue
        cells = []
        for (dim, dtype), runs in sorted(rows.items()):
            float_runs = rows[(dim, "float")]
            cell = {"dim": dim, "dtype": dtype, "bytes": runs[0]["bytes"]}
            for m in METRICS:
                values = [r[m] for r in runs]
                cell[m] = statistics.fmean(values)
                cell[f"{m}_vs_float"] = _difference(values, [r[m] for r in float_runs])
            cells.append(cell)
        variants.append({"name": name, "note": v.note, "seeds": seeds, "cells": cells})
    return {"grid": str(grid_path), "description": grid.description, "variants": variants}


def _cell(c: dict) -> str:
    d = c["map_at_k_vs_float"]
    diff = f"{100 * d['mean']:+.1f}" + ("" if d["half"] is None else f" ±{100 * d['half']:.1f}")
    return f"{c['map_at_k']:.3f} ({diff})"


def markdown(summary: dict) -> str:
    lines = [
        "mAP@10 per (dim, output type), mean over seeds, and in brackets its paired difference "
        "from the same model's float vectors at that dim, in points (± the 90% interval over "
        "seeds). Bytes per vector: float 4 x dim, float16 2 x dim, int8/uint8 dim, binary "
        "dim / 8 (binary+rerank: a binary shortlist of 10 x k reranked by the full-dim float).",
        "",
    ]
    for v in summary["variants"]:
        lines += [
            f"### {v['name']}: {v['note']} (seeds {', '.join(map(str, v['seeds']))})",
            "",
            "| dim | float | " + " | ".join(SHOWN) + " |",
            "|---:|---:|" + "---:|" * len(SHOWN),
        ]
        cells = {(c["dim"], c["dtype"]): c for c in v["cells"]}
        for dim in sorted({c["dim"] for c in v["cells"]}):
            row = [f"{cells[(dim, 'float')]['map_at_k']:.3f}"]
            row += [_cell(cells[(dim, t)]) if (dim, t) in cells else "-" for t in SHOWN]
            lines.append(f"| {dim} | " + " | ".join(row) + " |")
        lines.append("")
    return "\n".join(lines)


def plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variants = summary["variants"]
    fig, axes = plt.subplots(1, len(variants), figsize=(3.2 * len(variants), 3.2), sharey=True)
    panels = list(getattr(axes, "flat", [axes]))
    for ax, v in zip(panels, variants, strict=True):
        for dtype in ("float", "int8", "binary", "binary+rerank"):
            cells = sorted((c for c in v["cells"] if c["dtype"] == dtype), key=lambda c: c["dim"])
            if cells:
                ax.plot([c["bytes"] for c in cells], [c["map_at_k"] for c in cells], "o-",
                        ms=3, label=dtype)  # fmt: skip
        ax.set_xscale("log", base=2)
        ax.set_title(v["name"], fontsize=9)
        ax.set_xlabel("bytes per vector")
        ax.grid(alpha=0.3)
    panels[0].set_ylabel("mAP@10")
    panels[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("grid", type=Path, help="a grid TOML whose runs were scored by make eval")
    p.add_argument("--runs", type=Path, help="run folder root (default: the grid's `out`)")
    p.add_argument("--out", type=Path, required=True, help="folder for results.json, table.md")
    a = p.parse_args(argv)
    summary = summarize(a.grid, a.runs)
    if not summary["variants"]:
        raise SystemExit(f"no run of {a.grid} has output-type rows in its eval.json yet")
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "results.json").write_text(json.dumps(summary, indent=1) + "\n")
    (a.out / "table.md").write_text(markdown(summary) + "\n")
    plot(summary, a.out / "bytes.png")
    print(markdown(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
