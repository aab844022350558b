"""What the intake does with one authenticated batch, apart from HTTP: validate, deduplicate, log, answer.

``Collector.submit(origin, body)`` is the whole contract of ``POST /v1/events`` once the credential
is checked (audit/intake.py is the socket side): each line is read with ``Event.from_json`` (a bad
line is reported back by index and never retried), its ``origin`` replaced by the authenticated
channel, ids already logged are counted as duplicates, and the new events are appended to the log.
The answer is 200 only once ``EventLog.append`` has returned, i.e. the events are fsync'd; concurrent
batches share that fsync (the log's group commit), so this code never serialises batches itself.
When the append fails nothing of the batch is acknowledged: 503, and the emitter keeps it.

``append`` is the ``Appender`` (audit/pipeline.py) for the collector's own events (alerts, responses):
the same log, metrics and stages, without the intake's checks.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Final, Protocol

from garrison.audit.feeder import StageFeeder
from garrison.audit.metrics import CollectorMetrics
from garrison.audit.pipeline import LoggedEvent
from garrison.audit.recent import RecentIds
from garrison.events.schema import Event, EventError
from garrison.telemetry import logging as log

__all__ = ["MAX_LINES", "BatchAnswer", "Collector", "EventStore", "LogUnavailable"]

MAX_LINES: Final = 10_000


class EventStore(Protocol):
    """What the collector needs of audit/log.py's ``EventLog``."""

    def size(self) -> int: ...

    async def read(self, start: int, limit: int) -> list[LoggedEvent]: ...

    async def append(self, events: list[Event]) -> list[LoggedEvent]: ...


class LogUnavailable(Exception):
    """The log could not take the collector's own events (the message says why)."""


@dataclass(frozen=True, slots=True)
class BatchAnswer:
    status: int
    payload: dict[str, Any]


@dataclass
class _Batch:
    new: list[Event] = field(default_factory=list)
    waits: list[asyncio.Future[bool]] = field(default_factory=list)
    duplicates: int = 0
    rejected: list[dict[str, Any]] = field(default_factory=list)


class Collector:
    def __init__(
        self, store: EventStore, metrics: CollectorMetrics, feeder: StageFeeder, recent: RecentIds
    ) -> None:
        self.store = store
        self.metrics = metrics
        self.feeder = feeder
        self.recent = recent
        self.last_failure: str | None = None  # why the last append failed; None once one succeeds

    async def remember_tail(self) -> None:
        """Rebuild the recent-id window from the log's last entries (at start)."""
        size = self.store.size()
        start = max(0, size - self.recent.capacity)
        while start < size:
            entries = await self.store.read(start, min(10_000, size - start))
            if not entries:
                break
            self.recent.remember(entry.event.id for entry in entries)
            start = entries[-1].seq + 1

    async def submit(self, origin: str, body: bytes) -> BatchAnswer:
        lines = body.split(b"\n")
        if lines and not lines[-1]:
            lines.pop()  # the body's final newline
        if len(lines) > MAX_LINES:
            self.metrics.reject("too_large")
            return BatchAnswer(413, {"error": f"a batch is at most {MAX_LINES} lines"})
        batch = self._read(origin, lines)
        if batch.rejected:
            self.metrics.reject("invalid", len(batch.rejected))
        if batch.new:
            try:
                await self._log(batch.new, wait=True)
            except Exception as exc:  # whatever failed, nothing of the batch is acknowledged
                return self._unavailable(exc)
        for waiting in batch.waits:  # a resent copy of an id another batch was logging
            if await waiting:
                batch.duplicates += 1
            else:
                return self._unavailable(None)
        if batch.duplicates:
            self.metrics.duplicates.inc(batch.duplicates)
        payload = {"accepted": len(batch.new), "duplicates": batch.duplicates, "rejected": batch.rejected}
        return BatchAnswer(200, payload)

    def _read(self, origin: str, lines: list[bytes]) -> _Batch:
        batch = _Batch()
        for index, raw in enumerate(lines):
            line = raw[:-1] if raw.endswith(b"\r") else raw
            if not line.strip():
                continue
            try:
                event = replace(Event.from_json(line), origin=origin)
            except (EventError, TypeError) as exc:
                batch.rejected.append({"line": index, "error": str(exc)})
                continue
            claim = self.recent.claim(event.id)
            if claim == "new":
                batch.new.append(event)
            elif claim == "logged":
                batch.duplicates += 1
            elif isinstance(claim, asyncio.Future):
                batch.waits.append(claim)
        return batch

    async def _log(self, events: list[Event], wait: bool) -> list[LoggedEvent]:
        ids = [event.id for event in events]
        started = time.perf_counter()
        try:
            logged = await self.store.append(events)
        except BaseException:
            self.recent.settle(ids, durable=False)
            raise
        self.recent.settle(ids, durable=True)
        self.last_failure = None
        self.metrics.commit_seconds.observe(time.perf_counter() - started)
        self.metrics.logged(logged, self.store.size())
        await self.feeder.deliver(logged, wait=wait)
        return logged

    def _unavailable(self, exc: Exception | None) -> BatchAnswer:
        if exc is not None:
            self.last_failure = f"the log cannot be written ({type(exc).__name__})"
            log.error("audit.log.append_failed", error=type(exc).__name__, message=str(exc)[:200])
        self.metrics.reject("unavailable")
        return BatchAnswer(503, {"error": self.last_failure or "the log cannot be written"})

    async def append(self, events: list[Event]) -> list[LoggedEvent]:
        """The Appender: the collector's own events, durable on return; LogUnavailable otherwise."""
        if not events:
            return []
        for event in events:
            self.recent.claim(event.id)
        try:
            return await self._log(events, wait=False)
        except Exception as exc:
            self.last_failure = f"the log cannot be written ({type(exc).__name__})"
            raise LogUnavailable(self.last_failure) from exc


def entries_between(entries: Sequence[LoggedEvent], start: int) -> Sequence[LoggedEvent]:
    """The part of ``entries`` (consecutive, in log order) from sequence number ``start`` on."""
    if not entries or entries[0].seq >= start:
        return entries
    return entries[max(0, start - entries[0].seq) :]
