"""The search index: an ``AfterCommit`` stage that copies each durable batch into ``audit_events``.

The log is the record; the index is derived from it, so it is written without an fsync of its own
(SQLite ``synchronous=NORMAL`` in WAL mode) and never acknowledged to anyone. What it has is always a
prefix of the log: ``next_seq`` is one past its highest row. At start ``catch_up`` reads the log from
there to its end (after a crash, a lost index file, a PostgreSQL outage); during the run a batch that
does not start at ``next_seq`` (a failed write left a gap) is preceded by the missing entries, read
from the log. So a failure costs a delay, never a hole.

SQLite at ``state_dir/audit/index.db`` by default (a file of its own: the collector's write load does
not contend with other components' tables), PostgreSQL when ``audit.database`` is set.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import event as sa_event
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from garrison.audit.pipeline import LoggedEvent, LogReader
from garrison.audit.tables import events
from garrison.store.db import dialect_insert, make_engine
from garrison.telemetry import logging as log

if TYPE_CHECKING:
    from garrison.config.assembly import GarrisonConfig

__all__ = ["EventIndex", "index_database", "index_engine", "row_of"]

READ_CHUNK = 5_000
WRITE_CHUNK = 5_000


def index_database(config: GarrisonConfig) -> str:
    """The index's database URL: ``audit.database``, else SQLite at state_dir/audit/index.db."""
    assert config.audit is not None
    if config.audit.database is not None:
        return config.audit.database
    return f"sqlite+aiosqlite:///{Path(config.state_dir).resolve() / 'audit' / 'index.db'}"


def index_engine(config: GarrisonConfig) -> AsyncEngine:
    """An engine on the index; on SQLite commits do not wait for the disk (see the module docstring)."""
    engine = make_engine(index_database(config), config.state_dir)
    if engine.dialect.name == "sqlite":

        @sa_event.listens_for(engine.sync_engine, "connect")
        def _no_sync(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            try:
                cursor.execute("PRAGMA synchronous=NORMAL")  # in WAL mode: no fsync per commit
            finally:
                cursor.close()

    return engine


def row_of(entry: LoggedEvent) -> dict[str, Any]:
    event = entry.event
    actor = event.actor
    return {
        "seq": entry.seq,
        "id": event.id,
        "time": event.time,
        "component": event.component,
        "type": event.type,
        "outcome": event.outcome,
        "actor_subject": actor.subject,
        "actor_client": actor.client,
        "actor_service": actor.service,
        "actor_ip": actor.ip,
        "target": event.target,
        "trace_id": event.trace_id,
        "request_id": event.request_id,
        "event": entry.line.decode("utf-8", errors="replace"),
    }


class EventIndex:
    """``committed`` is the stage; ``catch_up`` runs at start (and for any gap)."""

    def __init__(self, engine: AsyncEngine, reader: LogReader) -> None:
        self.engine = engine
        self.reader = reader
        self.next_seq = 0
        self.failing: str | None = None  # why the last write failed (readiness says so); None when fine
        self._lock = asyncio.Lock()

    async def load_position(self) -> int:
        async with self.engine.connect() as connection:
            highest = (await connection.execute(select(func.max(events.c.seq)))).scalar()
        self.next_seq = 0 if highest is None else int(highest) + 1
        return self.next_seq

    async def catch_up(self) -> int:
        """Index every logged entry from ``next_seq`` to the log's end; how many were added."""
        async with self._lock:
            return await self._catch_up(self.reader.size())

    async def _catch_up(self, end: int) -> int:
        added = 0
        while self.next_seq < end:
            entries = await self.reader.read(self.next_seq, min(READ_CHUNK, end - self.next_seq))
            if not entries:
                break
            await self._write(entries)
            added += len(entries)
        return added

    async def committed(self, entries: Sequence[LoggedEvent]) -> None:
        if not entries:
            return
        async with self._lock:
            try:
                if entries[0].seq > self.next_seq:
                    await self._catch_up(entries[0].seq)
                fresh = [entry for entry in entries if entry.seq >= self.next_seq]
                if fresh:
                    await self._write(fresh)
            except Exception as exc:  # the stage must not raise: the next batch (or a restart) catches up
                if self.failing is None:
                    log.error("audit.index.write_failed", error=type(exc).__name__, behind_from=self.next_seq)
                self.failing = f"the search index cannot be written ({type(exc).__name__})"

    async def _write(self, entries: Sequence[LoggedEvent]) -> None:
        async with self.engine.begin() as connection:
            insert = dialect_insert(connection.dialect.name)(events).on_conflict_do_nothing(
                index_elements=["seq"]
            )
            for start in range(0, len(entries), WRITE_CHUNK):
                await connection.execute(
                    insert, [row_of(entry) for entry in entries[start : start + WRITE_CHUNK]]
                )
        self.next_seq = entries[-1].seq + 1
        if self.failing is not None:
            log.log("audit.index.recovered", next_seq=self.next_seq)
            self.failing = None
