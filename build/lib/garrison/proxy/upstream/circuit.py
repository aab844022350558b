"""Per-target circuit breaker: stop sending traffic to an upstream that keeps failing.

The breaker is also the gateway's passive outlier detection: the upstream pool calls
`record_failure` on connect errors, resets, timeouts and 502/503/504 responses, and `record_success`
on anything else. Consecutive failures open the circuit; after `open_for` seconds a limited number of
probe requests are let through (half-open); the first probe outcome closes or re-opens it.

It is a plain synchronous state machine: time comes in as `now` (from `loop.time()` or
`time.monotonic()`), so tests drive it without sleeping and the hot path pays no clock call twice.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable

__all__ = ["CircuitBreaker", "CircuitState"]


class CircuitState(enum.Enum):
    """Where a breaker is; the values are what metrics and logs show."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """Consecutive-failure circuit breaker with a bounded number of half-open probes.

    Outcomes of requests admitted before the breaker opened may still arrive while it is open; they
    are ignored, so stragglers neither extend the open period nor close it early.
    """

    __slots__ = (
        "_consecutive_failures",
        "_failures",
        "_half_open_probes",
        "_on_change",
        "_open_for",
        "_opened_at",
        "_probes_in_flight",
        "_state",
    )

    def __init__(
        self,
        consecutive_failures: int = 5,
        open_for: float = 10.0,
        half_open_probes: int = 1,
        on_change: Callable[[CircuitState], None] | None = None,
    ) -> None:
        if consecutive_failures < 1:
            raise ValueError(f"consecutive_failures must be >= 1, got {consecutive_failures}")
        if not open_for > 0:  # also rejects NaN
            raise ValueError(f"open_for must be > 0 seconds, got {open_for}")
        if half_open_probes < 1:
            raise ValueError(f"half_open_probes must be >= 1, got {half_open_probes}")
        self._consecutive_failures = consecutive_failures
        self._open_for = open_for
        self._half_open_probes = half_open_probes
        self._on_change = on_change
        self._state = CircuitState.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._probes_in_flight = 0

    def __repr__(self) -> str:
        return f"CircuitBreaker(state={self._state.value}, failures={self._failures})"

    @property
    def state(self) -> CircuitState:
        """The current state; OPEN turns into HALF_OPEN only when a request asks (`allow_request`)."""
        return self._state

    def would_allow(self, now: float) -> bool:
        """Whether `allow_request(now)` would return True, without changing any state.

        Balancers use this to filter candidates, so a half-open probe slot is taken only by the
        target a request is finally sent to.
        """
        state = self._state
        if state is CircuitState.CLOSED:
            return True
        if state is CircuitState.OPEN:
            return now >= self._opened_at + self._open_for
        return self._probes_in_flight < self._half_open_probes

    def allow_request(self, now: float) -> bool:
        """Admit a request or not; in HALF_OPEN an admitted request holds a probe slot.

        The slot is given back by `record_success`, `record_failure` or `release_probe`; the caller
        must call exactly one of them for every admitted request.
        """
        state = self._state
        if state is CircuitState.CLOSED:
            return True
        if state is CircuitState.OPEN:
            if now < self._opened_at + self._open_for:
                return False
            self._probes_in_flight = 0
            self._transition(CircuitState.HALF_OPEN)
        if self._probes_in_flight < self._half_open_probes:
            self._probes_in_flight += 1
            return True
        return False

    def record_success(self, now: float) -> None:
        """A request succeeded: a half-open probe closes the circuit; when closed, the streak resets."""
        if self._state is CircuitState.HALF_OPEN:
            self._failures = 0
            self._probes_in_flight = 0
            self._transition(CircuitState.CLOSED)
        elif self._state is CircuitState.CLOSED:
            self._failures = 0

    def record_failure(self, now: float) -> None:
        """A request failed: count it when closed (opening at the threshold); re-open when half-open."""
        if self._state is CircuitState.CLOSED:
            self._failures += 1
            if self._failures >= self._consecutive_failures:
                self._open(now)
        elif self._state is CircuitState.HALF_OPEN:
            self._open(now)

    def release_probe(self) -> None:
        """A half-open probe ended with no verdict (e.g. the client went away): free its slot."""
        if self._state is CircuitState.HALF_OPEN and self._probes_in_flight > 0:
            self._probes_in_flight -= 1

    def retry_after(self, now: float) -> int:
        """Whole seconds (at least 1) until the breaker may admit a probe, for a Retry-After header.

        When it is half-open with every probe slot taken, the answer is 1: the probe will settle soon.
        """
        if self._state is CircuitState.OPEN:
            remaining = self._opened_at + self._open_for - now
            if remaining > 1:
                return math.ceil(remaining)
        return 1

    def _open(self, now: float) -> None:
        self._opened_at = now
        self._failures = 0
        self._probes_in_flight = 0
        self._transition(CircuitState.OPEN)

    def _transition(self, state: CircuitState) -> None:
        # State is updated before the callback so that a callback that raises (it is metrics or
        # logging code) cannot leave the breaker half-way between states.
        self._state = state
        if self._on_change is not None:
            self._on_change(state)
