"""Schema migrations on SQLite and PostgreSQL: the baselines are create_all's schema, pre-migration
databases are adopted (or left alone when they differ), unknown revisions are refused."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from db_backend import Backend
from sqlalchemy import MetaData, inspect, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from garrison.gateway.auth.apikeys import api_keys
from garrison.gateway.migrations import SCHEMA as GATEWAY
from garrison.identity import tables as identity_tables
from garrison.identity.migrations import SCHEMA as IDENTITY
from garrison.mesh.migrations import SCHEMA as MESH
from garrison.store.db import create_all
from garrison.store.migrations import (
    MigrationError,
    Schema,
    SchemaMismatch,
    schema_diff,
    status,
    upgrade,
)

SCHEMAS = (IDENTITY, GATEWAY, MESH)


def _run(backend: Backend, body: Any) -> Any:
    async def main() -> Any:
        engine = backend.engine()
        try:
            return await body(engine)
        finally:
            await engine.dispose()

    return asyncio.run(main())


async def _table_names(engine: AsyncEngine) -> set[str]:
    async with engine.connect() as connection:
        return set(await connection.run_sync(lambda sync: inspect(sync).get_table_names()))


async def _versions(engine: AsyncEngine, schema: Schema) -> list[str]:
    async with engine.connect() as connection:
        rows = await connection.execute(text(f"SELECT version_num FROM {schema.version_table}"))
        return [row[0] for row in rows]


def test_upgrade_creates_exactly_the_live_tables(backend: Backend) -> None:
    async def body(engine: AsyncEngine) -> None:
        for schema in SCHEMAS:
            assert not (await status(engine, schema)).current
            await upgrade(engine, schema)
            await upgrade(engine, schema)  # at head: nothing to do
            assert await schema_diff(engine, schema) == []
            found = await status(engine, schema)
            assert found.at_head and not found.unversioned and not found.unknown
            assert await _versions(engine, schema) == list(schema.heads())
        names = await _table_names(engine)
        assert {table.name for table in IDENTITY.tables()} <= names
        assert {"api_keys", "garrison_identity_version", "garrison_gateway_version"} <= names

    _run(backend, body)


def test_the_diff_sees_a_schema_that_drifted(backend: Backend) -> None:
    """The emptiness checked above means something: a missing column or index is reported."""

    async def body(engine: AsyncEngine) -> list[Any]:
        await upgrade(engine, IDENTITY)
        async with engine.begin() as connection:
            await connection.execute(text("ALTER TABLE identity_users DROP COLUMN email"))
            await connection.execute(text("DROP INDEX ix_identity_sessions_user_id"))
        return await schema_diff(engine, IDENTITY)

    diff = _run(backend, body)
    kinds = {(entry[0] if isinstance(entry, tuple) else entry[0][0]) for entry in diff}
    assert kinds == {"add_column", "add_index"}


def test_one_component_upgrades_without_the_other(backend: Backend) -> None:
    async def body(engine: AsyncEngine) -> set[str]:
        await upgrade(engine, GATEWAY)
        assert not (await status(engine, IDENTITY)).current
        return await _table_names(engine)

    names = _run(backend, body)
    assert names == {"api_keys", "garrison_gateway_version"}


def test_a_database_created_before_migrations_is_adopted(backend: Backend) -> None:
    async def body(engine: AsyncEngine) -> None:
        await create_all(engine)  # what every release before migrations did at start
        async with engine.begin() as connection:
            await connection.execute(
                text(
                    "INSERT INTO identity_roles (name, scopes, description, created_at, updated_at) "
                    "VALUES ('admin', '[]', 'kept', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
                )
            )
        for schema in SCHEMAS:
            found = await status(engine, schema)
            assert found.unversioned and not found.at_head
            await upgrade(engine, schema)
            assert await _versions(engine, schema) == list(schema.heads())
            assert await schema_diff(engine, schema) == []
        async with engine.connect() as connection:
            kept = (await connection.execute(select(identity_tables.roles.c.description))).scalars().all()
        assert kept == ["kept"]  # adopted, not re-created

    _run(backend, body)


def test_a_partial_pre_migration_database_gets_the_missing_tables(backend: Backend) -> None:
    """An older release created fewer tables; create_all added the missing ones at start, so does this."""

    async def body(engine: AsyncEngine) -> None:
        only = [identity_tables.users, identity_tables.recovery_codes, identity_tables.roles]
        async with engine.begin() as connection:
            await connection.run_sync(lambda sync: identity_tables.metadata.create_all(sync, tables=only))
        await upgrade(engine, IDENTITY)
        assert await schema_diff(engine, IDENTITY) == []
        assert await _versions(engine, IDENTITY) == list(IDENTITY.heads())

    _run(backend, body)


def test_a_different_pre_migration_table_is_left_alone(backend: Backend) -> None:
    async def body(engine: AsyncEngine) -> set[str]:
        async with engine.begin() as connection:
            await connection.execute(text("CREATE TABLE api_keys (id INTEGER PRIMARY KEY, note TEXT)"))
        with pytest.raises(SchemaMismatch, match="api_keys") as caught:
            await upgrade(engine, GATEWAY)
        assert "Nothing was changed" in str(caught.value)
        async with engine.connect() as connection:
            columns = await connection.run_sync(lambda sync: inspect(sync).get_columns("api_keys"))
        assert [column["name"] for column in columns] == ["id", "note"]
        return await _table_names(engine)

    assert _run(backend, body) == {"api_keys"}  # and no version table


def test_a_drifted_pre_migration_database_is_refused_with_the_differences(backend: Backend) -> None:
    async def body(engine: AsyncEngine) -> str:
        await create_all(engine)
        async with engine.begin() as connection:
            await connection.execute(text("ALTER TABLE identity_users DROP COLUMN email"))
        with pytest.raises(SchemaMismatch) as caught:
            await upgrade(engine, IDENTITY)
        assert "garrison_identity_version" not in await _table_names(engine)
        return str(caught.value)

    assert "add_column identity_users email" in _run(backend, body)


def test_a_revision_from_a_newer_release_is_refused(backend: Backend) -> None:
    async def body(engine: AsyncEngine) -> None:
        await upgrade(engine, GATEWAY)
        async with engine.begin() as connection:
            await connection.execute(text("UPDATE garrison_gateway_version SET version_num = 'gateway_9999'"))
        found = await status(engine, GATEWAY)
        assert found.unknown and not found.at_head
        with pytest.raises(MigrationError, match=r"gateway_9999.*does not know"):
            await upgrade(engine, GATEWAY)

    _run(backend, body)


def test_each_baseline_is_frozen_apart_from_the_live_tables() -> None:
    """The baselines define their own tables: a later change to tables.py must not change them."""
    later = {IDENTITY: {"identity_account_locks"}, GATEWAY: set()}  # tables added by later revisions
    for schema, live in ((IDENTITY, identity_tables.clients.metadata), (GATEWAY, api_keys.metadata)):
        baseline = schema.baseline_metadata()
        assert isinstance(baseline, MetaData) and baseline is not live
        assert set(baseline.tables) == {table.name for table in schema.tables()} - later[schema]
