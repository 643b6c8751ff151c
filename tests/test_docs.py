"""The docs stand alone: every relative link resolves inside the repository."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def markdown_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_relative_links_point_to_files_in_the_repository():
    broken = []
    for md in markdown_files():
        for target in LINK.findall(md.read_text()):
            if re.match(r"[a-z]+:", target):
                continue  # http(s), mailto
            path = (md.parent / target).resolve()
            if not path.is_relative_to(ROOT) or not path.exists():
                broken.append(f"{md.relative_to(ROOT)} -> {target}")
    assert not broken, broken


def test_docs_and_code_cite_no_file_outside_the_repository():
    sources = [*markdown_files(), *ROOT.glob("trainer/*.py"), *ROOT.glob("server/*.py")]
    citing = [str(p.relative_to(ROOT)) for p in sources if "shared/" in p.read_text()]
    assert not citing, citing
