"""Dockerfiles: lint-clean, install the project exactly as the Makefile does (versions
live only in pyproject.toml), non-root, exec-form entrypoints, small build context."""

from __future__ import annotations

import fnmatch
import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILES = {
    "trainer": ROOT / "docker" / "trainer.Dockerfile",
    "server": ROOT / "docker" / "server.Dockerfile",
}
ENTRYPOINTS = {"trainer": ["torchrun"], "server": ["python", "-m", "server"]}
HADOLINT = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
ALLOWED_IGNORES = {"DL3006", "DL3013"}  # documented next to each use in the Dockerfiles
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n\s*", " ", path.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            op, _, rest = line.partition(" ")
            out.append((op.upper(), rest.strip()))
    return out


def stages(path: Path) -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for op, rest in instructions(path):
        if op == "FROM":
            result.append([])
        if result:
            result[-1].append((op, rest))
    return result


def pip_installs(path: Path) -> list[str]:
    return [
        rest[rest.index("pip install") :]
        for op, rest in instructions(path)
        if op == "RUN" and "pip install" in rest
    ]


def package_names() -> set[str]:
    deps = list(PYPROJECT["project"]["dependencies"])
    for extra in PYPROJECT["project"]["optional-dependencies"].values():
        deps += extra
    return {re.split(r"[\[<>=~!; ]", d, maxsplit=1)[0].lower() for d in deps}


@pytest.mark.skipif(not Path(HADOLINT).exists(), reason="hadolint not installed (dev extra)")
@pytest.mark.parametrize("name", DOCKERFILES)
def test_hadolint_passes(name: str) -> None:
    r = subprocess.run([HADOLINT, str(DOCKERFILES[name])], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    ignored = set(re.findall(r"hadolint ignore=([\w,]+)", DOCKERFILES[name].read_text()))
    assert {rule for group in ignored for rule in group.split(",")} <= ALLOWED_IGNORES


def test_makefile_installs_the_project_from_pyproject() -> None:
    make = (ROOT / "Makefile").read_text()
    assert re.search(r"\$\(PIP_INSTALL\) -e '\.\[\$\(EXTRAS\)\]'", make)
    assert re.search(r"^EXTRAS \?= cpu,dev$", make, re.M)


@pytest.mark.parametrize("name", DOCKERFILES)
def test_dockerfile_installs_the_same_project_and_extra(name: str) -> None:
    """Same install as the Makefile (`.[<extra>]`, the extra picked by VARIANT), no pins."""
    assert pip_installs(DOCKERFILES[name]) == ['pip install ".[${VARIANT}]"']
    text = DOCKERFILES[name].read_text().lower()
    assert not re.search(r"(==|>=|<=|~=)\s*\d", text), "a version pin outside pyproject.toml"
    runs = " ".join(rest for op, rest in instructions(DOCKERFILES[name]) if op == "RUN").lower()
    named = {p for p in package_names() if re.search(rf"(?<![\w/.-]){re.escape(p)}\b", runs)}
    assert not named, f"packages installed by name in {name}'s Dockerfile: {named}"


@pytest.mark.parametrize("name", DOCKERFILES)
def test_variant_selects_a_pyproject_extra(name: str) -> None:
    extras = PYPROJECT["project"]["optional-dependencies"]
    assert "faiss-cpu" in extras["cpu"][0] and "faiss-gpu" in extras["gpu"][0]
    text = DOCKERFILES[name].read_text()
    assert re.search(r"^ARG VARIANT=cpu$", text, re.M)
    for variant in ("cpu", "gpu"):
        assert variant in extras
        assert re.search(rf"^FROM \S+ AS index-{variant}$", text, re.M)
    assert "FROM index-${VARIANT} AS builder" in text


@pytest.mark.parametrize("name", DOCKERFILES)
def test_runtime_stage_is_slim_non_root_and_exec_form(name: str) -> None:
    path = DOCKERFILES[name]
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim$", path.read_text(), re.M)
    *build, runtime = stages(path)
    assert build, "multi-stage: a builder stage, then the runtime"
    assert runtime[0] == ("FROM", "${PYTHON_IMAGE} AS runtime")
    ops = [op for op, _ in runtime]
    runs = " ".join(rest for op, rest in runtime if op == "RUN")
    assert "pip install" not in runs and "apt-get" not in runs, "build steps in the runtime"
    assert ("COPY", "--from=builder /opt/venv /opt/venv") in runtime
    assert not any(op in ("ADD",) for op in ops)
    user = [rest for op, rest in runtime if op == "USER"]
    assert user and re.fullmatch(r"[1-9]\d*:[1-9]\d*", user[-1]), "numeric non-root USER"
    entry = [rest for op, rest in runtime if op == "ENTRYPOINT"]
    assert json.loads(entry[-1]) == ENTRYPOINTS[name], "exec-form entrypoint"
    assert not re.search(r"secret|token|password|api_key", runs + " ".join(ops), re.I)


@pytest.mark.parametrize("name", DOCKERFILES)
def test_builder_uses_a_pip_cache_mount(name: str) -> None:
    runs = [rest for op, rest in instructions(DOCKERFILES[name]) if op == "RUN"]
    assert any(
        r.startswith("--mount=type=cache,target=/root/.cache/pip") and "pip install" in r
        for r in runs
    )


def _docker_context_includes(rel: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern wins; `!` re-includes."""
    included = True
    parts = rel.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pat in patterns:
        neg = pat.startswith("!")
        p = pat[1:] if neg else pat
        p = p.rstrip("/")
        candidates = [p, p.removeprefix("**/")] if p.startswith("**/") else [p]
        if any(
            fnmatch.fnmatch(pre, c) or fnmatch.fnmatch(parts[-1], c)
            for pre in prefixes
            for c in candidates
        ):
            included = neg
    return included


def test_dockerignore_keeps_the_context_small() -> None:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    patterns = [ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")]
    for rel in ("pyproject.toml", "README.md", "trainer/train.py", "server/__main__.py"):
        assert _docker_context_includes(rel, patterns), rel
    for rel in (
        "runs/default/checkpoint.pt",
        "data/imagenet/x.jpg",
        ".venv/bin/python",
        ".git/HEAD",
        ".env",
        "trainer/__pycache__/x.pyc",
        "tests/test_k8s.py",
    ):
        assert not _docker_context_includes(rel, patterns), rel
    for name in DOCKERFILES.values():
        for op, rest in instructions(name):
            if op == "COPY" and not rest.startswith("--from"):
                for src in rest.split()[:-1]:
                    assert _docker_context_includes(src.rstrip("/"), patterns), src
