"""Dockerfiles: lint-clean, install the project's extras as the Makefile does (versions
live only in pyproject.toml), non-root, exec-form entrypoints, small build context; the
server's extras hold no training-only package and its code imports without them."""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = {
    "trainer": ROOT / "docker" / "trainer.Dockerfile",
    "server": ROOT / "docker" / "server.Dockerfile",
}
ENTRYPOINTS = {
    "trainer": ["python", "-m", "trainer.distributed.torchrun"],
    "server": ["python", "-m", "server"],
}
ROLE_EXTRA = {"trainer": "train", "server": "serve"}
TRAINING_ONLY = ("datasets", "pyarrow", "tensorboard", "matplotlib", "pandas")
PIP_INSTALL_SH = ROOT / "docker" / "pip-install.sh"
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
    """Every `pip install` / `pip-install` (docker/pip-install.sh) command line in RUNs."""
    found = []
    for op, rest in instructions(path):
        if op == "RUN":
            found += re.findall(r"pip[ -]install [^&;]*?(?=\s*(?:&&|;|$))", rest)
    return found


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
    torch_index = "$(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX))"
    assert f"$(PIP_INSTALL) {torch_index} -e '.[$(EXTRAS)]'" in make
    assert re.search(r"^TORCH_INDEX \?=$", make, re.M)  # empty: PyPI's torch unless asked
    assert re.search(r"^EXTRAS \?= cpu,train,serve,dev$", make, re.M)


@pytest.mark.parametrize("name", DOCKERFILES)
def test_dockerfile_installs_the_projects_extras(name: str) -> None:
    """Dependencies from `.[<variant>,<role>]` (the extras the Makefile installs too), then
    the code alone; no pins, no package named outside pyproject."""
    assert pip_installs(DOCKERFILES[name]) == [
        f'pip-install ".[${{VARIANT}},{ROLE_EXTRA[name]}]"',
        "pip-install --no-deps --target /opt/moco .",
    ]
    text = DOCKERFILES[name].read_text().lower()
    assert not re.search(r"(==|>=|<=|~=)\s*\d", text), "a version pin outside pyproject.toml"
    runs = " ".join(rest for op, rest in instructions(DOCKERFILES[name]) if op == "RUN").lower()
    named = {p for p in package_names() if re.search(rf"(?<![\w/.-]){re.escape(p)}\b", runs)}
    assert not named, f"packages installed by name in {name}'s Dockerfile: {named}"


def test_extras_split_training_from_serving() -> None:
    """The server image's install (core + serve + faiss) names no training-only package."""
    project = PYPROJECT["project"]
    extras = project["optional-dependencies"]
    names = {
        key: {re.split(r"[\[<>=~!; ]", d, maxsplit=1)[0].lower() for d in deps}
        for key, deps in [("core", project["dependencies"]), *extras.items()]
    }
    served = names["core"] | names["serve"] | names["cpu"] | names["gpu"]
    assert not served & set(TRAINING_ONLY)
    assert {"datasets", "tensorboard", "matplotlib"} <= names["train"]
    assert {"fastapi", "uvicorn", "prometheus-client"} <= names["serve"]
    assert "faiss-cpu" in names["cpu"] and "faiss-gpu-cu12" in names["gpu"]


@pytest.mark.parametrize("name", DOCKERFILES)
def test_variant_and_torch_index_are_build_args(name: str) -> None:
    text = DOCKERFILES[name].read_text()
    builder, _ = stages(DOCKERFILES[name])
    assert ("ARG", "VARIANT=cpu") in builder and ("ARG", "TORCH_INDEX_URL=auto") in builder
    assert ("COPY", "docker/pip-install.sh /usr/local/bin/pip-install") in builder
    assert "download.pytorch.org" not in text, "the index is chosen in docker/pip-install.sh"


