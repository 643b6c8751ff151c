"""`python -m experiments.nest_report`: issue 26's equal-bytes table on every dataset, and where
learned nesting crosses a free PCA.

Reads the ablation harness's results.json files (docs/results/<grid>/results.json) of the grids
run on one dataset with the same seeds (a re-run of the same command is not bit-identical, so a
variant's difference is taken against `baseline-pca` of its own file when it has one), and
writes, per dataset, every variant's kNN top-1 and mAP@10 at each dim and its seed-by-seed
difference to the non-nested model + PCA (`baseline-pca`, the free post-hoc nesting) with the 90%
paired interval (experiments.seed_stats); then one plot of (learned - PCA) at 8 dims against the
task's difficulty (the PCA model's full-dim kNN top-1).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from experiments.seed_stats import paired_difference

RESULTS = Path("docs/results")
REFERENCE = "baseline-pca"
# name, classes, what is scored, the results.json files (earlier files win a shared seed)
DATASETS = [
    ("shapes", 10, "test split", ["compare-v2-5seeds", "nest-shapes"]),
    ("shapes (validation, 20 epochs)", 10, "validation slice", ["ablate-rotation-screen"]),
    ("digits", 10, "validation slice", ["ablate-digits-5seeds", "nest-digits"]),
    ("glyphs (validation)", 91, "validation designs", ["nest-glyphs"]),
    ("glyphs (test)", 91, "test designs", ["nest-glyphs-test"]),
]
LABELS = {
    "baseline": "(a) non-nested, truncated",
    "baseline-pca": "(b) non-nested + PCA",
    "matryoshka": "(c) defaults (--prefix-grad 0, PCA)",
    "mrl-pg03": "(d) --prefix-grad 0.3, PCA",
    "mrl-pg1": "(d) --prefix-grad 1, PCA",
    "mrl-paper": "(e) MRL paper: 8-dim weight x2, end to end, PCA",
    "mrl-uniform": "(e) uniform nesting 8,64,..,256, end to end, PCA",
    "posthoc-adaptor": "(f) non-nested + PCA + post-hoc adaptor",
}
# earlier grids' names for the same variants (grids/rotation-screen.toml: lr 0.015 = the default)
ALIASES = {
    "baseline-lr0.015": "baseline",
    "baseline-lr0.015-pca": "baseline-pca",
    "sqrt-pg0-lr0.015-pca": "matryoshka",
    "sqrt-lr0.015-pca": "mrl-pg1",
    "sqrt-lr0.015": "mrl-pg1-raw",
    "sqrt-pg0-lr0.015": "matryoshka-raw",
}
LEARNED = ["matryoshka", "mrl-pg03", "mrl-pg1", "mrl-paper", "mrl-uniform", "posthoc-adaptor"]
METRICS = (("knn_top1", "kNN top-1"), ("map_at_k", "mAP@10"))


def load_source(path: Path) -> dict:
    """variant -> dim -> metric -> {seed: value} from one results.json."""
    out: dict = {}
    for v in json.loads(path.read_text())["variants"]:
        v["name"] = ALIASES.get(v["name"], v["name"])
        for row in v["rows"]:
            for key, _ in METRICS:
                values = dict(zip(v["seeds_done"], row[key]["values"], strict=True))
                out.setdefault(v["name"], {}).setdefault(row["dim"], {})[key] = values
    return out


def summarize_dataset(files: list[Path]) -> tuple[dict, list[str]]:
    """Rows per variant with the paired difference to `baseline-pca`, taken within the same
    results.json when it has one (the same checkpoints: (a), (b) and (f) are one trained model),
    else against the first file's (the same seeds: the same data draw and initialisation). A
    variant already shown from an earlier file is suffixed with its grid's name."""
    out: dict = {}
    notes = []
    base_ref = None
    for path in files:
        if not path.exists():
            notes.append(f"{path}: not run")
            continue
        source = load_source(path)
        ref = source.get(REFERENCE, base_ref) or {}
        if base_ref is None and REFERENCE in source:
            base_ref = source[REFERENCE]
        for name, dims in source.items():
            label = name if name not in out else f"{name} [{path.parent.name}]"
            rows = []
            for dim in sorted(dims):
                row = {"dim": dim}
                for key, _ in METRICS:
                    vals = dims[dim][key]
                    seeds = sorted(vals)
                    xs = [vals[s] for s in seeds]
                    mean = sum(xs) / len(xs)
                    var = sum((x - mean) ** 2 for x in xs) / (len(xs) - 1) if len(xs) > 1 else 0
                    cell = {"mean": mean, "std": var**0.5, "seeds": seeds, "values": xs,
                            "source": str(path)}  # fmt: skip
                    r = ref.get(dim, {}).get(key, {})
                    common = [s for s in seeds if s in r]
                    if r is not vals and len(common) == 1:  # one seed: no interval
                        d = vals[common[0]] - r[common[0]]
                        cell["minus_pca"] = {"points": 100 * d, "half_width": None,
                                             "seeds": common}  # fmt: skip
                    elif r is not vals and len(common) >= 2:
                        x, y = [vals[s] for s in common], [r[s] for s in common]
                        d, half = paired_difference(x, y)
                        cell["minus_pca"] = {"points": 100 * d, "half_width": 100 * half,
                                             "seeds": common}  # fmt: skip
                    row[key] = cell
                rows.append(row)
            out[label] = rows
    return out, notes


