"""The package's modules import one way: each layer only from the layers below it (docs/ARCHITECTURE.md)."""

from __future__ import annotations

import ast
from pathlib import Path

import refine_lm

ROOT = Path(refine_lm.__file__).parent
# bottom to top; a unit is a sub-package or a top-level module of refine_lm
LAYERS = [
    {"config", "state", "memory", "ranks", "step_random", "optim", "files"},
    {"ops"},
    {"layers"},
    {"models"},
    {"refine", "data"},
    {"eval"},  # test-time training runs REFINE; evaluations read data files with data/
    {"train"},
    {"demo", "study"},
    {"cli"},
    {"__main__"},
]
LEVEL = {unit: i for i, layer in enumerate(LAYERS) for unit in layer}


def _unit(path: Path) -> str:
    return path.relative_to(ROOT).parts[0].removesuffix(".py")


def _imported_units(path: Path) -> set[str]:
    """The units a module imports, lazily inside functions included."""
    parts = path.relative_to(ROOT).parts
    units = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            package = list(parts[:-1])[: len(parts) - node.level]
            target = package + (node.module.split(".") if node.module else [])
            units |= {target[0]} if target else {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("refine_lm."):
            units.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            units |= {a.name.split(".")[1] for a in node.names if a.name.startswith("refine_lm.")}
    return units


def test_every_unit_has_a_layer():
    units = {_unit(p) for p in ROOT.rglob("*.py")} - {"__init__"}
    assert units <= set(LEVEL), f"not placed in a layer: {sorted(units - set(LEVEL))}"


def test_imports_run_one_way():
    wrong = []
    for path in sorted(ROOT.rglob("*.py")):
        unit = _unit(path)
        if unit == "__init__":  # the package's public names, imported from wherever they live
            continue
        for target in _imported_units(path) - {unit}:
            if LEVEL[target] >= LEVEL[unit]:
                wrong.append(f"{path.relative_to(ROOT)} imports {target} (layer {LEVEL[target]} >= {LEVEL[unit]})")
    assert not wrong, "\n".join(wrong)
