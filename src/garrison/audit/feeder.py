"""Handing durable batches to the ``AfterCommit`` stages (the index, detection) in log order.

Concurrent batches share one fsync (the log's group commit), so their appends return together and
their intake tasks resume in whatever order the loop picks; the stages must see entries in log order.
``deliver`` files each batch under its first sequence number and moves runs that continue the last
delivered one to the ready queue; one task feeds the stages from there, merging the ready batches
into one call (the index writes them with one executemany).

Backpressure: an intake request waits in ``deliver`` while more than ``max_backlog`` entries are
waiting for the stages, so a slow stage slows the emitters (who keep their batches) instead of
growing memory. The collector's own events (alerts, responses) do not wait: a stage that raises an
alert must not wait for itself.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Sequence

from garrison.audit.pipeline import AfterCommit, LoggedEvent
from garrison.telemetry import logging as log

__all__ = ["MAX_BACKLOG", "MERGE_MAX", "StageFeeder"]

MAX_BACKLOG = 100_000  # entries durable but not yet through the stages
MERGE_MAX = 20_000  # most entries handed to the stages in one call


class StageFeeder:
    def __init__(self, stages: Sequence[AfterCommit], next_seq: int, max_backlog: int = MAX_BACKLOG) -> None:
        self.stages = stages
        self.max_backlog = max_backlog
        self._next = next_seq  # the first sequence number not yet moved to the ready queue
        self._waiting: dict[int, Sequence[LoggedEvent]] = {}  # first seq -> batch, ahead of a gap
        self._ready: deque[Sequence[LoggedEvent]] = deque()
        self._backlog = 0
        self._through = next_seq  # entries of the log every stage has been handed
        self._changed = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None

    @property
    def backlog(self) -> int:
        return self._backlog

    @property
    def through(self) -> int:
        """Log entries (from the first) every stage has been handed: once it equals the log's size,
        everything logged is indexed and has been through detection."""
        return self._through

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="audit-stages")

    async def deliver(self, entries: Sequence[LoggedEvent], wait: bool = True) -> None:
        """Queue a durable batch for the stages; with ``wait``, return once the backlog has room."""
        if not entries:
            return
        async with self._changed:
            self._waiting[entries[0].seq] = entries
            self._backlog += len(entries)
            while self._next in self._waiting:
                batch = self._waiting.pop(self._next)
                self._ready.append(batch)
                self._next += len(batch)
            self._changed.notify_all()
            if wait:
                await self._changed.wait_for(lambda: self._backlog <= self.max_backlog)

    async def _run(self) -> None:
        while True:
            async with self._changed:
                await self._changed.wait_for(lambda: bool(self._ready))
                merged: list[LoggedEvent] = []
                while self._ready and len(merged) < MERGE_MAX:
                    merged.extend(self._ready.popleft())
            for stage in self.stages:
                try:
                    await stage.committed(merged)
                except Exception as exc:  # a stage must not raise; one that does must not stop the others
                    log.error("audit.stage.failed", stage=type(stage).__name__, error=type(exc).__name__)
            async with self._changed:
                self._backlog -= len(merged)
                self._through = merged[-1].seq + 1
                self._changed.notify_all()

    async def flush(self) -> None:
        """Wait until every batch delivered so far has been through the stages."""
        async with self._changed:
            await self._changed.wait_for(lambda: self._backlog == 0 or self._task is None)

    async def close(self) -> None:
        """After ``flush``: stop the feeding task."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
