"""``garrison db``: the schema migrations of every component in a config file, for operators.

``garrison db upgrade -c FILE`` brings each component's tables to this release's head (the same
runner, lock and adoption of pre-migration databases as at start, see store/migrations.py), so a
team can migrate in a deploy step and set ``store.migrate_at_start: false``. ``garrison db status``
shows each component's database, current revision and head.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from garrison.core.commandline import load_or_exit

if TYPE_CHECKING:  # the store (SQLAlchemy, Alembic) is imported when a `db` command runs, not by `garrison`
    from sqlalchemy.ext.asyncio import AsyncEngine

    from garrison.config.loader import LoadedConfig
    from garrison.store.migrations import Schema, SchemaStatus

db_app = typer.Typer(
    help="Schema migrations of the SQL databases (identity provider, gateway API keys, mesh CA, vault, "
    "audit index).",
    no_args_is_help=True,
)
out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

ConfigOption = Annotated[
    Path, typer.Option("--config", "-c", help="Path of garrison.yaml.", show_default=True)
]


@dataclass(frozen=True)
class Target:
    """One component's schema and the database the config gives it."""

    schema: Schema
    database: str | None  # None: SQLite in state_dir/garrison.db


def targets(loaded: LoadedConfig) -> list[Target]:
    """Every component of the config that has tables, in a fixed order."""
    from garrison.audit.index import index_database
    from garrison.audit.migrations import SCHEMA as AUDIT
    from garrison.gateway.migrations import SCHEMA as GATEWAY
    from garrison.identity.migrations import SCHEMA as IDENTITY
    from garrison.mesh.migrations import SCHEMA as MESH
    from garrison.vault.migrations import SCHEMA as VAULT

    config = loaded.config
    found = [Target(GATEWAY, config.gateway.api_keys.database)]
    if config.identity is not None:
        found.insert(0, Target(IDENTITY, config.identity.database))
    if config.mesh is not None:
        found.append(Target(MESH, config.mesh.ca.database))
    if config.vault is not None:
        found.append(Target(VAULT, config.vault.database))
    if config.audit is not None:  # its own SQLite file by default (state_dir/audit/index.db)
        found.append(Target(AUDIT, index_database(config)))
    return found


def _load(config: Path) -> LoadedConfig:
    return load_or_exit(config)


async def _each(loaded: LoadedConfig, upgrading: bool) -> list[tuple[Target, str, SchemaStatus]]:
    from garrison.store.db import make_engine, safe_url
    from garrison.store.migrations import status
    from garrison.store.startup import with_retry

    results = []
    for target in targets(loaded):
        engine = make_engine(target.database, loaded.config.state_dir)
        try:
            if upgrading:
                await with_retry(engine, _upgrade(engine, target.schema), loaded.config.store.connect_timeout)
            found = await status(engine, target.schema)
            results.append((target, safe_url(engine.url), found))
        finally:
            await engine.dispose()
    return results


def _upgrade(engine: AsyncEngine, schema: Schema) -> Callable[[], Awaitable[None]]:
    from garrison.store.migrations import upgrade

    async def run() -> None:
        await upgrade(engine, schema)

    return run


def _state(found: SchemaStatus) -> str:
    if found.at_head:
        return "[green]up to date[/green]"
    if found.unversioned:
        return "[yellow]created before migrations (upgrade adopts it)[/yellow]"
    if not found.current:
        return "[yellow]no tables (upgrade creates them)[/yellow]"
    if found.unknown:
        return "[red]unknown revision (from a newer release?)[/red]"
    return "[yellow]behind[/yellow]"


def _render(rows: list[tuple[Target, str, SchemaStatus]], title: str) -> None:
    table = Table(title=title, title_justify="left")
    for column in ("component", "database", "current", "head", "state"):
        table.add_column(column, overflow="fold")  # a database path is read whole or not at all
    for target, database, found in rows:
        table.add_row(
            target.schema.component,
            database,
            ", ".join(found.current) or "-",
            ", ".join(found.heads),
            _state(found),
        )
    out.print(table)


def _run(config: Path, upgrading: bool) -> list[tuple[Target, str, SchemaStatus]]:
    from garrison.store.migrations import MigrationError
    from garrison.store.startup import StoreUnavailable

    loaded = _load(config)
    try:
        return asyncio.run(_each(loaded, upgrading))
    except (MigrationError, StoreUnavailable, ValueError) as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from None


@db_app.command("upgrade")
def db_upgrade(config: ConfigOption = Path("garrison.yaml")) -> None:
    """Bring every component's tables to this release's schema (safe to run while components run)."""
    _render(_run(config, upgrading=True), "Schema upgraded")


@db_app.command("status")
def db_status(
    config: ConfigOption = Path("garrison.yaml"),
    check: Annotated[bool, typer.Option(help="Exit 1 unless every component is at head.")] = False,
) -> None:
    """Show each component's database, its current revision and this release's head."""
    rows = _run(config, upgrading=False)
    _render(rows, "Schema status")
    if check and not all(found.at_head for _target, _database, found in rows):
        raise typer.Exit(1)