@pytest.mark.parametrize(
    ("index", "variant", "expected"),
    [
        ("auto", "cpu", ["--extra-index-url", "https://download.pytorch.org/whl/cpu"]),
        ("auto", "gpu", []),
        ("", "cpu", []),
        (
            "https://mirror.example/torch",
            "gpu",
            ["--extra-index-url", "https://mirror.example/torch"],
        ),
    ],
)
def test_pip_install_script_picks_the_torch_index(tmp_path, index, variant, expected) -> None:
    fake_pip = tmp_path / "pip"
    fake_pip.write_text('#!/bin/sh\nprintf "%s\\n" "cert=${PIP_CERT:-}" "$@"\n')
    fake_pip.chmod(0o755)
    env = {"PATH": f"{tmp_path}:/usr/bin:/bin", "TORCH_INDEX_URL": index, "VARIANT": variant,
           "PIP_CA_SECRET": str(tmp_path / "absent")}  # fmt: skip
    r = subprocess.run(["sh", str(PIP_INSTALL_SH), ".[x]"], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["cert=", "install", *expected, ".[x]"]


def test_pip_install_script_trusts_the_ca_secret_only_when_given(tmp_path) -> None:
    fake_pip = tmp_path / "pip"
    fake_pip.write_text('#!/bin/sh\necho "cert=${PIP_CERT:-}"\n')
    fake_pip.chmod(0o755)
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    env = {"PATH": f"{tmp_path}:/usr/bin:/bin", "VARIANT": "cpu", "PIP_CA_SECRET": str(ca)}
    r = subprocess.run(["sh", str(PIP_INSTALL_SH)], env=env, capture_output=True, text=True)
    assert r.stdout == f"cert={ca}\n"


@pytest.mark.parametrize("name", DOCKERFILES)
def test_ca_bundle_is_a_build_secret_not_a_layer(name: str) -> None:
    """The CA reaches pip as a secret mount of the install step, never COPY/ARG/ENV."""
    builder, runtime = stages(DOCKERFILES[name])
    installs = [rest for op, rest in builder if op == "RUN" and "pip-install" in rest]
    assert len(installs) == 2
    assert all("--mount=type=secret,id=pip-ca,required=false" in r for r in installs)
    for op, rest in builder + runtime:
        if op in ("COPY", "ARG", "ENV"):
            assert not re.search(r"\bca\b|cert|\.pem|\.crt", rest, re.I), (op, rest)
    assert not any("pip-install" in rest for _, rest in runtime)


def test_server_code_imports_without_training_packages() -> None:
    """What the server image runs (app, CLI) imports with the training-only packages absent
    (None in sys.modules makes `import` fail as for a missing package)."""
    blocked = ", ".join(repr(m) for m in TRAINING_ONLY)
    code = (
        f"import sys\nfor m in ({blocked},): sys.modules[m] = None\n"
        "import server.__main__, server.app, server.service\n"
        "assert not [m for m in sys.modules if m.split('.')[0] in "
        f"({blocked},) and sys.modules[m] is not None]\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr


def test_index_build_imports_without_serving_packages() -> None:
    """The index Job runs `trainer.build_index` in the trainer image, which has no `serve` extra."""
    code = (
        "import sys\nfor m in ('fastapi', 'uvicorn', 'starlette', 'prometheus_client', "
        "'multipart'): sys.modules[m] = None\nimport trainer.build_index, trainer.evaluate.cli\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("name", DOCKERFILES)
def test_runtime_stage_is_slim_non_root_and_exec_form(name: str) -> None:
    path = DOCKERFILES[name]
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim$", path.read_text(), re.M)
    *build, runtime = stages(path)
    assert build, "multi-stage: a builder stage, then the runtime"
    assert runtime[0] == ("FROM", "${PYTHON_IMAGE} AS runtime")
    ops = [op for op, _ in runtime]
    runs = " ".join(rest for op, rest in runtime if op == "RUN")
    assert "pip" not in runs and "apt-get" not in runs, "build steps in the runtime"
    assert ("COPY", "--from=builder /opt/venv /opt/venv") in runtime
    assert ("COPY", "--from=builder /opt/moco /opt/moco") in runtime, "the code, a layer apart"
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
        r.startswith("--mount=type=cache,target=/root/.cache/pip") and "pip-install" in r
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
        "tests/deploy/test_k8s.py",
    ):
        assert not _docker_context_includes(rel, patterns), rel
    for name in DOCKERFILES.values():
        for op, rest in instructions(name):
            if op == "COPY" and not rest.startswith("--from"):
                for src in rest.split()[:-1]:
                    assert _docker_context_includes(src.rstrip("/"), patterns), src


@pytest.mark.parametrize(
    ("name", "packages"),
    [("trainer", {"core", "index", "trainer"}), ("server", {"core", "index", "server"})],
)
def test_each_image_copies_only_its_own_wing(name: str, packages: set[str]) -> None:
    """The floor plan in the images: the server image holds no training code, the trainer
    image no HTTP code (docs/ARCHITECTURE.md)."""
    copied = {
        rest.split()[0].rstrip("/")
        for op, rest in instructions(DOCKERFILES[name])
        if op == "COPY" and not rest.startswith("--from") and "/" in rest.split()[0]
    }
    assert {c for c in copied if not c.startswith("docker")} == packages
