"""Retry budget: retries may add at most a fixed fraction of load on top of the original traffic.

A per-request retry count alone lets a failing upstream receive (1 + retries) times its normal load
exactly when it can least take it. A budget, as in Finagle and Linkerd, caps retries at `ratio` of the
original requests seen in the last `window` seconds, plus a reserve of `min_per_second * window` so
that low-traffic services can still retry at all.

Counts live in per-second buckets in a fixed ring, so every call is O(1) (advancing the ring clears
at most `ceil(window)` buckets) and memory does not grow with traffic.
"""

from __future__ import annotations

import math

__all__ = ["IDEMPOTENT_METHODS", "RetryBudget"]

# RFC 9110 section 9.2.2; POST and PATCH are not retried, since the first attempt may have taken effect.
IDEMPOTENT_METHODS: frozenset[bytes] = frozenset({b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"})

# Absorbs float error in `ratio * requests` (0.29 * 100 == 28.999999999999996).
_EPSILON = 1e-9


class RetryBudget:
    """Retries are allowed only while they stay under `ratio` of recent requests, plus `min_per_second`
    always allowed (Linkerd/Finagle-style budget), over a sliding `window` seconds (default 10).

    Call `record_request` for each original request (not for retries), and `try_spend` before each
    retry. The window slides in whole seconds.
    """

    __slots__ = (
        "_ratio",
        "_requests",
        "_reserve",
        "_retries",
        "_second",
        "_total_requests",
        "_total_retries",
    )

    def __init__(self, ratio: float = 0.2, min_per_second: float = 3.0, window: float = 10.0) -> None:
        if not ratio >= 0:  # also rejects NaN
            raise ValueError(f"retry budget ratio must be >= 0, got {ratio}")
        if not min_per_second >= 0:
            raise ValueError(f"retry budget min_per_second must be >= 0, got {min_per_second}")
        if not 0 < window < 3600:
            raise ValueError(f"retry budget window must be between 0 and 3600 seconds, got {window}")
        size = max(1, math.ceil(window))
        self._ratio = ratio
        self._reserve = min_per_second * window
        self._requests = [0] * size
        self._retries = [0] * size
        self._second: int | None = None
        self._total_requests = 0
        self._total_retries = 0

    def __repr__(self) -> str:
        return f"RetryBudget(requests={self._total_requests}, retries={self._total_retries})"

    def record_request(self, now: float) -> None:
        """Count one original request; each earns `ratio` of a retry for the next `window` seconds."""
        index = self._advance(now)
        self._requests[index] += 1
        self._total_requests += 1

    def try_spend(self, now: float) -> bool:
        """Take one retry from the budget: True (and counted) if within budget, else False."""
        index = self._advance(now)
        allowance = self._reserve + self._ratio * self._total_requests
        if self._total_retries + 1 > allowance + _EPSILON:
            return False
        self._retries[index] += 1
        self._total_retries += 1
        return True

    def _advance(self, now: float) -> int:
        """Move the ring to `now`'s second, clearing buckets that fell out of the window."""
        second = math.floor(now)
        size = len(self._requests)
        last = self._second
        if last is None:
            self._second = second
        elif second > last:
            if second - last >= size:
                for i in range(size):
                    self._requests[i] = 0
                    self._retries[i] = 0
                self._total_requests = 0
                self._total_retries = 0
            else:
                for s in range(last + 1, second + 1):
                    i = s % size
                    self._total_requests -= self._requests[i]
                    self._total_retries -= self._retries[i]
                    self._requests[i] = 0
                    self._retries[i] = 0
            self._second = second
        else:
            second = last  # a clock that stepped back counts in the newest bucket
        return second % size
