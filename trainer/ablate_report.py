"""The ablation table: mean +- std over seeds per variant and dim, as JSON, markdown and a plot."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from trainer.report import METRICS

METRIC_TITLES = {"knn_top1": "kNN top-1", "map_at_k": "mAP@10"}


def _stats(values: list[float]) -> dict:
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else None,
        "values": values,
    }


def summarize(grid, runs, seeds: list[int], *, wall_s: float, jobs: int, threads: int) -> dict:
    """Everything the table shows, from the finished runs' eval.json and timing.json."""
    variants, timings = [], []
    for name, v in grid.variants.items():
        mine = [r for r in runs if r.variant == name and r.done]
        if not any(r.variant == name for r in runs):
            continue
        by_dim: dict[int, dict[str, list[float]]] = {}
        train_s = []
        for r in mine:
            for row in json.loads(r.result.read_text())["metrics"]:
                cell = by_dim.setdefault(row["dim"], {key: [] for key, _ in METRICS})
                for key, _ in METRICS:
                    cell[key].append(row[key])
            timing_file = r.folder / "timing.json"
            if timing_file.exists():
                t = json.loads(timing_file.read_text())
                timings.append(t)
                if "train_s" in t:
                    train_s.append(t["train_s"])
        variants.append(
            {
                "name": name,
                "train": v.train,
                "eval": v.eval,
                "of": v.of,
                "default": v.default,
                "note": v.note,
                "seeds_done": sorted(r.seed for r in mine),
                "train_s_mean": statistics.fmean(train_s) if train_s else None,
                "rows": [
                    {"dim": d, **{key: _stats(cell[key]) for key, _ in METRICS}}
                    for d, cell in sorted(by_dim.items())
                ],
            }
        )
    summary = {
        "description": grid.description,
        "out": str(grid.out),
        "common": grid.common,
        "seeds": seeds,
        "jobs": jobs,
        "threads_per_job": threads,
        "wall_s_this_invocation": wall_s,
        "compute_s": sum(t.get("train_s", 0) + t.get("eval_s", 0) for t in timings),
        "span_s": (
            max(t["end"] for t in timings) - min(t["start"] for t in timings) if timings else 0.0
        ),
        "reference": grid.reference,
        "variants": variants,
    }
    # `--variants` may leave the reference out: then there is nothing to compare against.
    if any(v["name"] == grid.reference for v in variants):
        summary["differences"] = differences(variants, grid.reference)
    return summary


def _ratio(std: float | None, ref_std: float | None) -> float | None:
    return std / ref_std if std is not None and ref_std else None


def differences(variants: list[dict], reference: str) -> dict:
    """Per variant and dim: the mean difference to the reference variant in points (x100), and
    its seed std as a multiple of the reference's (`std_ratio`; None below two seeds)."""
    ref = next(v for v in variants if v["name"] == reference)
    ref_rows = {r["dim"]: r for r in ref["rows"]}
    out = {}
    for v in variants:
        if v["name"] == reference:
            continue
        out[v["name"]] = [
            {
                "dim": r["dim"],
                **{
                    key: 100 * (r[key]["mean"] - ref_rows[r["dim"]][key]["mean"])
                    for key, _ in METRICS
                },
                "std_ratio": {
                    key: _ratio(r[key]["std"], ref_rows[r["dim"]][key]["std"]) for key, _ in METRICS
                },
            }
            for r in v["rows"]
            if r["dim"] in ref_rows
        ]
    return out


def _cell(stats: dict | None) -> str:
    if stats is None:
        return "-"
    if stats["std"] is None:
        return f"{stats['mean']:.3f}"
    return f"{stats['mean']:.3f} ± {stats['std']:.3f}"


def _times(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio:.2f}x"


def _name(v: dict) -> str:
    return f"**{v['name']} (default)**" if v["default"] else v["name"]


def _against_reference(summary: dict, dims: list[int], title: str, cell) -> str:
    """One row per non-reference variant, one `cell(row of differences)` per dim."""
    lines = [title, "", "| variant | " + " | ".join(map(str, dims)) + " |"]
    lines.append("|---|" + "---:|" * len(dims))
    for v in summary["variants"]:
        if v["name"] == summary["reference"]:
            continue
        rows = {r["dim"]: r for r in summary["differences"][v["name"]]}
        cells = [cell(rows[d]) if d in rows else "-" for d in dims]
        lines.append(f"| {_name(v)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown(summary: dict) -> str:
    variants = summary["variants"]
    dims = sorted({r["dim"] for v in variants for r in v["rows"]})
    head = "| variant | seeds | " + " | ".join(map(str, dims)) + " |"
    rule = "|---|---:|" + "---:|" * len(dims)
    parts = []
    for key, _ in METRICS:
        lines = [f"{METRIC_TITLES[key]}, mean ± std over seeds, by dim:", "", head, rule]
        for v in variants:
            rows = {r["dim"]: r[key] for r in v["rows"]}
            cells = [_cell(rows.get(d)) for d in dims]
            lines.append(f"| {_name(v)} | {len(v['seeds_done'])} | " + " | ".join(cells) + " |")
        parts.append("\n".join(lines))
    if "differences" in summary:
        ref = summary["reference"]
        parts.append(
            _against_reference(
                summary,
                dims,
                f"Difference to {ref} (mean, points; kNN top-1 / mAP@10), by dim:",
                lambda row: f"{row['knn_top1']:+.1f} / {row['map_at_k']:+.1f}",
            )
        )
        parts.append(
            _against_reference(
                summary,
                dims,
                f"Seed std as a multiple of {ref}'s (kNN top-1 / mAP@10), by dim:",
                lambda row: " / ".join(_times(row["std_ratio"][key]) for key, _ in METRICS),
            )
        )
    flags = " ".join(summary["common"])
    legend = "\n".join(
        f"- {v['name']}: `{' '.join(v['train']) or '(common flags only)'}`"
        + (f" evaluated from {v['of']} with `{' '.join(v['eval'])}`" if v["of"] else "")
        + (f" ({v['note']})" if v["note"] else "")
        for v in variants
    )
    return "\n\n".join(parts) + f"\n\nCommon flags: `{flags}`. Variants:\n\n{legend}\n"


def plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), constrained_layout=True)
    dims = sorted({r["dim"] for v in summary["variants"] for r in v["rows"]})
    shown = [v for v in summary["variants"] if v["rows"]]
    for ax, (key, _) in zip(axes, METRICS, strict=True):
        for i, v in enumerate(shown):
            rows = v["rows"]
            dodge = 2 ** (0.04 * (i - (len(shown) - 1) / 2))  # error bars side by side, not on top
            ax.errorbar(
                [r["dim"] * dodge for r in rows],
                [r[key]["mean"] for r in rows],
                yerr=[r[key]["std"] or 0.0 for r in rows],
                marker="o",
                capsize=3,
                linewidth=2.5 if v["default"] else 1.2,
                label=v["name"] + (" (default)" if v["default"] else ""),
            )
        ax.set_xscale("log", base=2)
        ax.set_xticks(dims, [str(d) for d in dims])
        ax.set_xlabel("embedding dim")
        ax.set_title(f"{METRIC_TITLES[key]} (mean ± std over seeds)")
        ax.grid(True, alpha=0.3)
    axes[1].legend(fontsize=8, loc="lower right")
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(grid, summary: dict) -> str:
    """results.json, table.md and ablate.png in the grid's out folder; returns the markdown."""
    out = Path(grid.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(summary, indent=1) + "\n")
    table = markdown(summary)
    (out / "table.md").write_text(table)
    plot(summary, out / "ablate.png")
    return table
