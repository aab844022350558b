"""Giving the heap memory of closed connections back to the operating system (glibc's malloc_trim).

Why (issue 7, docs/THREAT_MODEL.md, gateway, denial of service): every TLS client connection
costs uvloop a 256 KiB read buffer plus some 40 KiB of OpenSSL and Python state, all from malloc.
glibc serves them from its heap (its mmap threshold rises past 256 KiB once the first such
buffer is freed) and keeps what is freed: free memory in the middle of the heap goes back to the
system only through ``malloc_trim``. Without it RSS ratchets up to the heap's high-water mark as
each burst of connections touches other free pages. Measured, three rounds of 9,000 TLS
connections (3,000 of them open at once): RSS 215 -> 278 -> 324 MiB while the memory malloc had
in use stayed at 19 MiB; trimmed after each round, 108 -> 109 -> 110 MiB.

So the gateway's sweeper asks a ``HeapTrimmer`` after every sweep: it trims once enough
connections have closed since the last trim, or as soon as none is open, and never more often
than every ``TRIM_INTERVAL`` seconds, since a trim walks the whole heap while the event loop
waits (7 to 11 ms measured on a 670 MiB heap, under 1 ms on a small one).

Only glibc has ``malloc_trim``; with another C library (musl, macOS) there is nothing to call and
the trimmer does nothing. ``MALLOC_ARENA_MAX`` does not matter here: the gateway allocates from one
thread, so from one arena.
"""

from __future__ import annotations

import ctypes
import sys
from collections.abc import Callable

TRIM_AFTER_CLOSED = 1024  # connections closed since the last trim: with ~40 KiB each, ~40 MiB
TRIM_INTERVAL = 2.0  # seconds; bounds the time spent trimming to well under 1% of the loop

Trim = Callable[[int], int]


def glibc_malloc_trim() -> Trim | None:
    """glibc's ``malloc_trim(pad)``, or None when the process's C library has none."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        trim = ctypes.CDLL(None).malloc_trim  # the C library already loaded into this process
    except (OSError, AttributeError):
        return None  # musl has no malloc_trim
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


class HeapTrimmer:
    """Decides when to trim: driven by the sweeper with counts it already has, never on a request."""

    def __init__(
        self,
        trim: Trim | None,
        after_closed: int = TRIM_AFTER_CLOSED,
        interval: float = TRIM_INTERVAL,
    ) -> None:
        self._trim = trim
        self.after_closed = after_closed
        self.interval = interval
        self.trims = 0
        self._closed_at_trim = 0
        self._last_trim = float("-inf")

    @property
    def enabled(self) -> bool:
        return self._trim is not None

    def pending(self, closed_total: int) -> int:
        """Connections closed since the last trim (what a trim could still give back); always 0
        where there is no malloc_trim to call."""
        return closed_total - self._closed_at_trim if self._trim is not None else 0

    def maybe_trim(self, open_now: int, closed_total: int, now: float) -> bool:
        """Trim if enough has closed (or nothing is open) and the last trim is old enough."""
        pending = closed_total - self._closed_at_trim
        if self._trim is None or pending <= 0 or now - self._last_trim < self.interval:
            return False
        if open_now > 0 and pending < self.after_closed:
            return False
        self._trim(0)
        self.trims += 1
        self._closed_at_trim = closed_total
        self._last_trim = now
        return True