def _fmt(cell: dict) -> str:
    return f"{cell['mean']:.3f} ± {cell['std']:.3f}"


def _diff(cell: dict) -> str:
    d = cell.get("minus_pca")
    if d is None:
        return "-"
    half = "n/a" if d["half_width"] is None else f"{d['half_width']:.1f}"
    return f"{d['points']:+.1f} ±{half} ({len(d['seeds'])})"


def _rank(label: str) -> tuple[int, str]:
    base = label.split(" [")[0]
    return (list(LABELS).index(base) if base in LABELS else 99, label)


def markdown(summary: dict) -> str:
    lines = []
    for ds in summary["datasets"]:
        var = ds["variants"]
        dims = sorted({r["dim"] for rows in var.values() for r in rows})
        show = [d for d in dims if d <= 32] + [dims[-1]]
        lines += [f"## {ds['name']}: {ds['classes']} classes, {ds['scored']}", ""]
        for key, title in METRICS:
            lines += [
                f"{title}, mean ± std over seeds, and minus (b) seed by seed "
                "(points ± 90% paired interval, in brackets the seeds paired):",
                "",
                "| variant | seeds | " + " | ".join(str(d) for d in show) + " | "
                + " | ".join(f"{d} - (b)" for d in show) + " |",
                "|---|---:|" + "---:|" * (2 * len(show)),
            ]  # fmt: skip
            order = sorted(var, key=_rank)
            for name in order:
                rows = {r["dim"]: r for r in var[name]}
                cells = [_fmt(rows[d][key]) if d in rows else "-" for d in show]
                diffs = [_diff(rows[d][key]) if d in rows else "-" for d in show]
                n = max(len(r[key]["seeds"]) for r in var[name])
                base, _, tag = name.partition(" [")
                label = LABELS.get(base, base) + (f" [{tag}" if tag else "")
                lines.append(f"| {label} | {n} | " + " | ".join(cells + diffs) + " |")
            lines.append("")
        if ds["notes"]:
            lines += ["Notes: " + "; ".join(ds["notes"]), ""]
    return "\n".join(lines)


def _pm(d: dict) -> str:
    return "(1 seed)" if d["half_width"] is None else f"±{d['half_width']:.1f}"


