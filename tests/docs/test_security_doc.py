"""docs/security.md names the test that proves each control: every one it names must exist."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "security.md"
#: `tests/x/test_y.py::test_z` and the `::test_w` shorthand that follows one in the same cell
_REF = re.compile(r"`(tests/[\w/]+\.py)?(::\w+)?`")


def _tests_in(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name.startswith("test")}


def test_every_test_the_threat_model_names_exists() -> None:
    missing: list[str] = []
    named = 0
    for line in DOC.read_text().splitlines():
        current: Path | None = None
        for file, func in _REF.findall(line):
            if file:
                current = ROOT / file
                if not current.exists():
                    missing.append(file)
                    continue
            if func and current is not None and current.exists():
                named += 1
                if func[2:] not in _tests_in(current):
                    missing.append(f"{current.relative_to(ROOT)}{func}")
    assert named > 30, "the threat model should name the tests that prove its controls"
    assert missing == []
