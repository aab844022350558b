"""What every component's command line does the same way: load the config for a section, run a server.

``garrison ca serve``, ``garrison identity serve``, ``garrison vault`` and ``garrison db`` load
garrison.yaml, print a config error with the command that explains it, and refuse a file without
their section, with the same words and exit code 2; the servers run on uvloop and turn a failure to
bind into one line and exit 2. Imported by command modules only (it brings Typer and Rich, which a
long-lived component such as the sidecar does not load).
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console

if TYPE_CHECKING:
    from garrison.config.loader import LoadedConfig

__all__ = ["err", "load_or_exit", "run_server"]

err = Console(stderr=True, highlight=False, soft_wrap=True)


def load_or_exit(config: Path, section: str | None = None, default: str = "{}") -> LoadedConfig:
    """The loaded file; exit 2 with what to do when it is invalid or lacks ``section``."""
    from garrison.config.loader import ConfigError, load_config

    try:
        loaded = load_config(config)
    except ConfigError as exc:
        err.print(f"[red]{exc}[/red]\nRun `garrison check -c {config}` for details.")
        raise typer.Exit(2) from None
    if section is not None and getattr(loaded.config, section) is None:
        err.print(
            f"[red]{config} has no `{section}` section[/red]; add `{section}: {default}` to use the defaults."
        )
        raise typer.Exit(2)
    return loaded


def run_server(
    serve: Callable[[LoadedConfig, Path | None], Coroutine[Any, Any, int]],
    loaded: LoadedConfig,
    ready_file: Path | None,
) -> None:
    """``serve(loaded, ready_file)`` on uvloop; its exit code, or 2 when a listener cannot be opened."""
    import uvloop

    try:
        code = uvloop.run(serve(loaded, ready_file))
    except OSError as exc:
        err.print(f"[red]cannot start[/red]: {exc}")
        raise typer.Exit(2) from None
    raise typer.Exit(code)
