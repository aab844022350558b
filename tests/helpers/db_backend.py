"""The ``backend`` fixture: SQLite, or a fresh PostgreSQL schema of the test's own, for code on the SQL store.

tests/conftest.py makes the fixture available to every test. A test that takes ``backend`` runs twice: on
SQLite under its ``tmp_path``, and in a new schema on ``GARRISON_TEST_POSTGRES_URL`` that is dropped after the
test (``postgres_url`` skips that run when there is no PostgreSQL, and fails it under CI=true). The fixture
creates no tables; ``Backend.tables`` and ``Backend.run`` do, with ``create_all``, for the tables that the
test module has registered on the shared metadata by importing them.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from garrison.store.db import create_all, make_engine

T = TypeVar("T")


@dataclass(frozen=True)
class Backend:
    """Where a test's tables live: ``name`` is "sqlite" or "postgresql"; only PostgreSQL has a ``schema``."""

    name: str
    url: str | None
    state_dir: Path
    schema: str | None = None

    def engine(self) -> AsyncEngine:
        """A new engine on this backend, with no tables created; the caller disposes of it."""
        return make_engine(self.url, self.state_dir, schema=self.schema)

    @asynccontextmanager
    async def tables(self) -> AsyncIterator[AsyncEngine]:
        """An engine of its own (as another process would have) on created tables, disposed at the end."""
        engine = self.engine()
        try:
            await create_all(engine)
            yield engine
        finally:
            await engine.dispose()

    def run(self, body: Callable[[AsyncEngine], Awaitable[T]]) -> T:
        """Run ``body(engine)`` in a new event loop, on ``tables()``."""

        async def main() -> T:
            async with self.tables() as engine:
                return await body(engine)

        return asyncio.run(main())


async def _execute(url: str, statement: str) -> None:
    engine = make_engine(url, Path("unused"))  # a PostgreSQL URL: no state directory
    try:
        async with engine.begin() as connection:
            await connection.execute(text(statement))
    finally:
        await engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """SQLite in tmp_path, or a fresh PostgreSQL schema of this test's own (dropped at the end)."""
    state_dir = tmp_path / "state"
    if request.param == "sqlite":
        yield Backend("sqlite", None, state_dir)
        return
    url: str = request.getfixturevalue("postgres_url")
    schema = f"garrison_test_{secrets.token_hex(6)}"
    asyncio.run(_execute(url, f"CREATE SCHEMA {schema}"))
    try:
        yield Backend("postgresql", url, state_dir, schema)
    finally:
        asyncio.run(_execute(url, f"DROP SCHEMA {schema} CASCADE"))
