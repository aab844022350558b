"""The ``garrison`` command line."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from garrison import __version__

app = typer.Typer(
    help="Garrison: a zero-trust security plane for HTTP microservices, driven by one garrison.yaml.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
err = Console(stderr=True, highlight=False)

ConfigOption = Annotated[
    Path, typer.Option("--config", "-c", help="Path of garrison.yaml.", show_default=True)
]


@app.command()
def check(config: ConfigOption = Path("garrison.yaml")) -> None:
    """Validate a config file: print every problem with the path of the bad key; exit 1 if any."""
    from garrison.config.loader import ConfigError, load_config

    try:
        loaded = load_config(config)
    except ConfigError as exc:
        for problem in exc.problems:
            err.print(f"[red]error[/red] {problem.render(exc.filename)}", soft_wrap=True)
        err.print(f"{len(exc.problems)} problem(s); fix them and run `garrison check -c {config}` again.")
        raise typer.Exit(1) from None
    for warning in loaded.warnings:
        err.print(f"[yellow]warning[/yellow] {warning.render(str(config))}", soft_wrap=True)
    cfg = loaded.config
    err.print(
        f"[green]ok[/green] {config}: {len(cfg.services)} service(s), {len(cfg.routes)} route(s), "
        f"{len(loaded.warnings)} warning(s)"
    )


@app.command()
def schema(
    markdown: Annotated[bool, typer.Option(help="Print the reference as Markdown (docs/config.md).")] = False,
) -> None:
    """Print the JSON Schema of garrison.yaml (for editors and CI), or its Markdown reference."""
    from garrison.config.docs import render_markdown
    from garrison.config.model import GarrisonConfig

    if markdown:
        sys.stdout.write(render_markdown())
    else:
        sys.stdout.write(json.dumps(GarrisonConfig.model_json_schema(), indent=2) + "\n")


@app.command()
def gateway(
    config: ConfigOption = Path("garrison.yaml"),
    ready_file: Annotated[
        Path | None, typer.Option(help="Write the listening addresses here as JSON once serving.")
    ] = None,
) -> None:
    """Run the edge gateway (reload: SIGHUP or edit the file; stop: SIGTERM drains)."""
    from garrison.config.loader import ConfigError
    from garrison.gateway.main import run

    try:
        code = run(str(config), str(ready_file) if ready_file else None)
    except ConfigError as exc:
        err.print(f"[red]cannot start[/red]: {exc}\nRun `garrison check -c {config}` for details.")
        raise typer.Exit(2) from None
    except OSError as exc:
        # Typically the port is taken or a certificate file is unreadable.
        err.print(f"[red]cannot start[/red]: {exc}")
        raise typer.Exit(2) from None
    raise typer.Exit(code)


@app.command()
def up(
    config: ConfigOption = Path("garrison.yaml"),
    demo: Annotated[bool, typer.Option(help="Also run the demo upstream service from examples/.")] = False,
) -> None:
    """Run every configured component as a supervised process; Ctrl-C stops them all."""
    from garrison.supervisor import run_up

    raise typer.Exit(run_up(config, demo=demo, console=err))


@app.command()
def version() -> None:
    """Print Garrison's version."""
    typer.echo(__version__)


def main() -> None:
    app()
