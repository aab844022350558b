"""Sliding windows over event time, bounded in keys and in entries per key.

Correlation rules count events per key (an account, an address, a service) within a window. The
clock is the events' own time, so a replayed log or a test gives the same answers as live traffic.
Every structure an outsider can grow is capped: at most ``max_keys`` keys (the least recently hit
is evicted first: an attacker spraying addresses evicts old, quiet keys, never a hot one) and at
most ``threshold`` entries per key, since a window that already holds ``threshold`` hits has fired.

Why by hand: the rate limiters the gateway uses (``limits``) count but do not keep which events
counted, and an alert must name its triggering events.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass

from garrison.audit.pipeline import LoggedEvent

__all__ = ["DistinctWindow", "SlidingWindow"]


@dataclass(slots=True)
class _Hits:
    times: deque[float]
    entries: deque[LoggedEvent]


class SlidingWindow:
    """Counts hits per key over the last ``window`` seconds of event time."""

    def __init__(self, threshold: int, window: float, max_keys: int) -> None:
        self.threshold = threshold
        self.window = window
        self.max_keys = max_keys
        self._keys: OrderedDict[str, _Hits] = OrderedDict()

    def __len__(self) -> int:
        return len(self._keys)

    def hit(self, key: str, entry: LoggedEvent) -> list[LoggedEvent] | None:
        """Record a hit; the hits in the window when there are ``threshold`` of them, else None."""
        now = entry.event.time
        hits = self._keys.get(key)
        if hits is None:
            hits = _Hits(deque(), deque())
            self._keys[key] = hits
            if len(self._keys) > self.max_keys:
                self._keys.popitem(last=False)
        else:
            self._keys.move_to_end(key)
        hits.times.append(now)
        hits.entries.append(entry)
        start = now - self.window
        while hits.times and (hits.times[0] < start or len(hits.times) > self.threshold):
            hits.times.popleft()
            hits.entries.popleft()
        return list(hits.entries) if len(hits.times) >= self.threshold else None


class DistinctWindow:
    """Counts distinct values per key (accounts tried from one address) over ``window`` seconds."""

    def __init__(self, threshold: int, window: float, max_keys: int) -> None:
        self.threshold = threshold
        self.window = window
        self.max_keys = max_keys
        self._keys: OrderedDict[str, OrderedDict[str, LoggedEvent]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._keys)

    def hit(self, key: str, value: str, entry: LoggedEvent) -> list[LoggedEvent] | None:
        """Record ``value`` for ``key``; one entry per distinct value when there are ``threshold``."""
        now = entry.event.time
        values = self._keys.get(key)
        if values is None:
            values = OrderedDict()
            self._keys[key] = values
            if len(self._keys) > self.max_keys:
                self._keys.popitem(last=False)
        else:
            self._keys.move_to_end(key)
        values.pop(value, None)
        values[value] = entry  # most recent last: the oldest distinct value is evicted first
        start = now - self.window
        while values:
            oldest = next(iter(values.values()))
            if oldest.event.time >= start and len(values) <= self.threshold:
                break
            values.popitem(last=False)
        return list(values.values()) if len(values) >= self.threshold else None
