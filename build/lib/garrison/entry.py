"""The ``garrison`` command's entry: ``garrison sidecar`` straight to its runner, the rest to cli.py.

Why: a sidecar runs beside every service for as long as the service runs, and the Typer CLI (Typer,
Click, Rich and the command modules) stays resident in it for nothing: about 4 MB per sidecar. So a
``garrison sidecar`` command line that this strict little parser reads completely is run here; any
other (``--help``, an unknown or repeated option, a missing ``--service``) goes to the Typer CLI,
which prints its usual help or usage error. Both paths run the same ``mesh.sidecar.main.run`` and
word a refused config the same way.
"""

from __future__ import annotations

import sys
from pathlib import Path

__all__ = ["main"]

_OPTIONS = {
    "--service": "service",
    "--config": "config",
    "-c": "config",
    "--ready-file": "ready_file",
    "--cert-dir": "cert_dir",
}


def sidecar_arguments(args: list[str]) -> dict[str, str] | None:
    """``garrison sidecar``'s options as given, or None if the Typer CLI should read them."""
    found: dict[str, str] = {}
    index = 0
    while index < len(args):
        option, equals, value = args[index].partition("=")
        name = _OPTIONS.get(option)
        if name is None or name in found or (equals and option == "-c"):
            return None
        if not equals:
            index += 1
            if index == len(args) or args[index].startswith("-"):
                return None
            value = args[index]
        found[name] = value
        index += 1
    return found if "service" in found else None


def run_sidecar(options: dict[str, str]) -> int:
    """What cli.py's ``sidecar`` command does, without the CLI's imports."""
    from garrison.config.problems import ConfigError
    from garrison.mesh.sidecar.main import run

    config = Path(options.get("config", "garrison.yaml"))
    ready, cert_dir = options.get("ready_file"), options.get("cert_dir")
    try:
        return run(
            str(config),
            options["service"],
            str(Path(ready)) if ready else None,
            str(Path(cert_dir)) if cert_dir else None,
        )
    except ConfigError as exc:
        sys.stderr.write(f"cannot start: {exc}\nRun `garrison check -c {config}` for details.\n")
        return 2


def main() -> None:
    if sys.argv[1:2] == ["sidecar"]:
        options = sidecar_arguments(sys.argv[2:])
        if options is not None:
            sys.exit(run_sidecar(options))
    from garrison.cli import main as cli_main

    cli_main()
