"""One shipper: follows the log from its saved position and delivers it, batch by batch, in log order.

The loop: wait for entries past the cursor (woken by the collector's commit event, never polling),
take up to ``batch_max`` of them, linger up to ``batch_wait`` for the batch to fill, deliver it, and
only then save the cursor past it. Delivery retries what the receiver did not store, with capped
exponential back-off and jitter, for as long as the receiver stays down: an outage grows the lag and
drops nothing. What a receiver refuses for good (a 400, a refused bulk item, one event too large
even alone) is counted as skipped and logged, the only way an entry is passed over.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from garrison.audit.pipeline import LoggedEvent, LogReader
from garrison.audit.ship.backoff import Backoff
from garrison.audit.ship.cursor import Cursor, CursorFile
from garrison.audit.ship.metrics import ShipperStats
from garrison.audit.ship.receiver import Delivery, ShipError, TooLarge
from garrison.telemetry import logging as log

__all__ = ["Shipper", "Sink"]

# Longest an idle shipper waits before it looks at the log's size by itself: a guard against a commit
# whose wake-up was missed, not the way new entries are found (the collector's event is).
IDLE_RECHECK = 5.0


class Sink(Protocol):
    async def send(self, entries: Sequence[LoggedEvent]) -> Delivery:
        """One request carrying ``entries``; raises ShipError (retry all) or TooLarge (split)."""

    async def aclose(self) -> None: ...


class Shipper:
    def __init__(
        self,
        name: str,
        sink: Sink,
        reader: LogReader,
        wake: asyncio.Event,
        cursor: CursorFile,
        stats: ShipperStats,
        *,
        batch_max: int,
        batch_wait: float,
        backoff: Backoff,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.name, self.sink, self.reader, self.wake = name, sink, reader, wake
        self.cursor, self.stats = cursor, stats
        self.batch_max, self.batch_wait = batch_max, batch_wait
        self.backoff, self._sleep = backoff, sleep

    async def run(self) -> None:
        """Ship forever (until cancelled), from the saved cursor."""
        cursor = await self.cursor.load_checked(self.reader)
        self.stats.position = cursor.next
        while True:
            batch = await self._next_batch(cursor.next)
            await self._deliver(batch, failures=0)
            cursor = Cursor(cursor.next + len(batch), batch[-1].event.id)
            await asyncio.to_thread(self.cursor.save, cursor)
            self.stats.position = cursor.next
            self.stats.oldest_pending = None

    async def _wait_past(self, position: int, timeout: float) -> bool:
        """Wait until the log holds more than ``position`` entries; False on timeout.

        The event is shared by every shipper: each clears it and then checks the size before it
        waits, so a commit between the two is seen by the check, and one during the wait by the wait
        (set() wakes every waiter, whoever clears it next)."""
        while self.reader.size() <= position:
            self.wake.clear()
            if self.reader.size() > position:
                break
            try:
                await asyncio.wait_for(self.wake.wait(), timeout)
            except TimeoutError:
                return self.reader.size() > position
        return True

    async def _next_batch(self, start: int) -> list[LoggedEvent]:
        """Entries from ``start``: at least one, at most batch_max, after lingering up to batch_wait."""
        batch: list[LoggedEvent] = []
        while not batch:
            if await self._wait_past(start, IDLE_RECHECK):
                batch = await self.reader.read(start, self.batch_max)
        self.stats.oldest_pending = batch[0].event.time
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.batch_wait
        while len(batch) < self.batch_max:
            remaining = deadline - loop.time()
            if remaining <= 0 or not await self._wait_past(start + len(batch), remaining):
                break
            batch += await self.reader.read(start + len(batch), self.batch_max - len(batch))
        return batch

    async def _deliver(self, entries: list[LoggedEvent], failures: int) -> int:
        """Until each entry is stored or skipped; returns the failures in a row it ended with."""
        pending = entries
        while pending:
            try:
                result = await self.sink.send(pending)
            except TooLarge:
                return await self._split(pending, failures)
            except ShipError as exc:
                result = Delivery(retry=pending, error=str(exc), retry_after=exc.retry_after)
            self._count(pending, result)
            if not result.retry:
                if failures:
                    log.log("audit.ship.recovered", shipper=self.name, failures=failures)
                return 0
            failures += 1
            self.stats.failures += 1
            delay = self.backoff.delay(failures, result.retry_after)
            if failures & (failures - 1) == 0:  # the 1st, 2nd, 4th, 8th ... failure in a row
                log.warn(
                    "audit.ship.retry",
                    shipper=self.name,
                    entries=len(result.retry),
                    failures=failures,
                    delay=round(delay, 3),
                    error=result.error,
                )
            await self._sleep(delay)
            pending = result.retry
        return failures

    async def _split(self, entries: list[LoggedEvent], failures: int) -> int:
        if len(entries) == 1:
            self._count(entries, Delivery(skipped={"too_large": 1}, error="one event over the size limit"))
            return failures
        half = len(entries) // 2
        failures = await self._deliver(entries[:half], failures)
        return await self._deliver(entries[half:], failures)

    def _count(self, sent: Sequence[LoggedEvent], result: Delivery) -> None:
        skipped = sum(result.skipped.values())
        self.stats.shipped += len(sent) - len(result.retry) - skipped
        for reason, count in result.skipped.items():
            self.stats.skip(reason, count)
        if skipped:
            log.error(
                "audit.ship.skipped",
                shipper=self.name,
                entries=skipped,
                first_seq=sent[0].seq,
                reasons=result.skipped,
                error=result.error,
                message="the receiver refused these events for good: they stay in the audit log only",
            )
