"""Components that start together (``workers: N``, ``garrison up``) migrate the same database at once:
every process succeeds and the schema is created once (PostgreSQL: advisory lock; SQLite: BEGIN
IMMEDIATE). Real processes, lined up on a barrier so their upgrades overlap."""

from __future__ import annotations

import asyncio
import multiprocessing
from multiprocessing.synchronize import Barrier
from pathlib import Path

from db_backend import Backend
from sqlalchemy import text

from garrison.store.db import make_engine

PROCESSES = 4


def _migrate(url: str | None, state_dir: str, schema: str | None, barrier: Barrier) -> None:
    from garrison.gateway.migrations import SCHEMA as GATEWAY
    from garrison.identity.migrations import SCHEMA as IDENTITY
    from garrison.store.migrations import upgrade

    async def main() -> None:
        engine = make_engine(url, Path(state_dir), schema=schema)
        try:
            async with engine.connect():  # connected before the barrier: the upgrades themselves overlap
                barrier.wait(timeout=60)
                await upgrade(engine, IDENTITY)
                await upgrade(engine, GATEWAY)
        finally:
            await engine.dispose()

    asyncio.run(main())


def test_parallel_upgrades_all_succeed_and_migrate_once(backend: Backend) -> None:
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(PROCESSES)
    args = (backend.url, str(backend.state_dir), backend.schema, barrier)
    processes = [context.Process(target=_migrate, args=args) for _ in range(PROCESSES)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=90)
    assert [process.exitcode for process in processes] == [0] * PROCESSES

    async def versions() -> list[str]:
        engine = backend.engine()
        try:
            async with engine.connect() as connection:
                rows = []
                for table in ("garrison_identity_version", "garrison_gateway_version"):
                    rows += (await connection.execute(text(f"SELECT version_num FROM {table}"))).scalars()
                return rows
        finally:
            await engine.dispose()

    assert asyncio.run(versions()) == ["identity_0002", "gateway_0001"]
