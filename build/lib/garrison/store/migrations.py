"""Schema migrations (Alembic): one history per component, run by one runner, safe to start in parallel.

Why one history per component, not one for the whole store: the identity provider, the gateway (and
later the vault and the audit index) own disjoint tables, are released and deployed on their own, and
may share one database (SQLite at ``state_dir/garrison.db`` by default) or use databases of their own.
A single linear history would tie them: a gateway deployment could not run its migration without the
identity provider's pending ones, and a database holding only the gateway's tables would be stamped
with identity revisions. So each component keeps its revisions next to the tables it owns (e.g.
``garrison/identity/migrations/versions/``), describes them with a ``Schema``, and records its
revision in a version table of its own (``garrison_<component>_version``). This module is the one
runner they all use; it knows nothing about any component's tables.

What ``upgrade`` does, in one transaction per component, under a lock:

- the lock: on PostgreSQL ``pg_advisory_xact_lock`` keyed on the schema and component; on SQLite
  ``BEGIN IMMEDIATE`` (the write lock; SQLite also makes the DDL transactional). A second process
  starting at the same moment waits, then finds the schema at head and does nothing.
- a database created by ``create_all`` before migrations existed (the component's tables there, no
  version table) is adopted: its tables are compared with the baseline revision's; when they match
  (tables the baseline has that are missing are created, as ``create_all`` did), the baseline is
  stamped and later revisions run. A table that differs stops the start with ``SchemaMismatch``:
  nothing is re-created or dropped.
- a revision unknown to this Garrison (the database was upgraded by a newer release) stops the start
  with ``MigrationError`` instead of Alembic's bare "Can't locate revision".

The baseline revision of each history (``down_revision = None``) must expose ``baseline_metadata()``,
the frozen tables it creates, which is what adoption compares against.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.environment import EnvironmentContext
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy import (
    Column,
    Connection,
    ForeignKeyConstraint,
    Index,
    MetaData,
    Table,
    UniqueConstraint,
    event,
    inspect,
    text,
)
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from garrison.store.db import SQLITE_BUSY_TIMEOUT_MS

__all__ = ["MigrationError", "Schema", "SchemaMismatch", "SchemaStatus", "schema_diff", "status", "upgrade"]


class MigrationError(RuntimeError):
    """The schema cannot be brought to this release's head (unknown revision, a failed step)."""


class SchemaMismatch(MigrationError):
    """Existing tables without a version table that are not the baseline: left untouched."""


@dataclass(frozen=True)
class Schema:
    """One component's migration history: its revision scripts and the tables it owns now."""

    component: str  # "identity", "gateway": names the version table
    versions: Path  # the directory of revision scripts
    tables: Callable[[], Sequence[Table]]  # the live table definitions (for diffs)

    @property
    def version_table(self) -> str:
        return f"garrison_{self.component}_version"

    def script(self) -> ScriptDirectory:
        return ScriptDirectory(str(self.versions.parent), version_locations=[str(self.versions)])

    def heads(self) -> tuple[str, ...]:
        return tuple(self.script().get_heads())

    def baseline_metadata(self) -> MetaData:
        script = self.script()
        base = script.get_base()
        assert base is not None, f"{self.component}: no baseline revision in {self.versions}"
        revision = script.get_revision(base)
        assert revision is not None
        metadata: MetaData = revision.module.baseline_metadata()
        return metadata

    def metadata(self) -> MetaData:
        """The component's live tables on a metadata of their own (no other component's tables)."""
        metadata = MetaData()
        for table in self.tables():
            table.to_metadata(metadata)
        return metadata


@dataclass(frozen=True)
class SchemaStatus:
    component: str
    current: tuple[str, ...]  # revisions in the version table; () when none
    heads: tuple[str, ...]  # what this release expects
    unversioned: bool  # tables present, no version table (created before migrations)
    unknown: bool = False  # a current revision this release's scripts do not have

    @property
    def at_head(self) -> bool:
        return set(self.current) == set(self.heads)


async def upgrade(engine: AsyncEngine, schema: Schema) -> None:
    """Bring ``schema`` to its head on ``engine``'s database (see the module docstring)."""
    async with _migration_engine(engine) as migrating, migrating.begin() as connection:
        await _lock(connection, schema)
        await connection.run_sync(_upgrade_sync, schema)


async def status(engine: AsyncEngine, schema: Schema) -> SchemaStatus:
    async with engine.connect() as connection:
        return await connection.run_sync(_status_sync, schema)


async def schema_diff(engine: AsyncEngine, schema: Schema) -> list[Any]:
    """Alembic's autogenerate diff between the database and the component's live tables ([] = in step)."""
    async with engine.connect() as connection:
        return await connection.run_sync(_diff_sync, schema.metadata())


# -- on a sync connection (inside run_sync) --------------------------------------------------------------


def _status_sync(connection: Connection, schema: Schema) -> SchemaStatus:
    context = MigrationContext.configure(connection, opts={"version_table": schema.version_table})
    current = tuple(context.get_current_heads())
    unversioned = not current and bool(_present(connection, schema.baseline_metadata()))
    script = schema.script()
    unknown = any(_unknown(script, revision) for revision in current)
    return SchemaStatus(schema.component, current, schema.heads(), unversioned, unknown)


