"""Every console script in pyproject.toml names a command function, and the top-level scripts call the same ones."""

from __future__ import annotations

import importlib

import pytest

from tests.helpers import ROOT

tomllib = pytest.importorskip("tomllib")  # Python 3.11+


def test_console_scripts_point_at_the_entry_point_functions():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    expected = {"train", "prepare", "unify", "plan", "evaluate", "chat", "mini", "decontaminate"}
    assert {name.removeprefix("huatuo-") for name in scripts} == expected
    for name, target in scripts.items():
        module, function = target.split(":")
        assert callable(getattr(importlib.import_module(module), function)), name
    tops = (("train.py", "huatuo.train"), ("evaluate.py", "huatuo.evaluate"), ("chat.py", "huatuo.chat"))
    for script, module in tops:
        assert f"from {module} import main" in (ROOT / script).read_text(), script
        assert scripts[f"huatuo-{script.removesuffix('.py')}"] == f"{module}:main"
