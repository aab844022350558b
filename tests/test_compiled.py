"""The two ways the hot modules run: compiled by mypyc (setup.py) after a normal install, and as plain
Python with GARRISON_PURE_PYTHON=1 (garrison/_purepython.py), each checked in a fresh interpreter.

The compiled check is skipped where the install was meant to be pure Python (GARRISON_NO_COMPILE
or GARRISON_PURE_PYTHON set); otherwise a missing or stale build fails here, with what to run.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import garrison
from garrison._purepython import SourceFinder

ROOT = Path(__file__).resolve().parent.parent

# Reads every hot module's file, the shared library's presence and the build status in one process.
PROBE = """
import importlib, json, sys
import garrison
names = json.loads(sys.argv[1])
files = {name: importlib.import_module(name).__file__ for name in names}
shared = sorted(name for name in sys.modules if name.endswith("__mypyc"))
print(json.dumps({"files": files, "shared": shared, "status": garrison.build_status()}))
"""


def hot_modules() -> list[str]:
    """setup.py's HOT_MODULES, as module names."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "HOT_MODULES":
            paths = ast.literal_eval(node.value)
            return [path.removesuffix(".py").replace("/", ".") for path in paths]
    raise AssertionError("setup.py has no HOT_MODULES")


def probe(**env: str) -> dict[str, object]:
    clean = {k: v for k, v in os.environ.items() if k not in ("GARRISON_PURE_PYTHON", "GARRISON_NO_COMPILE")}
    result = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(hot_modules())],
        env={**clean, **env},
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    answer: dict[str, object] = json.loads(result.stdout)
    return answer


@pytest.mark.process
@pytest.mark.skipif(
    any(os.environ.get(name) for name in ("GARRISON_NO_COMPILE", "GARRISON_PURE_PYTHON")),
    reason="a pure-Python install or run was asked for",
)
def test_a_normal_install_runs_the_hot_modules_compiled() -> None:
    answer = probe()
    files = answer["files"]
    assert isinstance(files, dict)
    interpreted = sorted(name for name, file in files.items() if file.endswith(".py"))
    assert not interpreted, f"{answer['status']}; {len(interpreted)} run as .py. Build them: make compile"
    assert answer["shared"] == ["garrison_hot__mypyc"]
    assert answer["status"] == f"compiled with mypyc: {len(files)} modules"


@pytest.mark.process
def test_garrison_pure_python_loads_every_hot_module_from_its_py_file() -> None:
    answer = probe(GARRISON_PURE_PYTHON="1")
    files = answer["files"]
    assert isinstance(files, dict) and set(files) == set(hot_modules())
    assert all(file.endswith(".py") for file in files.values()), files
    assert answer["shared"] == []  # the compiled library is never even loaded
    assert answer["status"] == "pure Python: GARRISON_PURE_PYTHON is set"


def test_the_source_finder_answers_only_for_garrison_modules_and_never_with_an_extension() -> None:
    finder = SourceFinder()
    package = list(garrison.__path__)
    spec = finder.find_spec("garrison.gateway", package)
    assert spec is not None and spec.origin is not None and spec.origin.endswith("__init__.py")
    spec = finder.find_spec("garrison.uri", package)
    assert spec is not None and spec.submodule_search_locations
    normalize = finder.find_spec("garrison.uri.normalize", spec.submodule_search_locations)
    assert normalize is not None and normalize.origin is not None and normalize.origin.endswith(".py")
    assert finder.find_spec("json", None) is None
    assert finder.find_spec("garrison_hot__mypyc", None) is None
