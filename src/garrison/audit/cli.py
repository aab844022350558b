"""`garrison audit ...`: run the collector (`serve`) and search its index (`search`).

``search`` opens the index the config names (SQLite at state_dir/audit/index.db, or ``audit.database``)
read-only in effect and prints a table, or one JSON event per line with ``--json`` (for jq and
scripts). Times: ``--since``/``--until`` take a duration back from now (``15m``, ``2h``, ``7d``) or
an RFC 3339 time (``2026-12-07T10:00:00Z``).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

from garrison.core.commandline import err, load_or_exit, run_server

if TYPE_CHECKING:
    from garrison.audit.search import Found, SearchFilter

__all__ = ["audit_app"]

ConfigOption = Annotated[Path, typer.Option("--config", "-c", help="Path of garrison.yaml.")]

audit_app = typer.Typer(
    help="The audit collector: every component's events, a tamper-evident log, search.",
    no_args_is_help=True,
)


@audit_app.command("serve")
def serve(
    config: ConfigOption = Path("garrison.yaml"),
    ready_file: Annotated[
        Path | None, typer.Option(help="Write the listening addresses here as JSON once serving.")
    ] = None,
) -> None:
    """Run the collector (stop: SIGTERM answers the batches in flight, checkpoints, closes the log)."""
    from garrison.audit.component import serve as serve_collector
    from garrison.telemetry import logging as log

    log.configure("audit")
    run_server(serve_collector, load_or_exit(config, "audit"), ready_file)


def parse_when(value: str, now: float) -> float:
    """``15m`` (that long ago) or an RFC 3339 time -> epoch seconds; ValueError otherwise."""
    from garrison.config.units import parse_duration

    try:
        return now - parse_duration(value)
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"{value!r} is neither a duration (15m, 2h) nor a time (2026-12-07T10:00:00Z)"
        ) from None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()


@audit_app.command("search")
def search(
    config: ConfigOption = Path("garrison.yaml"),
    since: Annotated[str | None, typer.Option(help="From: a duration back (1h) or a time.")] = None,
    until: Annotated[str | None, typer.Option(help="Until (excluded): a duration back or a time.")] = None,
    actor: Annotated[
        str | None, typer.Option(help="ip:1.2.3.4, subject:alice, client:ID or service:NAME.")
    ] = None,
    type_: Annotated[str | None, typer.Option("--type", help="Event type, such as auth.login.")] = None,
    outcome: Annotated[str | None, typer.Option(help="success, failure, denied, error, unknown.")] = None,
    component: Annotated[str | None, typer.Option(help="gateway, identity, mesh, ca, vault, audit.")] = None,
    trace_id: Annotated[
        str | None, typer.Option(help="One trace across components, oldest event first.")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=100_000, help="Most events shown.")] = 100,
    as_json: Annotated[bool, typer.Option("--json", help="One event per line as JSON.")] = False,
) -> None:
    """Search the audit index: the newest matching events first (a trace: in the order it happened)."""
    from garrison.audit.search import SearchFilter, parse_actor

    now = time.time()
    try:
        where = SearchFilter(
            since=parse_when(since, now) if since else None,
            until=parse_when(until, now) if until else None,
            actor=parse_actor(actor) if actor else None,
            type=type_,
            outcome=outcome,
            component=component,
            trace_id=trace_id,
            limit=limit,
        )
    except ValueError as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    found = _run_search(config, where)
    if as_json:
        for item in found:
            typer.echo(item.line)
        return
    _table(found, where)


def _run_search(config: Path, where: SearchFilter) -> list[Found]:
    import asyncio

    from sqlalchemy import inspect

    from garrison.audit.index import index_engine
    from garrison.audit.search import search as run
    from garrison.audit.tables import events

    loaded = load_or_exit(config, "audit")
    assert loaded.config.audit is not None
    if loaded.config.audit.database is None and not (loaded.config.state_dir / "audit" / "index.db").exists():
        err.print("no audit index yet: `garrison audit serve` creates it")
        return []

    async def main() -> list[Found]:
        engine = index_engine(loaded.config)
        try:
            async with engine.connect() as connection:
                present = await connection.run_sync(lambda sync: inspect(sync).has_table(events.name))
            if not present:
                return []  # no index yet: the collector has never started
            return await run(engine, where)
        finally:
            await engine.dispose()

    try:
        return asyncio.run(main())
    except Exception as exc:  # an unreachable database, a damaged file: one line, no traceback
        err.print(f"[red]cannot read the audit index[/red]: {type(exc).__name__}: {str(exc)[:300]}")
        raise typer.Exit(1) from None


def _actor(event: dict[str, Any]) -> str:
    actor = event.get("actor") or {}
    return " ".join(
        f"{kind}:{actor[kind]}" for kind in ("subject", "client", "service", "ip") if kind in actor
    )


def _table(found: list[Found], where: SearchFilter) -> None:
    from rich.table import Table

    title = f"{len(found)} event(s)" + (f" in trace {where.trace_id}" if where.trace_id else "")
    table = Table(title=title, title_justify="left")
    for column in ("time (UTC)", "component", "type", "outcome", "actor", "target", "trace"):
        table.add_column(column, overflow="fold")
    for item in found:
        event = item.event
        table.add_row(
            str(event.get("time", "")).replace("T", " ").rstrip("Z")[:23],
            str(event.get("component", "")),
            str(event.get("type", "")),
            str(event.get("outcome", "")),
            _actor(event),
            str(event.get("target") or ""),
            str(event.get("trace_id") or ""),
        )
    Console(highlight=False).print(table)
