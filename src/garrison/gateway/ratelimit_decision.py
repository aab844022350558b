"""One rate-limit decision and how it is told to the client (RateLimit-* and Retry-After headers).

Apart from ``ratelimit.py`` (which counts, in memory or in Redis) because the answer's shape is the same
whichever storage counted, and the hot path renders it on every limited route.
"""

from __future__ import annotations

import math
import time
from typing import Final, Literal

__all__ = ["Outcome", "RateDecision", "rate_limit_headers", "rate_limit_lines", "sliding_window_stats"]

Outcome = Literal["allowed", "limited", "failed_open", "failed_closed"]


class RateDecision:
    """The outcome of one hit.

    ``allowed`` False with ``storage_error`` False means 429; with ``storage_error`` True it means the
    limit could not be evaluated and the route fails closed (503). ``failed_open`` marks a request
    allowed only because the storage was failing.

    A plain class with ``Final`` fields rather than a frozen dataclass: one is made per hit, and a
    frozen dataclass's ``__init__`` sets each field through ``object.__setattr__`` (and stays
    interpreted Python in the compiled build, setup.py).
    """

    __slots__ = ("allowed", "failed_open", "limit", "remaining", "reset_at", "retry_after", "storage_error")

    def __init__(
        self,
        allowed: bool,
        limit: int,
        remaining: int,
        reset_at: float,
        retry_after: int,
        failed_open: bool = False,
        storage_error: bool = False,
    ) -> None:
        self.allowed: Final = allowed
        self.limit: Final = limit
        self.remaining: Final = remaining
        self.reset_at: Final = reset_at  # epoch seconds when the window (or oldest hit) frees capacity
        self.retry_after: Final = retry_after  # whole seconds, >= 1 when refused, 0 when allowed
        self.failed_open: Final = failed_open
        self.storage_error: Final = storage_error

    def __repr__(self) -> str:
        return (
            f"RateDecision(allowed={self.allowed}, limit={self.limit}, remaining={self.remaining}, "
            f"reset_at={self.reset_at}, retry_after={self.retry_after}, failed_open={self.failed_open}, "
            f"storage_error={self.storage_error})"
        )

    @classmethod
    def counted(cls, allowed: bool, limit: int, remaining: int, reset_at: float, now: float) -> RateDecision:
        """A decision the storage counted: nothing remains once refused, and a refusal says when to retry."""
        if not allowed:
            return cls(False, limit, 0, reset_at, _retry_after(reset_at, now))
        return cls(True, limit, max(0, remaining), reset_at, 0)

    @property
    def outcome(self) -> Outcome:
        if self.storage_error:
            return "failed_open" if self.failed_open else "failed_closed"
        return "allowed" if self.allowed else "limited"


def rate_limit_headers(decision: RateDecision, now: float | None = None) -> list[tuple[bytes, bytes]]:
    """``RateLimit-Limit/Remaining/Reset`` (reset as delta seconds), plus ``Retry-After`` when refused.

    A decision made without the storage carries no counts, so it gets only ``Retry-After`` (refused)
    or nothing (failed open).
    """
    refused = [(b"Retry-After", str(decision.retry_after).encode())] if not decision.allowed else []
    if decision.storage_error:
        return refused
    reset = max(0, math.ceil(decision.reset_at - (time.time() if now is None else now)))
    return [
        (b"RateLimit-Limit", str(decision.limit).encode()),
        (b"RateLimit-Remaining", str(decision.remaining).encode()),
        (b"RateLimit-Reset", str(reset).encode()),
        *refused,
    ]


def rate_limit_lines(decision: RateDecision, now: float | None = None) -> bytes:
    """The same headers as ``rate_limit_headers``, rendered as header lines in one formatting step
    (this runs on every request of a limited route)."""
    refused = b"retry-after: %d\r\n" % decision.retry_after if not decision.allowed else b""
    if decision.storage_error:
        return refused
    reset = max(0, math.ceil(decision.reset_at - (time.time() if now is None else now)))
    return b"ratelimit-limit: %d\r\nratelimit-remaining: %d\r\nratelimit-reset: %d\r\n%s" % (
        decision.limit,
        decision.remaining,
        reset,
        refused,
    )


def _retry_after(reset_at: float, now: float) -> int:
    return max(1, math.ceil(reset_at - now))


def sliding_window_stats(
    limit: int, expiry: int, stats: tuple[int, float, int, float], now: float
) -> tuple[int, float]:
    """(remaining, reset_at) from a sliding-window counter's two windows.

    ``stats`` is (previous count, seconds until the previous window has slid out, current count,
    seconds until the current counter expires). Both storages keep the current counter for two
    windows from its window's start (Redis: its TTL, set to ``2 * expiry`` by the first hit;
    memory: ``limits`` computes the same figure), so the current window ends ``current_ttl -
    expiry`` from now. Not ``current_ttl % expiry``, as ``limits``' ``get_window_stats`` has it:
    that is 0 on the first hit of a window, when the TTL is exactly ``2 * expiry``, and tells
    clients to come back at once (issue 7, item 4).

    Capacity comes back at the earlier of: the previous window's weighted share dropping below
    its current whole number of hits (the weight falls linearly to 0 over the previous window's
    remaining time), and the current window's end (after which its hits weigh less than 1).
    """
    previous, previous_ttl, current, current_ttl = stats
    weighted = previous * previous_ttl / expiry + current
    remaining = max(0, limit - math.floor(weighted))
    if not (previous or current):
        return remaining, now
    previous_in = math.inf
    if previous:
        share = previous * previous_ttl / expiry  # hits the previous window still counts for
        previous_in = (share - math.floor(share)) * expiry / previous
    current_in = max(0.0, current_ttl - expiry) if current else math.inf
    return remaining, now + min(previous_in, current_in)
