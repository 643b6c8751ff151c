"""Presenting eval.json results: a markdown table and a PNG plot of metric against dim.

Several runs (e.g. Matryoshka, the fixed-dim baseline, random init) share one table and plot.
"""

from __future__ import annotations

import json
from pathlib import Path

from core.cli import UsageError

METRICS = (("knn_top1", "kNN top-1"), ("map_at_k", "mAP@{map_k}"))
AXIS_LABELS = {"knn_top1": "kNN top-1 accuracy (k={k})", "map_at_k": "mAP@{map_k}"}


def describe(result: dict) -> str:
    """One line naming what was scored: the checkpoint, its step, the data and its sizes."""
    what = result.get("checkpoint") or "embeddings"
    step = f" (step {result['step']}, epoch {result['epoch']})" if "step" in result else ""
    return (
        f"{what}{step} on {result.get('dataset')}: {result['n_train']} train images as the bank, "
        f"{result['n_test']} test images as queries, rotation {result.get('rotation', 'none')}"
    )


def run_label(result: dict, path: str | Path | None = None) -> str:
    """A short name for a run: its output folder (runs/baseline/eval.json -> baseline)."""
    source = path or result.get("checkpoint") or result.get("dataset") or "run"
    p = Path(str(source))
    return p.parent.name if p.suffix in (".json", ".pt", ".npz") and p.parent.name else p.stem


def load_result(path: str | Path) -> dict:
    """Read an eval.json, or a UsageError naming the file and what is wrong."""
    path = Path(path)
    try:
        result = json.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"--compare {path}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UsageError(f"--compare {path}: not a readable eval.json ({e})") from None
    rows = result.get("metrics") if isinstance(result, dict) else None
    if not isinstance(rows, list) or not all(
        isinstance(r, dict) and {"dim", "knn_top1", "map_at_k"} <= r.keys() for r in rows
    ):
        raise UsageError(f"--compare {path}: not an eval.json (no metrics rows with dim, ...)")
    return result


def _metric_name(key: str, title: str, results: list[dict]) -> str:
    map_k = next((r["map_k"] for res in results for r in res["metrics"] if "map_k" in r), "k")
    return title.format(map_k=map_k) if key == "map_at_k" else title


def markdown_table(results: list[dict], labels: list[str]) -> str:
    """One row per dim; for each metric one column per run ('-' where a run lacks the dim)."""
    dims = sorted({r["dim"] for res in results for r in res["metrics"]})
    by_dim = [{r["dim"]: r for r in res["metrics"]} for res in results]
    header = ["dim"]
    for key, title in METRICS:
        name = _metric_name(key, title, results)
        header += [name if len(results) == 1 else f"{name} {label}" for label in labels]
    lines = ["| " + " | ".join(header) + " |", "|" + "---:|" * len(header)]
    for d in dims:
        cells = [str(d)]
        for key, _ in METRICS:
            cells += [f"{rows[d][key]:.4f}" if d in rows else "-" for rows in by_dim]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(results: list[dict], labels: list[str], path: str | Path) -> None:
    """kNN top-1 and mAP@k against dim (log2 x axis), one line per run, written as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    dims = sorted({r["dim"] for res in results for r in res["metrics"]})
    first = results[0]["metrics"][0] if results[0]["metrics"] else {}
    for ax, (key, title) in zip(axes, METRICS, strict=True):
        for res, label in zip(results, labels, strict=True):
            rows = sorted(res["metrics"], key=lambda r: r["dim"])
            ax.plot([r["dim"] for r in rows], [r[key] for r in rows], marker="o", label=label)
        ax.set_xscale("log", base=2)
        ax.set_xticks(dims, [str(d) for d in dims])
        ax.set_xlabel("embedding dim (prefix length)")
        ax.set_ylabel(AXIS_LABELS[key].format(k=first.get("k", "?"), map_k=first.get("map_k", "k")))
        ax.set_ylim(0, 1)  # the whole scale: a 1-point dip must not look like a cliff
        ax.set_title(_metric_name(key, title, results))
        ax.grid(True, alpha=0.3)
        if len(results) > 1:
            ax.legend()
    fig.suptitle(f"{labels[0]}: {describe(results[0])}", fontsize=8)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


DTYPE_COLUMNS = (
    ("float", "float"),
    ("float16", "float16"),
    ("int8", "int8 / uint8"),
    ("binary", "binary / ubinary"),
    ("binary+rerank", "binary + float rerank"),
)


def dtype_table(result: dict) -> str | None:
    """eval.json's (dim x output type) rows as one row per dim: each cell is kNN top-1 /
    mAP@k (bytes per vector as sent). None when the result has no such rows."""
    rows = result.get("dtypes")
    if not rows:
        return None
    cells = {(r["dim"], r["dtype"]): r for r in rows}
    dims = sorted({r["dim"] for r in rows})
    shown = [(key, title) for key, title in DTYPE_COLUMNS if any(k == key for _, k in cells)]
    lines = [
        "| dim | " + " | ".join(title for _, title in shown) + " |",
        "|---:|" + "---:|" * len(shown),
    ]
    for d in dims:
        out = []
        for key, _ in shown:
            r = cells.get((d, key))
            out.append(
                "-" if r is None else f"{r['knn_top1']:.3f} / {r['map_at_k']:.3f} ({r['bytes']} B)"
            )
        lines.append(f"| {d} | " + " | ".join(out) + " |")
    return "\n".join(lines)
