"""What every component does with its database at start: wait for it, then migrate (or check) its schema.

One policy for all of them (before this, the gateway retried table creation once and the identity
provider not at all): a database that is not reachable yet -- PostgreSQL still starting next to
Garrison in a compose file or a pod, a SQLite file whose write lock another process holds while it
migrates -- is retried with a capped exponential back-off until ``store.connect_timeout`` has passed,
each wait logged; then the start fails with ``StoreUnavailable``, which names the database (password
hidden) and the last error. Errors that waiting cannot fix (a schema that does not match, an unknown
revision, bad SQL or permissions) fail at once.

``store.migrate_at_start`` (default true, as tables were created at start before migrations) makes the
component upgrade its schema; false leaves that to ``garrison db upgrade`` in a deploy step, and the
component only checks that its schema is at this release's head, refusing to start otherwise.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine

from garrison.config.store import StoreConfig
from garrison.store.db import safe_url
from garrison.store.migrations import MigrationError, Schema, status, upgrade
from garrison.telemetry import logging as log

__all__ = ["SchemaNotAtHead", "StoreUnavailable", "prepare_schema", "with_retry"]

FIRST_WAIT = 0.1
LONGEST_WAIT = 2.0


class StoreUnavailable(ConnectionError):
    """The database could not be reached (or stayed locked) for ``store.connect_timeout``."""


class SchemaNotAtHead(MigrationError):
    """``migrate_at_start: false`` and the schema is not at this release's head."""


def _retryable(exc: BaseException) -> bool:
    if isinstance(exc, MigrationError):
        return False
    if isinstance(exc, OperationalError | InterfaceError | OSError | TimeoutError):
        return True  # refused, reset, starting up, "database is locked"
    return isinstance(exc, DBAPIError) and exc.connection_invalidated


async def with_retry(
    engine: AsyncEngine,
    what: Callable[[], Awaitable[None]],
    timeout: float,
    *,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Run ``what`` until it succeeds, retrying while the database is unreachable, for ``timeout`` s.

    ``sleep`` and ``clock`` are the test's hooks (no real waiting in tests)."""
    deadline = clock() + timeout
    wait = FIRST_WAIT
    while True:
        try:
            await what()
            return
        except Exception as exc:
            if not _retryable(exc):
                raise
            left = deadline - clock()
            database = safe_url(engine.url)
            if left <= 0:
                raise StoreUnavailable(
                    f"the database {database} was not reachable within {timeout:g} s: "
                    f"{type(exc).__name__}: {_first_line(exc)}"
                ) from exc
            log.warn("store.waiting", database=database, error=f"{type(exc).__name__}: {_first_line(exc)}")
            await sleep(min(wait, left))
            wait = min(wait * 2, LONGEST_WAIT)


async def prepare_schema(
    engine: AsyncEngine, schema: Schema, store: StoreConfig, *, config_file: str = "FILE"
) -> None:
    """At a component's start: bring its schema to head, or check it is there (``migrate_at_start``)."""

    async def migrate() -> None:
        await upgrade(engine, schema)

    async def check() -> None:
        found = await status(engine, schema)
        if not found.at_head:
            if found.current:
                state = "at " + ", ".join(found.current)
            else:
                state = "from before migrations" if found.unversioned else "not created"
            raise SchemaNotAtHead(
                f"the {schema.component} schema is {state}, this release needs "
                f"{', '.join(found.heads)}; run `garrison db upgrade -c {config_file}` "
                "(store.migrate_at_start is false)"
            )

    await with_retry(engine, migrate if store.migrate_at_start else check, store.connect_timeout)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""
