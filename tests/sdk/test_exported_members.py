"""`sdk.__all__` is honest, and the exception tree in sdk/errors.py's docstring is complete."""

from __future__ import annotations

import ast
import inspect

import sdk
from sdk import errors


def test_all_names_exist_and_public_names_are_exported():
    for name in sdk.__all__:
        assert hasattr(sdk, name), name
    public = {
        name
        for name, value in vars(sdk).items()
        if not name.startswith("_")
        and not inspect.ismodule(value)
        and name not in ("annotations", "TYPE_CHECKING")
    }
    assert public <= set(sdk.__all__) | {"__version__"}


def test_every_error_is_an_edge_error_and_is_drawn_in_the_tree():
    doc = errors.__doc__ or ""
    classes = [c for c in vars(errors).values() if inspect.isclass(c) and issubclass(c, Exception)]
    assert len(classes) > 10
    for cls in classes:
        assert issubclass(cls, errors.EdgeError)
        assert cls.__name__ in doc, f"{cls.__name__} is missing from the tree in sdk/errors.py"
        assert 400 <= cls.http_status < 600


def test_tree_indentation_matches_the_class_hierarchy():
    # Each line "│   └── Child" must sit under its real parent in the drawing.
    stack: list[tuple[int, str]] = []
    for line in (errors.__doc__ or "").splitlines():
        stripped = line.strip()
        if not stripped or not (stripped.startswith(("├", "└", "EdgeError")) or "── " in line):
            continue
        name = line.split("── ")[-1].split()[0] if "── " in line else "EdgeError"
        depth = line.find(name)
        while stack and stack[-1][0] >= depth:
            stack.pop()
        if stack:
            assert getattr(errors, name).__bases__[0].__name__ == stack[-1][1], name
        stack.append((depth, name))


def test_lazy_names_cover_all_and_resolve():
    assert set(sdk._LAZY) | {"__version__"} == set(sdk.__all__)
    for name, module in sdk._LAZY.items():
        assert getattr(sdk, name).__module__ == module


def test_type_checking_imports_name_what_the_lazy_map_names():
    # The imports under TYPE_CHECKING never run, so only the source can show whether they agree.
    tree = ast.parse(inspect.getsource(sdk))
    block = next(n for n in tree.body if isinstance(n, ast.If) and ast.unparse(n.test) == "TYPE_CHECKING")
    imported = {
        alias.name: node.module
        for node in block.body
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    }
    assert imported == sdk._LAZY


def test_importing_sdk_is_cheap():
    import subprocess
    import sys

    code = "import sys, sdk, sdk.errors; print(sorted(m for m in ('pydantic', 'cryptography', 'yaml', 'numpy') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
