"""The README links every manual in docs/, and every relative link in the docs and deploy READMEs
points at a file that exists."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
_LINK = re.compile(r"\]\(([^)\s]+)\)")


def _pages() -> list[Path]:
    return [
        ROOT / "README.md",
        *sorted((ROOT / "docs").glob("*.md")),
        *sorted((ROOT / "deploy").rglob("*.md")),
    ]


def test_every_relative_link_resolves() -> None:
    broken = []
    for page in _pages():
        for target in _LINK.findall(page.read_text()):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue
            path = (page.parent / target.split("#", 1)[0]).resolve()
            if not path.exists():
                broken.append(f"{page.relative_to(ROOT)} -> {target}")
    assert broken == []


def test_the_readme_links_every_manual() -> None:
    linked = set(_LINK.findall((ROOT / "README.md").read_text()))
    manuals = {f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md")}
    assert {
        "docs/converter.md",
        "docs/agent.md",
        "docs/fleet.md",
        "docs/protocol.md",
        "docs/operations.md",
    } <= manuals
    assert manuals <= linked