def _unknown(script: ScriptDirectory, revision: str) -> bool:
    try:
        return script.get_revision(revision) is None
    except CommandError:
        return True


def _upgrade_sync(connection: Connection, schema: Schema) -> None:
    script = schema.script()
    names = set(inspect(connection).get_table_names())
    if schema.version_table not in names:
        baseline = schema.baseline_metadata()
        if _present(connection, baseline):
            _adopt(connection, schema, baseline)

    def steps(current: Any, _context: MigrationContext) -> Any:
        try:
            return script._upgrade_revs("heads", current)
        except CommandError as exc:
            raise MigrationError(
                f"the {schema.component} schema is at revision {current!r}, which this release of "
                f"Garrison does not know (its head: {', '.join(schema.heads())}); was the database "
                f"upgraded by a newer release? ({exc})"
            ) from None

    with EnvironmentContext(Config(), script, fn=steps, destination_rev="heads") as env:
        env.configure(connection=connection, version_table=schema.version_table)
        env.run_migrations()


def _present(connection: Connection, baseline: MetaData) -> list[str]:
    existing = set(inspect(connection).get_table_names())
    return sorted(name for name in baseline.tables if name in existing)


def _adopt(connection: Connection, schema: Schema, baseline: MetaData) -> None:
    """Stamp a database that ``create_all`` made, once its tables are found to be the baseline's."""
    present = set(_present(connection, baseline))
    # Tables the baseline has and the database lacks are what create_all would have added.
    problems = [diff for diff in _diff_sync(connection, baseline) if not _adds_missing(diff, present)]
    if problems:
        details = "; ".join(_describe(diff) for diff in problems[:10])
        raise SchemaMismatch(
            f"the database has {schema.component} tables but no {schema.version_table} table, and they "
            f"differ from the schema Garrison created before migrations: {details}. Nothing was changed."
        )
    baseline.create_all(connection, checkfirst=True)
    base = schema.script().get_base()
    context = MigrationContext.configure(connection, opts={"version_table": schema.version_table})
    context.stamp(schema.script(), base or "base")


def _diff_sync(connection: Connection, metadata: MetaData) -> list[Any]:
    def own(obj: Any, name: str | None, type_: str, reflected: bool, _compare_to: Any) -> bool:
        # Another component's tables (and version tables) share the database: not this diff's business.
        return not (type_ == "table" and reflected and name not in metadata.tables)

    context = MigrationContext.configure(
        connection, opts={"include_object": own, "compare_type": True, "compare_server_default": True}
    )
    return list(compare_metadata(context, metadata))


def _adds_missing(diff: Any, present: set[str]) -> bool:
    """A diff entry that creates a table the database lacks, or an index on such a table."""
    if isinstance(diff, tuple) and diff[0] == "add_table":
        return diff[1].name not in present
    if isinstance(diff, tuple) and diff[0] == "add_index":
        return diff[1].table.name not in present
    return False


def _describe(diff: Any) -> str:
    """``('add_column', None, 'identity_users', Column('email'))`` -> ``add_column identity_users email``."""
    entry = diff[0] if isinstance(diff, list) else diff  # modify_* come as lists of tuples
    words = [str(entry[0])]
    for part in entry[1:4]:
        if isinstance(part, str):
            words.append(part)  # a table or column name
        elif isinstance(part, Table | Column):  # a column comes after its table's name
            words.append(part.name)
        elif isinstance(part, Index | UniqueConstraint | ForeignKeyConstraint):
            table = part.table
            words.append(f"{table.name}.{part.name}" if table is not None else str(part.name))
    return " ".join(words)


# -- locking ---------------------------------------------------------------------------------------------


async def _lock(connection: AsyncConnection, schema: Schema) -> None:
    """Serialise migrators: PostgreSQL takes an advisory lock held until the transaction ends; SQLite
    already holds its write lock (``BEGIN IMMEDIATE``, see ``_migration_engine``)."""
    if connection.dialect.name == "postgresql":
        key = text("SELECT pg_advisory_xact_lock(hashtext('garrison.migrate:' || current_schema() || :c))")
        await connection.execute(key, {"c": ":" + schema.component})


class _migration_engine:
    """The engine to migrate with: ``engine`` itself on PostgreSQL; on SQLite a new one whose
    transactions start with ``BEGIN IMMEDIATE`` (pysqlite's own handling would leave DDL outside the
    transaction and take the write lock late), disposed of at the end."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.own: AsyncEngine | None = None

    async def __aenter__(self) -> AsyncEngine:
        if self.engine.dialect.name != "sqlite":
            return self.engine
        self.own = create_async_engine(self.engine.url, hide_parameters=True)

        @event.listens_for(self.own.sync_engine, "connect")
        def _connect(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.isolation_level = None  # we say when transactions begin
            cursor = dbapi_connection.cursor()
            try:  # as store/db.py's engines do; WAL first, so a new file never starts in rollback mode
                cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
                cursor.execute("PRAGMA journal_mode=WAL")
                cursor.execute("PRAGMA foreign_keys=ON")
            finally:
                cursor.close()

        @event.listens_for(self.own.sync_engine, "begin")
        def _begin(connection: Connection) -> None:
            connection.exec_driver_sql("BEGIN IMMEDIATE")

        return self.own

    async def __aexit__(self, *_exc: object) -> None:
        if self.own is not None:
            await self.own.dispose()
