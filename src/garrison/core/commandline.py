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
    from garrison.config.shapes import AdminShape

__all__ = ["admin_call", "err", "load_or_exit", "run_server"]

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


def admin_call(
    admin: AdminShape,
    token: str,
    config_dir: Path,
    request: tuple[str, str, dict[str, str]],
    what: str,
) -> dict[str, Any]:
    """One call ``(method, path, query)`` to a running component's admin listener ``admin`` with the
    admin ``token``; exits 1 with what to do when it refuses or is down, 2 when it has no fixed port.
    ``what`` names the listener in messages ("gateway", "collector")."""
    import json
    import urllib.error
    import urllib.parse
    import urllib.request

    from garrison.admin.auth import admin_client_context
    from garrison.config.addresses import parse_listen

    method, path, query = request
    host, port = parse_listen(admin.listen)
    if port == 0:
        err.print(f"the {what}'s admin listener uses port 0; set a fixed port to reach its admin API.")
        raise typer.Exit(2)
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1", "localhost": "127.0.0.1"}.get(host, host)
    authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    scheme = "https" if admin.tls is not None else "http"
    url = f"{scheme}://{authority}{path}?{urllib.parse.urlencode(query)}"
    call = urllib.request.Request(url, method=method, headers={"Authorization": f"Bearer {token}"})  # noqa: S310
    context = admin_client_context(admin, config_dir)
    try:
        with urllib.request.urlopen(call, timeout=10, context=context) as response:  # noqa: S310 - http(s)
            return dict(json.loads(response.read()))
    except urllib.error.HTTPError as exc:
        detail = json.loads(exc.read() or b"{}").get("error", exc.reason)
        err.print(f"[red]refused[/red] ({exc.code}): {detail}")
        raise typer.Exit(1) from None
    except OSError as exc:
        err.print(f"[red]cannot reach the {what}'s admin API at {authority}[/red]: {exc}. Is it running?")
        raise typer.Exit(1) from None
