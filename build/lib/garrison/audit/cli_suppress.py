"""`garrison audit suppress`, `unsuppress` and `suppressions`: alert suppressions on the running
collector, through its admin listener (`audit.admin.listen`) with the admin token
(`audit.admin.token_file`, else the shared admin token), as `garrison block` does for the gateway."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

__all__ = ["audit_admin_call", "register"]

err = Console(stderr=True, highlight=False, soft_wrap=True)
ConfigOption = Annotated[Path, typer.Option("--config", "-c", help="Path of garrison.yaml.")]


def audit_admin_call(config: Path, method: str, path: str, query: dict[str, str]) -> dict[str, Any]:
    """One call to the collector's admin API; exits with a clear message when it refuses or is down."""
    from garrison.admin.auth import AdminTokenError, admin_client_context, admin_token_path, read_admin_token
    from garrison.config.loader import ConfigError, load_config
    from garrison.config.model import parse_listen

    try:
        loaded = load_config(config)
        audit = loaded.config.audit
        if audit is None:
            err.print(f"[red]{config} has no `audit` section: no collector to ask[/red]")
            raise typer.Exit(2)
        admin = audit.admin
        token_path = Path(admin.token_file) if admin.token_file else admin_token_path(loaded.config)
        token = read_admin_token(token_path)
    except (ConfigError, AdminTokenError) as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    host, port = parse_listen(admin.listen)
    if port == 0:
        err.print("audit.admin.listen uses port 0; set a fixed port to reach the admin API.")
        raise typer.Exit(2)
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1", "localhost": "127.0.0.1"}.get(host, host)
    authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    scheme = "https" if admin.tls is not None else "http"
    url = f"{scheme}://{authority}{path}?{urllib.parse.urlencode(query)}"
    request = urllib.request.Request(url, method=method, headers={"Authorization": f"Bearer {token}"})  # noqa: S310
    context = admin_client_context(admin, loaded.source.parent)
    try:
        with urllib.request.urlopen(request, timeout=10, context=context) as response:  # noqa: S310 - http(s)
            return dict(json.loads(response.read()))
    except urllib.error.HTTPError as exc:
        detail = json.loads(exc.read() or b"{}").get("error", exc.reason)
        err.print(f"[red]refused[/red] ({exc.code}): {detail}")
        raise typer.Exit(1) from None
    except OSError as exc:
        err.print(f"[red]cannot reach the collector's admin API at {authority}[/red]: {exc}. Is it running?")
        raise typer.Exit(1) from None


def _utc(epoch: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(epoch))


def suppress(
    rule: Annotated[
        str | None, typer.Option(help="The rule (such as scanning or sigma:<id>); unset: any.")
    ] = None,
    actor: Annotated[
        str | None, typer.Option(help="ip:ADDRESS, subject:NAME, client:ID or service:NAME; unset: any.")
    ] = None,
    duration: Annotated[str, typer.Option("--for", help="How long: 30m, 1h, 24h (at most 30 days).")] = "1h",
    reason: Annotated[str, typer.Option(help="Why (kept with the suppression and in the audit log).")] = "",
    config: ConfigOption = Path("garrison.yaml"),
) -> None:
    """Stop alerts of a rule, for an actor, or both, until the suppression expires."""
    query = {k: v for k, v in (("rule", rule), ("actor", actor)) if v}
    entry = audit_admin_call(config, "POST", "/suppressions", {**query, "for": duration, "reason": reason})
    s = entry["suppressed"]
    err.print(f"[green]suppressed[/green] rule {s['rule']} for actor {s['actor']} until {_utc(s['until'])}")


def unsuppress(
    rule: Annotated[
        str | None, typer.Option(help="The suppression's rule (unset: the any-rule one).")
    ] = None,
    actor: Annotated[
        str | None, typer.Option(help="The suppression's actor (unset: the any-actor one).")
    ] = None,
    config: ConfigOption = Path("garrison.yaml"),
) -> None:
    """Lift a suppression."""
    query = {k: v for k, v in (("rule", rule), ("actor", actor)) if v}
    lifted = audit_admin_call(config, "DELETE", "/suppressions", query).get("lifted")
    err.print("[green]lifted[/green]" if lifted else "no such suppression")


def suppressions(config: ConfigOption = Path("garrison.yaml")) -> None:
    """List the suppressions in force."""
    from rich.table import Table

    entries = audit_admin_call(config, "GET", "/suppressions", {}).get("suppressions") or []
    table = Table(title=f"{len(entries)} suppression(s)", title_justify="left")
    for column in ("rule", "actor", "until", "reason"):
        table.add_column(column)
    for e in entries:
        table.add_row(e["rule"], e["actor"], _utc(e["until"]), e["reason"])
    Console().print(table)


def register(app: typer.Typer) -> None:
    """Add the suppression commands to the `garrison audit` group."""
    app.command()(suppress)
    app.command()(unsuppress)
    app.command()(suppressions)
