"""`garrison audit suppress`, `unsuppress` and `suppressions`: alert suppressions on the running
collector, through its admin listener (`audit.admin.listen`) with the admin token
(`audit.admin.token_file`, else the shared admin token), as `garrison block` does for the gateway."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

__all__ = ["audit_admin_call", "register"]

err = Console(stderr=True, highlight=False, soft_wrap=True)
ConfigOption = Annotated[Path, typer.Option("--config", "-c", help="Path of garrison.yaml.")]


def audit_admin_call(config: Path, method: str, path: str, query: dict[str, str]) -> dict[str, Any]:
    """One call to the collector's admin API; exits with a clear message when it refuses or is down."""
    from garrison.admin.auth import AdminTokenError, admin_token_path, read_admin_token
    from garrison.config.loader import ConfigError, load_config
    from garrison.core.commandline import admin_call

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
    return admin_call(admin, token, loaded.source.parent, (method, path, query), "collector")


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
