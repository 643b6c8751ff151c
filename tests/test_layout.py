"""The floor plan (docs/ARCHITECTURE.md), held against the code: which package may import which,
what the shared contract and the index library may lean on, and no import circles."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OURS = ("core", "index", "trainer", "server", "experiments")
# package -> the packages of ours it may import (itself included)
MAY_IMPORT = {
    "core": {"core"},
    "index": {"core", "index"},
    "trainer": {"core", "index", "trainer"},
    "server": {"core", "index", "server"},
    "experiments": {"core", "index", "trainer", "experiments"},
}
# third-party packages each may import (the standard library is always allowed)
THIRD_PARTY = {
    "core": {"torch", "torchvision", "numpy", "pydantic", "PIL", "safetensors"},
    "index": {"numpy", "faiss", "PIL", "pydantic"},
}
WEB = {"fastapi", "starlette", "uvicorn", "multipart", "prometheus_client", "orjson"}


def modules() -> dict[str, Path]:
    found = {}
    for package in OURS:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def imports_of(path: Path, name: str) -> set[str]:
    """Every module named by an import anywhere in the file (TYPE_CHECKING and function
    bodies too: a type-only import still ties the two files together)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*up, base] if base else up)
            out.add(base)
            out |= {f"{base}.{a.name}" for a in node.names}
    return out


MODULES = modules()
GRAPH = {
    name: {m for m in imports_of(path, name) if m in MODULES and m != name}
    for name, path in MODULES.items()
}


@pytest.mark.parametrize("package", OURS)
def test_packages_import_only_what_the_floor_plan_allows(package):
    wrong = {
        f"{name} -> {imported}"
        for name, path in MODULES.items()
        if name.split(".")[0] == package
        for imported in imports_of(path, name)
        if imported.split(".")[0] in OURS and imported.split(".")[0] not in MAY_IMPORT[package]
    }
    assert not wrong, f"{package} may import only {sorted(MAY_IMPORT[package])}: {sorted(wrong)}"


@pytest.mark.parametrize("package", sorted(THIRD_PARTY))
def test_the_contract_and_the_index_lean_on_few_libraries(package):
    allowed = THIRD_PARTY[package] | set(sys.stdlib_module_names) | set(OURS)
    wrong = {
        f"{name} -> {imported}"
        for name, path in MODULES.items()
        if name.split(".")[0] == package
        for imported in imports_of(path, name)
        if imported.split(".")[0] not in allowed
    }
    assert not wrong, sorted(wrong)


def test_the_index_library_knows_no_web_framework():
    used = {
        imported.split(".")[0]
        for name, path in MODULES.items()
        if name.startswith("index")
        for imported in imports_of(path, name)
    }
    assert not used & WEB


def test_no_import_circles():
    """Depth-first search over the module graph; any back edge is a circle."""
    state: dict[str, int] = {}
    circles = []

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(GRAPH[node]):
            if state.get(nxt) == 1:
                circles.append(" -> ".join([*trail[trail.index(nxt) :], nxt]))
            elif nxt not in state:
                visit(nxt, [*trail, nxt])
        state[node] = 2

    for name in sorted(GRAPH):
        if name not in state:
            visit(name, [name])
    assert not circles, circles


def test_the_rules_catch_a_server_importing_training_code(tmp_path):
    """The check itself: a file that breaks the rule is found (so the tests above can fail)."""
    bad = tmp_path / "bad.py"
    bad.write_text("from trainer.train import train\nimport fastapi\n")
    found = imports_of(bad, "server.bad")
    assert "trainer.train" in found and "trainer" not in MAY_IMPORT["server"]
    assert "fastapi" in found and "fastapi" in WEB


def test_the_server_needs_no_onnx():
    """The server image installs no `export` extra: serving an exported folder takes only
    safetensors (core.export_folder)."""
    export_only = {"onnx", "onnxruntime", "tritonclient"}
    wrong = {
        f"{name} -> {imported}"
        for name, path in MODULES.items()
        if name.split(".")[0] in ("core", "index", "server")
        for imported in imports_of(path, name)
        if imported.split(".")[0] in export_only
    }
    assert not wrong, sorted(wrong)
