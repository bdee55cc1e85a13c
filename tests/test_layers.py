"""The package's imports point downwards only: core <- models <- data, unify, inference <- training <- evaluation <-
the commands (docs/architecture.md). Read from the source (every import statement, function-level ones included),
so a lazy import that breaks the layering is caught as well."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.helpers import ROOT

PACKAGE = ROOT / "huatuo"
LAYERS = {"core": 0, "models": 1, "data": 2, "unify": 2, "inference": 2, "training": 3, "evaluation": 4}
# What each stage may import besides itself (docs/architecture.md's table); the commands may import anything.
ALLOWED = {
    "core": set(),
    "models": {"core"},
    "data": {"core", "models"},
    "unify": {"core", "models"},
    "inference": {"core", "models"},
    "training": {"core", "models", "data"},
    "evaluation": {"core", "models", "data", "unify", "inference", "training"},
}
COMMAND_LAYER = 5  # huatuo/<command>.py and huatuo/unify/__main__.py
COMMANDS = {"train", "prepare", "evaluate", "chat", "plan", "mini", "decontaminate"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> int | None:
    """The layer of a huatuo module; None for the package root (it only wires core and the registration hook)."""
    parts = module.split(".")
    if len(parts) == 1:
        return None
    if parts[1] in LAYERS:
        return COMMAND_LAYER if parts[-1] == "__main__" else LAYERS[parts[1]]
    return COMMAND_LAYER


def huatuo_imports(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "huatuo":
                found += [(node.lineno, f"huatuo.{alias.name}") for alias in node.names]
            elif node.module.startswith("huatuo."):
                found.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("huatuo")]
    return found


def resolve(name: str) -> str:
    """``huatuo.conf_dir`` (a name re-exported by the root) counts as the module that defines it: core."""
    first = name.split(".")[1] if "." in name else ""
    if first and not (PACKAGE / first).is_dir() and not (PACKAGE / f"{first}.py").is_file():
        return "huatuo.core"
    return name


def violation(importer: str, imported: str) -> str | None:
    """Why ``importer`` may not import ``imported``, or None."""
    imported = resolve(imported)
    own, target = layer(importer), layer(imported)
    if own is None or target is None or imported.split(".")[:2] == importer.split(".")[:2]:
        return None
    if target >= own:
        return f"{importer} (layer {own}) imports {imported} (layer {target})"
    stage, other = importer.split(".")[1], imported.split(".")[1]
    if own != COMMAND_LAYER and other in LAYERS and other not in ALLOWED[stage]:
        return f"{stage} may not import {other} ({importer} imports {imported})"
    return None


def test_every_import_points_downwards():
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        importer = module_name(path)
        for line, imported in huatuo_imports(path):
            if problem := violation(importer, imported):
                wrong.append(f"{path.relative_to(ROOT)}:{line}: {problem}")
    assert not wrong, "imports against the layering:\n" + "\n".join(wrong)


def test_the_checker_sees_a_wrong_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from huatuo.training.run import train\n")
    assert huatuo_imports(bad) == [(2, "huatuo.training.run")]
    assert layer("huatuo.training.run") > layer("huatuo.data.prepare")
    assert layer("huatuo.unify.__main__") == COMMAND_LAYER and layer("huatuo.train") == COMMAND_LAYER
    assert violation("huatuo.data.prepare", "huatuo.training.run")  # upwards
    assert violation("huatuo.data.tokens", "huatuo.inference.loading")  # sideways
    assert violation("huatuo.training.export", "huatuo.inference.loading")  # down, but not in the table
    assert violation("huatuo.evaluation.suites", "huatuo.inference.loading") is None
    assert violation("huatuo.train", "huatuo.evaluation.run") is None


def test_every_stage_is_a_subpackage_and_the_root_holds_only_commands():
    stages = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    assert stages == set(LAYERS)
    commands = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__"}
    assert {"train", "prepare", "evaluate", "chat", "plan", "mini"} <= commands <= COMMANDS