def compact(summary: dict) -> str:
    """One table over datasets: each variant minus (b) at 8, 16, 32 and the full dim, kNN top-1 /
    mAP@10 points with the 90% paired interval, and (b)'s own score for scale."""
    head = "| dataset | variant | seeds | 8 | 16 | 32 | full |"
    lines = [head, "|---|---|---:|---:|---:|---:|---:|"]
    for ds in summary["datasets"]:
        var = ds["variants"]
        for name in sorted(var, key=_rank):
            base, _, tag = name.partition(" [")
            if base not in LABELS:
                continue
            rows = {r["dim"]: r for r in var[name]}
            full = max(rows)
            cells = []
            for d in (8, 16, 32, full):
                r = rows.get(d)
                if r is None:
                    cells.append("-")
                elif base == REFERENCE:
                    cells.append(f"{r['knn_top1']['mean']:.3f} / {r['map_at_k']['mean']:.3f}")
                else:
                    k, m = r["knn_top1"].get("minus_pca"), r["map_at_k"].get("minus_pca")
                    cells.append(
                        "-"
                        if k is None
                        else f"{k['points']:+.1f} {_pm(k)} / {m['points']:+.1f} {_pm(m)}"
                    )
            n = max(len(r["knn_top1"]["seeds"]) for r in var[name])
            label = LABELS[base] + (f" [{tag}" if tag else "")
            lines.append(f"| {ds['name']} | {label} | {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def crossover(summary: dict) -> list[dict]:
    points = []
    for ds in summary["datasets"]:
        var = ds["variants"]
        if REFERENCE not in var:
            continue
        ref = {r["dim"]: r for r in var[REFERENCE]}
        full = ref[max(ref)]["knn_top1"]["mean"]
        for label in var:
            name = label.split(" [")[0]
            if name not in LEARNED:
                continue
            row = next((r for r in var[label] if r["dim"] == 8), None)
            if row is None or "minus_pca" not in row["knn_top1"]:
                continue
            points.append({"dataset": ds["name"], "classes": ds["classes"], "variant": name,
                           "pca_full_dim_knn": full, **row["knn_top1"]["minus_pca"],
                           "map_minus_pca": row["map_at_k"].get("minus_pca")})  # fmt: skip
    return points


def plot(points: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    names = [n for n in LEARNED if any(p["variant"] == n for p in points)]
    for i, name in enumerate(names):
        ps = sorted(
            (p for p in points if p["variant"] == name), key=lambda p: p["pca_full_dim_knn"]
        )
        x = [100 * p["pca_full_dim_knn"] + 0.25 * (i - len(names) / 2) for p in ps]
        err = [p["half_width"] or 0 for p in ps]
        ax.errorbar(x, [p["points"] for p in ps], yerr=err, marker="o", capsize=3,
                    label=LABELS[name])  # fmt: skip
    for p in points:
        if p["variant"] == names[0]:
            ax.annotate(p["dataset"], (100 * p["pca_full_dim_knn"], 0), textcoords="offset points",
                        xytext=(0, -14), ha="center", fontsize=8, color="0.3")  # fmt: skip
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xlabel("task difficulty: full-dim kNN top-1 of (b), % (harder to the left)")
    ax.set_ylabel("kNN top-1 at 8 dims minus (b) non-nested + PCA, points")
    ax.set_title("Learned nesting against a free PCA at 8 dims (90% paired intervals)")
    ax.invert_xaxis()
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--results", type=Path, default=RESULTS, help="folder of <grid>/results.json")
    p.add_argument("--out", type=Path, default=RESULTS / "nest-summary")
    args = p.parse_args(argv)
    datasets = []
    for name, classes, scored, grids in DATASETS:
        files = [args.results / g / "results.json" for g in grids]
        variants, notes = summarize_dataset(files)
        if variants:
            datasets.append({"name": name, "classes": classes, "scored": scored,
                             "sources": [str(f) for f in files], "notes": notes,
                             "variants": variants})  # fmt: skip
    summary = {"reference": REFERENCE, "datasets": datasets}
    summary["crossover_8"] = crossover(summary)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(summary, indent=1) + "\n")
    table = markdown(summary)
    (args.out / "table.md").write_text(table + "\n")
    (args.out / "compact.md").write_text(compact(summary) + "\n")
    if summary["crossover_8"]:
        plot(summary["crossover_8"], args.out / "crossover.png")
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
