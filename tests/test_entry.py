"""entry.py: which ``garrison sidecar`` command lines skip the Typer CLI, and that the CLI is skipped."""

from __future__ import annotations

import subprocess
import sys

import pytest

from garrison.entry import sidecar_arguments


def test_the_sidecar_options_in_both_spellings() -> None:
    assert sidecar_arguments(["--service", "orders", "-c", "g.yaml", "--ready-file=r.json"]) == {
        "service": "orders",
        "config": "g.yaml",
        "ready_file": "r.json",
    }
    assert sidecar_arguments(["--config=g.yaml", "--service=orders", "--cert-dir", "d"]) == {
        "config": "g.yaml",
        "service": "orders",
        "cert_dir": "d",
    }


@pytest.mark.parametrize(
    "args",
    [
        [],  # --service is required: the CLI says so
        ["--help"],
        ["--service", "orders", "--help"],
        ["--service", "orders", "--service", "payments"],  # repeated
        ["--service", "orders", "--verbose"],  # unknown
        ["--service"],  # no value
        ["--service", "--config", "g.yaml"],
        ["-c=g.yaml", "--service", "orders"],  # not how Click reads -c
        ["--service", "orders", "extra"],
    ],
)
def test_anything_else_goes_to_the_cli(args: list[str]) -> None:
    assert sidecar_arguments(args) is None


def test_the_sidecar_path_does_not_import_the_cli() -> None:
    code = (
        "import sys; from garrison.entry import sidecar_arguments, run_sidecar; "
        "import garrison.mesh.sidecar.main; "
        "heavy = [m for m in ('typer', 'click', 'rich', 'garrison.cli', 'pydantic', 'yaml', 'cryptography', "
        "'httpx') "
        "if m in sys.modules]; print(heavy)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.strip() == "[]"
