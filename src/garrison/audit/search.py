"""``garrison audit search``'s query: filters over the index, apart from the command line.

Filters combine with AND; each uses an index of its own ending in ``time`` (audit/tables.py). A
search returns the newest ``limit`` matches, newest first; a trace search (``trace_id``) returns a
trace's events oldest first, as the request travelled through the components. The index is read
directly (on SQLite its WAL lets a reader in while the collector writes), so a search works whether
the collector runs or not; it shows what the index has, which trails the log by at most the batches
in flight.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Select, select
from sqlalchemy.ext.asyncio import AsyncEngine

from garrison.audit.tables import events

__all__ = ["ACTOR_KINDS", "Found", "SearchFilter", "parse_actor", "search"]

ACTOR_KINDS = {
    "ip": "actor_ip",
    "subject": "actor_subject",
    "client": "actor_client",
    "service": "actor_service",
}
MAX_LIMIT = 100_000


def parse_actor(value: str) -> tuple[str, str]:
    """``ip:1.2.3.4`` -> ("actor_ip", "1.2.3.4"); ValueError for anything else."""
    kind, sep, name = value.partition(":")
    if not sep or kind not in ACTOR_KINDS or not name:
        raise ValueError(f"--actor is KIND:VALUE with KIND one of {', '.join(ACTOR_KINDS)} (got {value!r})")
    return ACTOR_KINDS[kind], name


@dataclass(frozen=True)
class SearchFilter:
    since: float | None = None  # epoch seconds, inclusive
    until: float | None = None  # epoch seconds, exclusive
    actor: tuple[str, str] | None = None  # (column, value) from parse_actor
    type: str | None = None
    outcome: str | None = None
    component: str | None = None
    trace_id: str | None = None
    limit: int = 100

    def statement(self) -> Select[Any]:
        query = select(events.c.seq, events.c.event)
        if self.since is not None:
            query = query.where(events.c.time >= self.since)
        if self.until is not None:
            query = query.where(events.c.time < self.until)
        if self.actor is not None:
            query = query.where(events.c[self.actor[0]] == self.actor[1])
        for column, value in (
            ("type", self.type),
            ("outcome", self.outcome),
            ("component", self.component),
            ("trace_id", self.trace_id),
        ):
            if value is not None:
                query = query.where(events.c[column] == value)
        if self.trace_id is not None:
            query = query.order_by(events.c.time, events.c.seq)
        else:
            query = query.order_by(events.c.time.desc(), events.c.seq.desc())
        return query.limit(max(1, min(self.limit, MAX_LIMIT)))


@dataclass(frozen=True)
class Found:
    seq: int
    event: dict[str, Any]  # the logged event as JSON
    line: str  # the exact logged line


async def search(engine: AsyncEngine, where: SearchFilter) -> list[Found]:
    async with engine.connect() as connection:
        rows = (await connection.execute(where.statement())).all()
    return [Found(int(row.seq), json.loads(row.event), row.event) for row in rows]
