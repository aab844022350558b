"""In-process rate-limit counters: ``limits``' three strategies, for one worker's memory storage.

Why not ``limits``' ``MemoryStorage``, which the gateway used until issue 12: it is built for many
threads, and the gateway counts on one event loop. Every ``incr`` takes a lock and checks that a
``threading.Timer`` is alive, starting a new thread when the last one (10 ms) has run out, and that
timer scans every key of the storage each time it fires, holding the GIL the event loop needs. In
the gateway's hot-path benchmark a memory-limited request spent a quarter of its time there, most of
it starting threads. It also keeps every key until it expires, with no bound on how many: a flood
from many addresses grew it without limit.

These counters keep ``limits``' semantics, decision for decision (tests/gateway/test_ratelimit_memory.py
runs both side by side on one clock):

- fixed window: a counter per key whose window opens at the key's first hit and lasts ``expiry``
  (``MemoryStorage.incr`` / ``get_expiry``);
- moving window: the timestamps of the last ``limit`` accepted hits; a hit is refused while the
  ``limit``-th newest is still inside the window (``acquire_entry`` / ``get_moving_window``). A ring of
  at most ``limit`` timestamps holds exactly what that rule reads;
- sliding-window counter: counts of the current and the previous epoch-aligned window, the previous
  one weighted by the share of it still inside the sliding window (``acquire_sliding_window_entry``
  / ``get_sliding_window``).

Nothing runs in the background: a key is reset when a hit finds its window over; ``sweep`` (from the
gateway's sweeper) drops keys whose windows are over, a bounded number per call; and a limiter holds
at most ``max_keys`` keys: a new key that finds the table full evicts the oldest (expired ones first),
which at worst lets that identity start a fresh window early. Times are on the limiter's clock.
"""

from __future__ import annotations

from bisect import bisect_right
from itertools import islice
from math import floor

DEFAULT_MAX_KEYS = 100_000
# Keys a sweep looks at: the gateway's sweeper calls it ten times a second, so a table of 100,000
# keys is gone through about every 10 s, at well under a millisecond per call.
SWEEP_BUDGET = 1_000
FULL_SWEEP_BUDGET = 64  # when a new key finds the table full: a little sweeping, then eviction


class FixedWindow:
    __slots__ = ("count", "ends")

    def __init__(self, ends: float) -> None:
        self.count = 0
        self.ends = ends

    def over(self, now: float, expiry: int) -> bool:
        return self.ends <= now


class MovingWindow:
    """The timestamps of the last ``limit`` accepted hits; once full, ``head`` is the oldest."""

    __slots__ = ("head", "times")

    def __init__(self) -> None:
        self.times: list[float] = []
        self.head = 0

    def ordered(self) -> list[float]:
        return self.times[self.head :] + self.times[: self.head]

    def over(self, now: float, expiry: int) -> bool:
        return not self.times or self.times[self.head - 1] <= now - expiry  # the newest has left


class SlidingWindow:
    __slots__ = ("current", "previous", "window")

    def __init__(self, window: int) -> None:
        self.window = window  # the index of the current window: int(now / expiry)
        self.current = 0
        self.previous = 0

    def over(self, now: float, expiry: int) -> bool:
        return self.window < int(now / expiry) - 1  # neither of its windows is counted any more


Entry = FixedWindow | MovingWindow | SlidingWindow


