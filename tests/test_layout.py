"""The library's wings import only the core and the wings below them in pipeline order (docs/internals.md: Layout)."""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "phototagger"
RANK = {"core": 0, "scoring": 1, "ingest": 2, "training": 2, "prompting": 3, "output": 4}
"""A unit may import a unit of lower rank, or itself; ingest and training stand side by side."""


def unit_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 and parts[1] in RANK else "core"


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "phototagger":
                found |= {f"phototagger.{alias.name}" for alias in node.names}
            elif node.module.startswith("phototagger."):
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("phototagger.")}
    return found


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_every_import_runs_down_the_pipeline():
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        unit = unit_of(module_name(path))
        for target in imported_modules(path):
            other = unit_of(target)
            if other != unit and RANK[other] >= RANK[unit]:
                upward.append(f"{module_name(path)} ({unit}) imports {target} ({other})")
    assert upward == []


def test_the_package_has_the_five_wings_over_a_flat_core():
    wings = sorted(p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists())
    assert wings == sorted(set(RANK) - {"core"})
    core = sorted(p.stem for p in PACKAGE.glob("*.py"))
    assert set(core) <= {"__init__", "blobs", "bootstrap", "claims", "dependencies", "errors", "http", "images", "mfclient", "mfdeploy", "records", "redact"}, core


def test_relative_imports_are_not_used_so_the_rule_above_sees_every_import():
    relative = [str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")
                if any(isinstance(n, ast.ImportFrom) and n.level for n in ast.walk(ast.parse(p.read_text())))]
    assert relative == []
