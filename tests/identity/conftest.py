"""Identity tests run on SQLite and on a fresh PostgreSQL schema each (as in tests/store/test_store_db.py)."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

import garrison.identity.tables  # noqa: F401  (registers the identity tables on the shared metadata)
from garrison.store.db import create_all, make_engine

T = TypeVar("T")


@dataclass
class Backend:
    name: str
    url: str | None
    state_dir: Path
    schema: str | None = None

    def engine(self) -> AsyncEngine:
        return make_engine(self.url, self.state_dir, schema=self.schema)

    def run(self, body: Callable[[AsyncEngine], Awaitable[T]]) -> T:
        """Run ``body(engine)`` in a new event loop, on freshly created tables, and dispose of the engine."""

        async def main() -> T:
            engine = self.engine()
            try:
                await create_all(engine)
                return await body(engine)
            finally:
                await engine.dispose()

        return asyncio.run(main())


async def _postgres(url: str, statement: str) -> None:
    engine = make_engine(url, Path("unused"))
    try:
        async with engine.begin() as connection:
            await connection.execute(text(statement))
    finally:
        await engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """SQLite in tmp_path, or a fresh PostgreSQL schema of this test's own (dropped at the end)."""
    if request.param == "sqlite":
        yield Backend("sqlite", None, tmp_path / "state")
        return
    url: str = request.getfixturevalue("postgres_url")
    schema = f"garrison_test_{secrets.token_hex(6)}"
    asyncio.run(_postgres(url, f"CREATE SCHEMA {schema}"))
    try:
        yield Backend("postgresql", url, tmp_path / "state", schema)
    finally:
        asyncio.run(_postgres(url, f"DROP SCHEMA {schema} CASCADE"))
