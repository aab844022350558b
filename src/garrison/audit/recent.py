"""The collector's memory of recent event ids: an event sent again is acknowledged, not logged twice.

An emitter resends a batch whose acknowledgement it did not get (the collector was killed after the
fsync, a connection dropped): every event id it resends is usually among the last few thousand
logged. So the window keeps the most recent ``capacity`` ids (oldest forgotten first), and is rebuilt
from the log's tail at start, so a restart does not forget what was logged just before it.

An id can also be *pending*: claimed by a batch whose append has not returned. A second batch carrying
it (a resend racing its original) does not log it again; it waits for the first append's outcome and
answers 503 if that failed, so no copy is ever acknowledged without being durable.

Ids are emitter-controlled text (up to 1 KiB): a long one is kept as a 128-bit digest, so the window's
memory is bounded by ``capacity`` whatever the ids look like.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterable

__all__ = ["DEFAULT_CAPACITY", "Claim", "RecentIds"]

DEFAULT_CAPACITY = 200_000  # about 20 MB; hours of a busy deployment's resends
LONG_ID = 64

# What ``claim`` found: "new" (this batch logs it), "logged" (a duplicate), or the pending append's
# outcome to wait for.
Claim = str | asyncio.Future[bool]


def _key(event_id: str) -> str:
    if len(event_id) <= LONG_ID:
        return event_id
    return hashlib.blake2b(event_id.encode(), digest_size=16).hexdigest()


class RecentIds:
    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        if capacity < 1:
            raise ValueError("the window holds at least one id")
        self.capacity = capacity
        self._logged: dict[str, None] = {}  # insertion-ordered: the first key is the oldest
        self._pending: dict[str, asyncio.Future[bool]] = {}

    def __len__(self) -> int:
        return len(self._logged)

    def remember(self, event_ids: Iterable[str]) -> None:
        """Ids known to be logged (the log's tail at start, the collector's own events)."""
        for event_id in event_ids:
            self._add(_key(event_id))

    def _add(self, key: str) -> None:
        logged = self._logged
        if key in logged:
            return
        logged[key] = None
        if len(logged) > self.capacity:
            del logged[next(iter(logged))]

    def claim(self, event_id: str) -> Claim:
        key = _key(event_id)
        if key in self._logged:
            return "logged"
        pending = self._pending.get(key)
        if pending is not None:
            return pending
        self._pending[key] = asyncio.get_running_loop().create_future()
        return "new"

    def settle(self, event_ids: Iterable[str], durable: bool) -> None:
        """The outcome of the append of ids this batch claimed: logged, or free to be sent again."""
        for event_id in event_ids:
            key = _key(event_id)
            future = self._pending.pop(key, None)
            if durable:
                self._add(key)
            if future is not None and not future.done():
                future.set_result(durable)
