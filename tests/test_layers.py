"""The import-linter contracts of pyproject.toml: the project keeps them, and they do bite.

The contracts are read from pyproject.toml, not copied: a generated package tree (``fakegarrison``,
one package per layer entry) is checked against exactly those contracts, first as a clean tree that
must pass, then with one forbidden import at a time that must fail.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.process  # every test here starts real processes or listeners

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = str(Path(sys.executable).with_name("lint-imports"))
FAKE = "fakegarrison"

# Imports every layering allows: down a layer, or across ":" siblings of one layer.
ALLOWED = [
    ("gateway.server", "proxy.http1"),
    ("gateway.server", "tokens.jwt"),
    ("identity.service", "admin.auth"),
    ("identity.service", "pki.kek"),
    ("admin.auth", "web.simplehttp"),
    ("web.simplehttp", "proxy.http1"),
    ("tokens.revocations", "store.shared_set"),
    ("store.shared_set", "telemetry.logging"),
    ("pki.tls", "config.model"),
    ("config.model", "uri.normalize"),  # the URI grammar is a foundation beside config
    ("proxy.http1", "uri.normalize"),
    ("cli", "gateway.server"),
    ("supervisor", "demo"),
]


def contracts() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["importlinter"]


def renamed(value: Any) -> Any:
    if isinstance(value, str):
        return re.sub(r"\bgarrison\b", FAKE, value)
    if isinstance(value, list):
        return [renamed(item) for item in value]
    return value


def write_config(path: Path) -> None:
    config = contracts()
    lines = ["[tool.importlinter]"]
    lines += [f"{key} = {json.dumps(renamed(value))}" for key, value in config.items() if key != "contracts"]
    for contract in config["contracts"]:
        lines += ["", "[[tool.importlinter.contracts]]"]
        lines += [f"{key} = {json.dumps(renamed(value))}" for key, value in contract.items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def layer_names() -> list[str]:
    """Every required module of the layers contract (optional, parenthesised ones are left out)."""
    (layers,) = [contract for contract in contracts()["contracts"] if contract["type"] == "layers"]
    names = []
    for layer in layers["layers"]:
        names += [name.strip() for name in re.split(r"[:|]", layer) if not name.strip().startswith("(")]
    return names


def ignored_imports() -> list[tuple[str, str]]:
    """The contract's ignore_imports, as (importer, imported) relative to the root package."""
    pairs = []
    for contract in contracts()["contracts"]:
        for line in contract.get("ignore_imports", []):
            importer, imported = (side.strip().removeprefix("garrison.") for side in line.split("->"))
            pairs.append((importer, imported))
    return pairs


def add_import(root: Path, importer: str, imported: str) -> None:
    """Make module ``importer`` (dotted, relative to the root package) import ``imported``."""
    for name in (importer, imported):
        parts = name.split(".")
        for depth in range(1, len(parts) + 1):
            package = root.joinpath(*parts[:depth])
            package.mkdir(exist_ok=True)
            (package / "__init__.py").touch()
    module = root.joinpath(*importer.split(".")) / "__init__.py"
    with module.open("a", encoding="utf-8") as handle:
        handle.write(f"import {FAKE}.{imported}\n")


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / FAKE
    root.mkdir()
    (root / "__init__.py").touch()
    for name in layer_names():
        if name == "__main__":
            (root / "__main__.py").write_text(f"import {FAKE}.cli\n", encoding="utf-8")
            continue
        (root / name).mkdir()
        (root / name / "__init__.py").touch()
    for importer, imported in ALLOWED + ignored_imports():
        add_import(root, importer, imported)
    write_config(tmp_path / "importlinter.toml")
    return tmp_path


def lint_imports(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [LINT_IMPORTS, "--no-cache", *args],
        cwd=cwd,
        env={"PYTHONPATH": str(cwd), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_project_keeps_its_contracts() -> None:
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_a_clean_tree_keeps_the_contracts(tree: Path) -> None:
    result = lint_imports(tree, "--config", "importlinter.toml")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("importer", "imported", "contract"),
    [
        ("identity.service", "gateway.server", "No component imports another"),  # sideways, components
        ("gateway.server", "identity.service", "No component imports another"),
        ("config.model", "gateway.server", "Layers"),  # a foundation importing a component
        ("config.model", "proxy.http1", "Layers"),  # a foundation importing the proxy core
        ("uri.normalize", "proxy.http1", "Layers"),  # the grammar below the proxy never imports it
        ("store.db", "tokens.jwt", "Layers"),  # a foundation importing a shared package
        ("tokens.jwt", "identity.keys", "Layers"),  # a shared package importing a component
        ("gateway.server", "cli", "Layers"),  # a component importing an entry point
    ],
)
def test_a_forbidden_import_breaks(tree: Path, importer: str, imported: str, contract: str) -> None:
    add_import(tree / FAKE, importer, imported)
    result = lint_imports(tree, "--config", "importlinter.toml")
    assert result.returncode != 0, result.stdout
    broken = [line for line in result.stdout.splitlines() if " BROKEN" in line]
    assert any(line.startswith(contract) for line in broken), result.stdout
    assert f"{FAKE}.{importer} -> {FAKE}.{imported}" in result.stdout
