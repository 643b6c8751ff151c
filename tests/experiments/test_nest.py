"""Issue 26's pieces: the glyphs dataset builder (grids/glyphs_data.py) and the grid fields that
score another grid's checkpoints on another split (`checkpoints`, `eval_common`)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from experiments import ablate
from experiments.grid import load_grid

ROOT = Path(__file__).resolve().parents[2]


def glyphs_module():
    spec = importlib.util.spec_from_file_location("glyphs_data", ROOT / "grids/glyphs_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def mpl_font(name: str) -> str:
    import matplotlib

    return str(Path(matplotlib.get_data_path()) / "fonts/ttf" / name)


def test_glyphs_builder_on_two_fonts_is_deterministic(tmp_path):
    import datasets

    g = glyphs_module()
    assert len(g.CLASSES) == len(set(g.CLASSES)) == 91
    fonts = f"train={mpl_font('DejaVuSans.ttf')};test={mpl_font('DejaVuSerif.ttf')}"
    for out in ("a", "b"):
        g.main([str(tmp_path / out), "--fonts", fonts, "--renders", "1"])
    a, b = (datasets.load_from_disk(str(tmp_path / out)) for out in ("a", "b"))
    assert {s: len(a[s]) for s in a} == {"train": 91, "test": 91}
    assert a["train"].features["label"].names == g.CLASSES
    assert a["test"][5]["font"] == "DejaVuSerif.ttf" and a["test"][5]["label"] == 5
    assert a["train"][90]["image"].size == (32, 32) and a["train"][90]["image"].mode == "RGB"
    assert a["train"][17]["image"].tobytes() == b["train"][17]["image"].tobytes()
    manifest = json.loads((tmp_path / "a/glyphs_manifest.json").read_text())
    assert manifest["classes"] == "".join(g.CLASSES)
    assert len(manifest["splits"]["test"]["designs"]["custom"]["DejaVuSerif.ttf"]) == 64


def test_glyphs_builder_refuses_missing_fonts_naming_the_packages(tmp_path):
    g = glyphs_module()
    with pytest.raises(SystemExit, match="apt-get install fonts-urw-base35"):
        g.main([str(tmp_path / "x"), "--fonts", f"train={tmp_path / 'nope.otf'}"])
    computer_modern = mpl_font("cmr10.ttf")  # no Greek or Cyrillic
    with pytest.raises(SystemExit, match="lacks the glyphs"):
        g.main([str(tmp_path / "x"), "--fonts", f"train={computer_modern}"])


def test_documented_font_list_holds_disjoint_designs():
    g = glyphs_module()
    designs = {s: set(groups) for s, groups in g.DESIGNS.items()}
    assert designs["train"].isdisjoint(designs["test"])
    assert designs["validation"].isdisjoint(designs["train"] | designs["test"])
    files = [Path(p).name for groups in g.DESIGNS.values() for ps in groups.values() for p in ps]
    assert len(files) == len(set(files)) == 85


GRID = """
out = "{out}"
checkpoints = "{ckpts}"
eval_common = "--test-split test"
seeds = [0]
dims = [8, 16]
common = "--epochs 1"
[variants.base]
train = "--nesting-list 16"
[variants.base-pca]
of = "base"
eval = "--rotation pca"
"""


def test_grid_checkpoints_scores_another_grids_runs_without_training(tmp_path):
    path = tmp_path / "g.toml"
    path.write_text(GRID.format(out=tmp_path / "out", ckpts=tmp_path / "trained"))
    runs = ablate.plan(load_grid(path), [0], None)
    assert [r.train for r in runs] == [None, None]
    assert {r.checkpoint for r in runs} == {tmp_path / "trained/base/seed0/checkpoint.pt"}
    assert [r.eval for r in runs] == [["--test-split", "test"],
                                      ["--test-split", "test", "--rotation", "pca"]]  # fmt: skip
    assert runs[0].folder == tmp_path / "out/base/seed0" and runs[0].width == 16


def results_json(path: Path, variants: dict[str, dict[int, list[float]]], seeds=(0, 1, 2)) -> Path:
    rows = lambda by_dim: [  # noqa: E731
        {"dim": d, "knn_top1": {"values": v}, "map_at_k": {"values": [x / 2 for x in v]}}
        for d, v in by_dim.items()
    ]
    body = [{"name": n, "seeds_done": list(seeds), "rows": rows(v)} for n, v in variants.items()]
    path.mkdir(parents=True, exist_ok=True)
    (path / "results.json").write_text(json.dumps({"variants": body}))
    return path / "results.json"


def test_nest_report_pairs_each_variant_with_the_pca_of_its_own_grid(tmp_path):
    from experiments import nest_report

    old = results_json(tmp_path / "old", {
        "baseline-pca": {8: [0.5, 0.6, 0.7], 256: [0.8, 0.8, 0.8]},
        "matryoshka": {8: [0.52, 0.61, 0.73], 256: [0.8, 0.81, 0.8]},
    })  # fmt: skip
    new = results_json(tmp_path / "new", {
        "baseline-pca": {8: [0.4, 0.4, 0.4], 256: [0.7, 0.7, 0.7]},
        "posthoc-adaptor": {8: [0.41, 0.41, 0.41], 256: [0.7, 0.7, 0.7]},
        "mrl-pg1": {8: [0.5, 0.6, 0.7], 256: [0.8, 0.8, 0.8]},
    })  # fmt: skip
    var, notes = nest_report.summarize_dataset([old, new, tmp_path / "missing/results.json"])
    assert notes == [f"{tmp_path / 'missing/results.json'}: not run"]
    diff = {name: rows[0]["knn_top1"].get("minus_pca") for name, rows in var.items()}
    assert diff["matryoshka"]["points"] == pytest.approx(2.0)  # against the old grid's PCA
    assert diff["posthoc-adaptor"]["points"] == pytest.approx(1.0)  # against its own grid's
    assert diff["mrl-pg1"]["points"] == pytest.approx(20.0)
    assert diff["baseline-pca"] is None and diff["baseline-pca [new]"] is None
    summary = {"datasets": [{"name": "toy", "classes": 3, "scored": "x", "notes": [],
                             "variants": var}]}  # fmt: skip
    assert "| toy | (c) defaults" in nest_report.compact(summary)
    points = nest_report.crossover(summary)
    assert {p["variant"] for p in points} == {"matryoshka", "posthoc-adaptor", "mrl-pg1"}
