"""What a component does with its database at start: one retry policy while it is unreachable, and
``store.migrate_at_start: false`` (check, do not migrate)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
from db_backend import Backend
from sqlalchemy import text

from garrison.config.store import StoreConfig
from garrison.gateway.migrations import SCHEMA as GATEWAY
from garrison.store.db import make_engine
from garrison.store.migrations import SchemaMismatch, status, upgrade
from garrison.store.startup import LONGEST_WAIT, SchemaNotAtHead, StoreUnavailable, prepare_schema, with_retry


class FakeTime:
    """The retry loop's clock and sleep: sleeping advances the clock, nothing really waits."""

    def __init__(self) -> None:
        self.now = 0.0
        self.waits: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.now += seconds


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A port nothing listens on (bound, never listening: connections are refused while it is held)."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        yield int(holder.getsockname()[1])


def test_an_unreachable_database_is_retried_then_reported(tmp_path: Path, closed_port: int) -> None:
    url = f"postgresql://garrison:pw-not-logged@127.0.0.1:{closed_port}/garrison"
    fake = FakeTime()

    async def main() -> None:
        engine = make_engine(url, tmp_path)
        try:
            await with_retry(
                engine, lambda: upgrade(engine, GATEWAY), 10.0, sleep=fake.sleep, clock=fake.clock
            )
        finally:
            await engine.dispose()

    with pytest.raises(StoreUnavailable) as caught:
        asyncio.run(main())
    message = str(caught.value)
    assert "not reachable within 10 s" in message and "127.0.0.1" in message
    assert "pw-not-logged" not in message
    assert fake.waits[:3] == [0.1, 0.2, 0.4]  # a capped exponential back-off
    assert max(fake.waits) == LONGEST_WAIT
    assert sum(fake.waits) == pytest.approx(10.0)


def test_a_database_that_comes_up_is_used(postgres_url: str, tmp_path: Path) -> None:
    """PostgreSQL "starting": connections to it are dropped until the second wait, then it answers."""
    target = urlsplit(postgres_url)
    waits: list[float] = []

    async def main() -> bool:
        up = asyncio.Event()

        async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await reader.read(65536):
                    writer.write(data)
                    await writer.drain()
            writer.close()

        async def front(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            if not up.is_set():
                writer.close()  # accepted and dropped, as by a server still starting
                return
            upstream = await asyncio.open_connection(target.hostname, target.port or 5432)
            await asyncio.gather(pipe(reader, upstream[1]), pipe(upstream[0], writer))

        async def sleep(seconds: float) -> None:
            waits.append(seconds)
            if len(waits) == 2:
                up.set()

        server = await asyncio.start_server(front, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        url = urlunsplit((target.scheme, f"{target.username}@127.0.0.1:{port}", target.path, "", ""))
        engine = make_engine(url, tmp_path)
        try:
            await with_retry(engine, lambda: status(engine, GATEWAY), 30.0, sleep=sleep)
            return True
        finally:
            await engine.dispose()
            server.close()

    assert asyncio.run(main())
    assert len(waits) == 2


def test_errors_that_waiting_cannot_fix_fail_at_once(backend: Backend) -> None:
    fake = FakeTime()

    async def main() -> None:
        engine = backend.engine()
        try:
            async with engine.begin() as connection:
                await connection.execute(text("CREATE TABLE api_keys (id INTEGER PRIMARY KEY)"))
            await with_retry(
                engine, lambda: upgrade(engine, GATEWAY), 30.0, sleep=fake.sleep, clock=fake.clock
            )
        finally:
            await engine.dispose()

    with pytest.raises(SchemaMismatch):
        asyncio.run(main())
    assert fake.waits == []


def test_migrate_at_start_false_checks_and_refuses(backend: Backend) -> None:
    settings = StoreConfig(migrate_at_start=False, connect_timeout=0)

    async def main() -> None:
        engine = backend.engine()
        try:
            with pytest.raises(SchemaNotAtHead, match=r"garrison db upgrade -c prod\.yaml"):
                await prepare_schema(engine, GATEWAY, settings, config_file="prod.yaml")
            assert not (await status(engine, GATEWAY)).current  # checked, not migrated
            await prepare_schema(engine, GATEWAY, StoreConfig())  # the default migrates
            await prepare_schema(engine, GATEWAY, settings)  # at head now: starts
        finally:
            await engine.dispose()

    asyncio.run(main())
