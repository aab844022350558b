"""A history beyond its baseline, as a component's next migration will be written (docs/store.md):
a revision that adds a column runs after the baseline on both databases, and a revision that fails
leaves nothing behind (the whole upgrade is one transaction, on SQLite too)."""

from __future__ import annotations

import asyncio
import textwrap
from pathlib import Path

import pytest
from db_backend import Backend
from sqlalchemy import Column, Integer, MetaData, String, Table, inspect, text
from sqlalchemy.ext.asyncio import AsyncEngine

from garrison.store.migrations import Schema, schema_diff, status, upgrade

BASELINE = """
import sqlalchemy as sa
from alembic import op

revision = "demo_0001"
down_revision = None


def baseline_metadata():
    metadata = sa.MetaData()
    sa.Table("demo_items", metadata, sa.Column("id", sa.Integer, primary_key=True))
    return metadata


def upgrade():
    baseline_metadata().create_all(op.get_bind(), checkfirst=False)
"""

ADD_COLUMN = """
import sqlalchemy as sa
from alembic import op

revision = "demo_0002"
down_revision = "demo_0001"


def upgrade():
    with op.batch_alter_table("demo_items") as batch:  # batch: SQLite rebuilds what it cannot ALTER
        batch.add_column(sa.Column("label", sa.String(40), nullable=False, server_default=""))
"""

FAILING = """
import sqlalchemy as sa
from alembic import op

revision = "demo_0003"
down_revision = "demo_0002"


def upgrade():
    op.create_table("demo_more", sa.Column("id", sa.Integer, primary_key=True))
    raise RuntimeError("step failed half-way")
"""


def _schema(tmp_path: Path, *scripts: str) -> tuple[Schema, Table]:
    versions = tmp_path / "demo_migrations" / "versions"
    versions.mkdir(parents=True)
    for number, script in enumerate(scripts, start=1):
        (versions / f"{number:04d}_step.py").write_text(textwrap.dedent(script))
    live = Table(
        "demo_items",
        MetaData(),
        Column("id", Integer, primary_key=True),
        Column("label", String(40), nullable=False, server_default=text("''")),
    )
    return Schema("demo", versions, lambda: [live]), live


async def _tables(engine: AsyncEngine) -> set[str]:
    async with engine.connect() as connection:
        return set(await connection.run_sync(lambda sync: inspect(sync).get_table_names()))


def test_a_second_revision_runs_after_the_baseline(backend: Backend, tmp_path: Path) -> None:
    schema, _live = _schema(tmp_path, BASELINE, ADD_COLUMN)

    async def main() -> None:
        engine = backend.engine()
        try:
            async with engine.begin() as connection:  # a database at the baseline, with a row
                await connection.run_sync(schema.baseline_metadata().create_all)
                await connection.execute(text("INSERT INTO demo_items (id) VALUES (7)"))
            await upgrade(engine, schema)  # adopts the baseline, then runs demo_0002
            assert (await status(engine, schema)).current == ("demo_0002",)
            assert await schema_diff(engine, schema) == []
            async with engine.connect() as connection:
                rows = (await connection.execute(text("SELECT id, label FROM demo_items"))).all()
            assert [tuple(row) for row in rows] == [(7, "")]
        finally:
            await engine.dispose()

    asyncio.run(main())


def test_a_failing_revision_leaves_nothing_behind(backend: Backend, tmp_path: Path) -> None:
    schema, _live = _schema(tmp_path, BASELINE, ADD_COLUMN, FAILING)

    async def main() -> None:
        engine = backend.engine()
        try:
            with pytest.raises(RuntimeError, match="half-way"):
                await upgrade(engine, schema)
            assert await _tables(engine) == set()  # not even the baseline's table or the version table
        finally:
            await engine.dispose()

    asyncio.run(main())
