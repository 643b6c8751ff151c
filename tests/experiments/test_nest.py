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
