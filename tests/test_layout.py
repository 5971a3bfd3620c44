"""The layout rules that keep the engine independent of the passes it runs."""

from __future__ import annotations

import ast
from pathlib import Path

ENGINE = Path(__file__).resolve().parents[1] / "onnxslim"


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_no_engine_module_imports_a_pass():
    """Passes import the engine, never the other way round: the registry finds built-in
    passes by package name at run time, so the engine loads without any of them."""
    offenders = {
        str(path.relative_to(ENGINE.parent)): sorted(
            name for name in _imported_modules(path) if name.startswith("onnxslim.passes")
        )
        for path in ENGINE.rglob("*.py")
        if "cli" not in path.relative_to(ENGINE).parts
    }
    assert {path: names for path, names in offenders.items() if names} == {}
