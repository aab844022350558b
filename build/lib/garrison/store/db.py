"""The SQL store: one async SQLAlchemy engine per process, SQLite by default, PostgreSQL when configured.

``make_engine(None, state_dir)`` opens ``state_dir/garrison.db`` (created 0600, WAL, busy timeout);
``make_engine("postgresql://...", state_dir)`` uses asyncpg. Tables register themselves on the shared
``metadata`` when their module is imported. Components create and change their tables with migrations
(``store/migrations.py``, docs/store.md); ``create_all`` (what they did before) is left for tests and
scratch databases.

Secrets: a URL is only ever rendered with its password hidden (``safe_url``), and engines are created
with ``hide_parameters=True`` so a failing statement's error never carries bound values (key digests,
names) into logs.
"""

from __future__ import annotations

import os
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import DateTime, MetaData, event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, Dialect, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.types import TypeDecorator

metadata = MetaData()

SQLITE_FILENAME = "garrison.db"
SQLITE_BUSY_TIMEOUT_MS = 5000
_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")
_POSTGRES_SCHEMES = {"postgres", "postgresql", "postgresql+asyncpg"}
_SQLITE_SCHEMES = {"sqlite", "sqlite+aiosqlite"}


def safe_url(url: str | URL) -> str:
    """The URL with its password replaced by ``***``, for logs and error messages."""
    try:
        parsed = make_url(url) if isinstance(url, str) else url
    except ArgumentError:
        return "<unparseable database URL>"
    return parsed.render_as_string(hide_password=True)


def make_engine(url: str | None, state_dir: Path, *, schema: str | None = None) -> AsyncEngine:
    """An async engine for ``url``, or for SQLite at ``state_dir/garrison.db`` when ``url`` is None.

    ``schema`` (PostgreSQL only) sets the connection's ``search_path``, so Garrison's tables live in a
    schema of their own; the schema must already exist. Raises ``ValueError`` for an unusable URL.
    """
    if url is None:
        parsed = URL.create("sqlite+aiosqlite", database=str(state_dir / SQLITE_FILENAME))
    else:
        try:
            parsed = make_url(url)
        except ArgumentError:
            raise ValueError("the database URL cannot be parsed (expected postgresql://...)") from None
    if parsed.drivername in _POSTGRES_SCHEMES:
        connect_args: dict[str, Any] = {}
        if schema is not None:
            if not _SCHEMA_NAME.fullmatch(schema):
                raise ValueError(f"invalid schema name {schema!r}")
            connect_args["server_settings"] = {"search_path": schema}
        return create_async_engine(
            parsed.set(drivername="postgresql+asyncpg"),
            connect_args=connect_args,
            hide_parameters=True,
            pool_pre_ping=True,
        )
    if parsed.drivername in _SQLITE_SCHEMES:
        if schema is not None:
            raise ValueError("a schema can only be set for PostgreSQL")
        if not parsed.database or parsed.database == ":memory:":
            raise ValueError("an in-memory SQLite database is not shared between connections; use a file")
        return _sqlite_engine(parsed.set(drivername="sqlite+aiosqlite"))
    raise ValueError(
        f"unsupported database URL {safe_url(parsed)}: use postgresql:// or leave it unset for SQLite"
    )


def _sqlite_engine(url: URL) -> AsyncEngine:
    assert url.database is not None
    path = Path(url.database)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    # Create the file ourselves so it is never world-readable, not even for a moment; SQLite gives its
    # -wal and -shm files the database file's permissions.
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
    os.chmod(path, 0o600)
    engine = create_async_engine(
        url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}, hide_parameters=True
    )

    @event.listens_for(engine.sync_engine, "connect")
    def _configure(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("PRAGMA journal_mode=WAL")  # readers never block the writer
            cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            cursor.execute("PRAGMA foreign_keys=ON")
        finally:
            cursor.close()

    return engine


def dialect_insert(dialect_name: str) -> Any:
    """The dialect's ``insert`` (SQLite or PostgreSQL), which has ``on_conflict_do_update``.

    ``dialect_name`` is ``connection.dialect.name``; anything but ``"postgresql"`` gets SQLite's.
    """
    return postgresql.insert if dialect_name == "postgresql" else sqlite.insert


async def create_all(engine: AsyncEngine) -> None:
    """Create every table registered on ``metadata`` that does not exist yet (tests; components migrate)."""
    async with engine.begin() as connection:
        await connection.run_sync(metadata.create_all)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on both databases (SQLite stores them naive; we re-attach UTC)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime: pass an aware datetime (UTC)")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
