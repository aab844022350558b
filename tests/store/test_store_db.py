"""The SQL store: engine URLs, SQLite file safety, hidden passwords, UTC datetimes; SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import stat
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from db_backend import Backend
from sqlalchemy import Column, Integer, MetaData, Table, select, text
from sqlalchemy.exc import SQLAlchemyError, StatementError

import garrison.gateway.auth.apikeys  # noqa: F401  (registers api_keys on the shared metadata)
from garrison.store.db import UTCDateTime, create_all, make_engine, safe_url


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# -- SQLite by default ---------------------------------------------------------------------------------


def test_default_is_sqlite_in_state_dir_private_and_wal(tmp_path: Path) -> None:
    state_dir = tmp_path / "nested" / "state"

    async def main() -> tuple[str, int]:
        engine = make_engine(None, state_dir)
        try:
            assert engine.url.drivername == "sqlite+aiosqlite"
            await create_all(engine)
            async with engine.begin() as connection:
                await connection.execute(text("CREATE TABLE scratch (x INTEGER)"))
                await connection.execute(text("INSERT INTO scratch VALUES (1)"))
            async with engine.connect() as connection:
                journal = (await connection.execute(text("PRAGMA journal_mode"))).scalar_one()
                busy = (await connection.execute(text("PRAGMA busy_timeout"))).scalar_one()
                wal = state_dir / "garrison.db-wal"
                assert wal.exists() and _mode(wal) == 0o600  # SQLite copies the database file's mode
            return journal, busy
        finally:
            await engine.dispose()

    journal, busy = asyncio.run(main())
    assert journal == "wal"
    assert busy >= 1000
    assert _mode(state_dir) == 0o700
    assert _mode(state_dir / "garrison.db") == 0o600


def test_existing_sqlite_file_is_made_private(tmp_path: Path) -> None:
    database = tmp_path / "garrison.db"
    database.touch(mode=0o644)
    database.chmod(0o644)

    async def main() -> None:
        engine = make_engine(None, tmp_path)
        await engine.dispose()

    asyncio.run(main())
    assert _mode(database) == 0o600


def test_explicit_sqlite_url_gets_the_same_treatment(tmp_path: Path) -> None:
    async def main() -> str:
        engine = make_engine(f"sqlite:///{tmp_path / 'other.db'}", tmp_path / "unused")
        try:
            assert engine.url.drivername == "sqlite+aiosqlite"
            async with engine.connect() as connection:
                return str((await connection.execute(text("PRAGMA journal_mode"))).scalar_one())
        finally:
            await engine.dispose()

    assert asyncio.run(main()) == "wal"
    assert _mode(tmp_path / "other.db") == 0o600


# -- URLs and secrets -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://app:hunter2@db.example:5432/garrison",
        "postgres://app:hunter2@db.example/garrison",
        "postgresql+asyncpg://app:hunter2@db.example/garrison",
    ],
)
def test_postgres_urls_use_asyncpg_and_hide_the_password(url: str, tmp_path: Path) -> None:
    async def main() -> None:
        engine = make_engine(url, tmp_path)  # lazy: nothing connects here
        try:
            assert engine.url.drivername == "postgresql+asyncpg"
            assert engine.url.password == "hunter2"
            for shown in (str(engine.url), repr(engine.url), repr(engine.sync_engine), safe_url(url)):
                assert "hunter2" not in shown
            assert "***" in safe_url(url)
        finally:
            await engine.dispose()

    asyncio.run(main())


@pytest.mark.parametrize(
    "url",
    ["mysql://app:hunter2@db/garrison", "postgresql+psycopg2://app:hunter2@db/x", "::not a url hunter2::"],
)
def test_unusable_urls_are_refused_without_the_password(url: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError) as caught:
        make_engine(url, tmp_path)
    assert "hunter2" not in str(caught.value)
    assert "hunter2" not in safe_url(url)


def test_schema_is_validated(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="schema"):
        make_engine("postgresql://db/x", tmp_path, schema="x; DROP TABLE api_keys")
    with pytest.raises(ValueError, match="PostgreSQL"):
        make_engine(None, tmp_path, schema="garrison")
    with pytest.raises(ValueError, match="in-memory"):
        make_engine("sqlite://", tmp_path)


def test_connection_error_does_not_show_the_password(tmp_path: Path) -> None:
    async def main() -> str:
        engine = make_engine("postgresql://app:hunter2@127.0.0.1:1/garrison", tmp_path)
        try:
            async with engine.connect():
                pass
        except (OSError, SQLAlchemyError) as exc:
            return f"{exc!s} {exc!r}"
        finally:
            await engine.dispose()
        raise AssertionError("connected to port 1?")

    assert "hunter2" not in asyncio.run(main())


def test_failed_statement_errors_hide_bound_values(backend: Backend) -> None:
    async def main() -> str:
        engine = backend.engine()
        try:
            async with engine.connect() as connection:
                await connection.execute(text("SELECT :value FROM no_such_table"), {"value": "s3cr3t-digest"})
        except SQLAlchemyError as exc:
            return str(exc)
        finally:
            await engine.dispose()
        raise AssertionError("the statement should fail")

    message = asyncio.run(main())
    assert "no_such_table" in message
    assert "s3cr3t-digest" not in message


# -- tables and types on both databases -------------------------------------------------------------------


def test_create_all_is_idempotent_and_lands_in_the_schema(backend: Backend) -> None:
    async def main() -> set[str]:
        engine = backend.engine()
        try:
            await create_all(engine)
            await create_all(engine)  # second run: tables exist, nothing to do
            async with engine.connect() as connection:
                if backend.name == "sqlite":
                    query = text("SELECT name FROM sqlite_master WHERE type = 'table'")
                    return set((await connection.execute(query)).scalars())
                query = text("SELECT table_name FROM information_schema.tables WHERE table_schema = :s")
                return set((await connection.execute(query, {"s": backend.schema})).scalars())
        finally:
            await engine.dispose()

    assert "api_keys" in asyncio.run(main())


def test_utc_datetime_round_trips_aware(backend: Backend) -> None:
    table = Table("times", MetaData(), Column("id", Integer, primary_key=True), Column("at", UTCDateTime))
    plus_two = timezone(timedelta(hours=2))
    written = datetime(2030, 1, 2, 5, 4, 5, 123456, tzinfo=plus_two)

    async def main() -> datetime:
        engine = backend.engine()
        try:
            async with engine.begin() as connection:
                await connection.run_sync(table.metadata.create_all)
                await connection.execute(table.insert().values(id=1, at=written))
                with pytest.raises(StatementError):
                    await connection.execute(table.insert().values(id=2, at=datetime(2030, 1, 1)))
            async with engine.connect() as connection:
                read: datetime = (await connection.execute(select(table.c.at))).scalar_one()
                return read
        finally:
            await engine.dispose()

    read = asyncio.run(main())
    assert read == written
    assert read.tzinfo is not None and read.utcoffset() == timedelta(0)
    assert read == datetime(2030, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)
