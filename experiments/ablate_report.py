"""The ablation table: mean +- std over seeds per variant and dim, as JSON, markdown and a plot;
differences to the reference variant with 90% intervals over the seeds both have."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from experiments.seed_stats import LEVEL, paired_difference, std_ratio_interval
from trainer.evaluate.report import METRICS

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
        mine = sorted((r for r in runs if r.variant == name and r.done), key=lambda r: r.seed)
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


def _paired(row: dict, ref_row: dict, seeds: list[int], ref_seeds: list[int], key: str) -> dict:
    """Intervals over the seeds both variants finished (values are in seed order)."""
    common = sorted(set(seeds) & set(ref_seeds))
    x = [row[key]["values"][seeds.index(s)] for s in common]
    y = [ref_row[key]["values"][ref_seeds.index(s)] for s in common]
    half = 100 * paired_difference(x, y)[1] if len(common) >= 2 else None
    interval = std_ratio_interval(x, y) if len(common) >= 3 else None
    return {"seeds": len(common), "difference_half_width": half, "std_ratio_interval": interval}


def differences(variants: list[dict], reference: str) -> dict:
    """Per variant and dim: the mean difference to the reference variant in points (x100), its
    seed std as a multiple of the reference's (`std_ratio`; None below two seeds), and, over the
    seeds both finished, the 90% intervals of both (`paired`, see experiments.seed_stats)."""
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
                "paired": {
                    key: _paired(r, ref_rows[r["dim"]], v["seeds_done"], ref["seeds_done"], key)
                    for key, _ in METRICS
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


def _times(ratio: float | None, paired: dict) -> str:
    if ratio is None:
        return "-"
    interval = paired["std_ratio_interval"]
    return f"{ratio:.2f}x" + ("" if interval is None else " ({:.2f}-{:.2f})".format(*interval))


def _points(row: dict, key: str) -> str:
    half = row["paired"][key]["difference_half_width"]
    return f"{row[key]:+.1f}" + ("" if half is None else f" ±{half:.1f}")


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
                f"Difference to {ref} (mean, points; kNN top-1 / mAP@10; ± the {LEVEL:.0%} "
                "interval of the seed-by-seed difference), by dim:",
                lambda row: " / ".join(_points(row, key) for key, _ in METRICS),
            )
        )
        parts.append(
            _against_reference(
                summary,
                dims,
                f"Seed std as a multiple of {ref}'s (kNN top-1 / mAP@10; in brackets its "
                f"{LEVEL:.0%} interval over the seeds both have), by dim:",
                lambda row: " / ".join(
                    _times(row["std_ratio"][key], row["paired"][key]) for key, _ in METRICS
                ),
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
    """Top: both metrics against dim, ± std error bars. Bottom, when there is a reference: each
    variant minus the reference in points, with the LEVEL interval of the paired difference."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    diffs = summary.get("differences")
    fig, axes = plt.subplots(
        2 if diffs else 1,
        2,
        figsize=(12, 9 if diffs else 4.5),
        constrained_layout=True,
        squeeze=False,
    )
    dims = sorted({r["dim"] for v in summary["variants"] for r in v["rows"]})
    shown = [v for v in summary["variants"] if v["rows"]]

    def dodged(i: int, rows: list[dict]) -> list[float]:
        return [r["dim"] * 2 ** (0.04 * (i - (len(shown) - 1) / 2)) for r in rows]  # side by side

    def style(i: int, v: dict) -> dict:
        """One look per variant in both rows: its colour, the default drawn thicker."""
        return {"marker": "o", "capsize": 3, "linewidth": 2.5 if v["default"] else 1.2,
                "color": f"C{i}"}  # fmt: skip

    for col, (key, _) in enumerate(METRICS):
        ax = axes[0][col]
        for i, v in enumerate(shown):
            ax.errorbar(
                dodged(i, v["rows"]),
                [r[key]["mean"] for r in v["rows"]],
                yerr=[r[key]["std"] or 0.0 for r in v["rows"]],
                label=v["name"] + (" (default)" if v["default"] else ""),
                **style(i, v),
            )
        ax.set_title(f"{METRIC_TITLES[key]} (mean ± std over seeds)")
        if diffs:
            ax = axes[1][col]
            ax.axhline(0.0, color="black", linewidth=0.8)
            ax.set_yscale("symlog", linthresh=1.0)  # linear within ±1 point, where ties are decided
            ax.yaxis.set_major_formatter(matplotlib.ticker.StrMethodFormatter("{x:+g}"))
            for i, v in enumerate(shown):
                rows = diffs.get(v["name"], [])
                if not rows:
                    continue
                ax.errorbar(
                    dodged(i, rows),
                    [r[key] for r in rows],
                    yerr=[r["paired"][key]["difference_half_width"] or 0.0 for r in rows],
                    **style(i, v),
                )
            ax.set_title(
                f"{METRIC_TITLES[key]} minus {summary['reference']}, points\n"
                f"(symlog; {LEVEL:.0%} interval of the seed-paired difference)"
            )
    for ax in axes.flat:
        ax.set_xscale("log", base=2)
        ax.set_xticks(dims, [str(d) for d in dims])
        ax.set_xlabel("embedding dim")
        ax.grid(True, alpha=0.3)
    axes[0][1].legend(fontsize=8, loc="lower right")
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