class MemoryCounters:
    """One limiter's counters (one strategy per limiter); every method takes ``now`` from the
    limiter's clock."""

    def __init__(self, limit: int, expiry: int, max_keys: int = DEFAULT_MAX_KEYS) -> None:
        self.limit = limit
        self.expiry = expiry
        self.max_keys = max_keys
        # Front to back: roughly oldest first (a fixed window is re-inserted when it restarts, a
        # sweep sends live keys to the back).
        self.keys: dict[str, Entry] = {}

    def __len__(self) -> int:
        return len(self.keys)

    # -- fixed window ----------------------------------------------------------------------------
    def hit_fixed(self, key: str, now: float) -> tuple[int, float]:
        """Count a hit: (the window's count with it, when the window ends)."""
        keys = self.keys
        entry = keys.get(key)
        if entry is None or entry.over(now, self.expiry):
            if entry is not None:
                del keys[key]  # re-inserted last: the dict stays in the order windows began
            self._make_room(now)
            entry = keys[key] = FixedWindow(now + self.expiry)
        assert isinstance(entry, FixedWindow)
        entry.count += 1
        return entry.count, entry.ends

    # -- moving window ---------------------------------------------------------------------------
    def acquire_moving(self, key: str, now: float) -> bool:
        """Accept and record a hit unless the window already holds ``limit`` of them."""
        entry = self.keys.get(key)
        if entry is None:
            self._make_room(now)
            entry = self.keys[key] = MovingWindow()
        assert isinstance(entry, MovingWindow)
        times, limit = entry.times, self.limit
        if len(times) < limit:
            times.append(now)
            return True
        if times[entry.head] >= now - self.expiry:  # the limit-th newest is still in the window
            return False
        times[entry.head] = now
        entry.head = (entry.head + 1) % limit
        return True

    def moving_window(self, key: str, now: float) -> tuple[float, int]:
        """(when the oldest hit still in the window was counted, how many are); (now, 0) for none."""
        entry = self.keys.get(key)
        if not isinstance(entry, MovingWindow):
            return now, 0
        ordered = entry.ordered()
        first = bisect_right(ordered, now - self.expiry)
        if first == len(ordered):
            return now, 0
        return ordered[first], len(ordered) - first

    # -- sliding-window counter ------------------------------------------------------------------
    def acquire_sliding(self, key: str, now: float) -> bool:
        entry = self.keys.get(key)
        if entry is None:
            self._make_room(now)
            entry = self.keys[key] = SlidingWindow(int(now / self.expiry))
        assert isinstance(entry, SlidingWindow)
        self._roll(entry, now)
        previous, previous_ttl, current, _ = self._sliding_stats(entry, now)
        if floor(previous * previous_ttl / self.expiry + current) + 1 > self.limit:
            return False
        entry.current += 1
        return True

    def sliding_window(self, key: str, now: float) -> tuple[int, float, int, float]:
        """(previous count, seconds until the previous window has slid out, current count, seconds
        until ``limits`` would expire the current counter: two windows after its window opened)."""
        entry = self.keys.get(key)
        if not isinstance(entry, SlidingWindow):
            entry = SlidingWindow(int(now / self.expiry))
        self._roll(entry, now)
        return self._sliding_stats(entry, now)

    def _roll(self, entry: SlidingWindow, now: float) -> None:
        window = int(now / self.expiry)
        if window != entry.window:
            entry.previous = entry.current if window == entry.window + 1 else 0
            entry.current = 0
            entry.window = window

    def _sliding_stats(self, entry: SlidingWindow, now: float) -> tuple[int, float, int, float]:
        expiry = self.expiry
        left = (1 - (now / expiry) % 1) * expiry  # seconds until the current window ends
        return entry.previous, left if entry.previous else 0.0, entry.current, left + expiry

    # -- bounds ----------------------------------------------------------------------------------
    def sweep(self, now: float, budget: int = SWEEP_BUDGET) -> None:
        """Look at up to ``budget`` keys from the oldest: drop those whose windows are over (a hit
        would start them afresh anyway) and send the others to the back, so that the next sweep goes
        on where this one stopped. Bounded, because it runs on the event loop."""
        keys, expiry = self.keys, self.expiry
        for key in list(islice(keys, budget)):
            entry = keys.pop(key)
            if not entry.over(now, expiry):
                keys[key] = entry

    def _make_room(self, now: float) -> None:
        keys = self.keys
        if len(keys) < self.max_keys:
            return
        self.sweep(now, FULL_SWEEP_BUDGET)
        while len(keys) >= self.max_keys:
            del keys[next(iter(keys))]  # the key at the front: its window is the oldest seen
