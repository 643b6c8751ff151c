"""The shell examples the docs mark `<!-- tested: tests/test_doc_examples.py -->` run as typed,
against a real `python -m server` (a tiny checkpoint and index; the docs' port 8000 is swapped
for a free one) from a folder holding the files they name. curl fails on any HTTP error."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from support import Server, build_index, train_tiny

ROOT = Path(__file__).resolve().parents[1]
MARK = "<!-- tested: tests/test_doc_examples.py -->"
BLOCK = re.compile(re.escape(MARK) + r"\n```(?:bash|console)\n(.*?)```", re.S)


def examples() -> list[tuple[str, str]]:
    found = []
    for md in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for i, block in enumerate(BLOCK.findall(md.read_text())):
            found.append((f"{md.relative_to(ROOT)}#{i}", block))
    return found


EXAMPLES = examples()


def test_the_docs_mark_examples_to_run():
    assert len(EXAMPLES) >= 3, "the README's serving examples are marked"


@pytest.fixture(scope="module")
def server(tiny_dataset, tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    checkpoint = train_tiny(tiny_dataset, run, nesting=[8, 16, 32, 64, 128, 256])  # the docs'
    index = build_index(checkpoint, tiny_dataset, run / "index", limit=60)
    srv = Server(checkpoint, index, run)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """The files the examples name, as the tutorial leaves them."""
    work = tmp_path_factory.mktemp("work")
    rng = np.random.default_rng(0)
    (work / "photos-queries").mkdir()
    for name in ("cat.jpg", "coffee.jpg", "astronaut.png"):
        pixels = rng.integers(0, 256, (180, 240, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(work / "photos-queries" / name)
    return work


@pytest.mark.parametrize(("where", "script"), EXAMPLES, ids=[w for w, _ in EXAMPLES])
def test_doc_example_runs(where, script, server, workdir):
    commands = "\n".join(
        line.removeprefix("$ ") for line in script.splitlines() if not line.startswith("{")
    )
    commands = commands.replace("localhost:8000", f"127.0.0.1:{server.port}")
    preamble = 'set -euo pipefail\ncurl() { command curl --fail-with-body "$@"; echo; }\n'
    proc = subprocess.run(
        ["bash", "-c", preamble + commands], cwd=workdir, capture_output=True, text=True
    )
    assert proc.returncode == 0, f"{where}:\n{commands}\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}"
    answers = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert answers and not any("error" in a for a in answers), proc.stdout[-2000:]
