"""Choosing which target of a service gets the next request.

`pick` runs once per request (and once per retry), so it is a single pass with no allocation beyond a
short candidate list. It filters with `Target.available`, which only *asks* the circuit breaker, and
calls `breaker.allow_request` on the one target it returns: a half-open breaker's probe slot is then
taken only by a request that is really sent there. `exclude` is the target a retry just failed on; it
is skipped while any other target can take the request, and used as a last resort otherwise.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Protocol

from garrison.proxy.upstream.target import Target

__all__ = ["BALANCER_KINDS", "Balancer", "LeastRequests", "RoundRobin", "make_balancer"]


class Balancer(Protocol):
    """Picks a target for one request, or None when no target can take it."""

    def pick(self, targets: Sequence[Target], now: float, exclude: Target | None = None) -> Target | None:
        """Return a target whose breaker has admitted the request (slot taken), or None."""
        ...


class RoundRobin:
    """Rotate over the available targets.

    The cursor moves to just after the target picked, so a down target's share goes to whichever
    target follows it in turn rather than always to its neighbour.
    """

    __slots__ = ("_next",)

    def __init__(self) -> None:
        self._next = 0

    def pick(self, targets: Sequence[Target], now: float, exclude: Target | None = None) -> Target | None:
        n = len(targets)
        if n == 0:
            return None
        start = self._next % n
        for i in range(n):
            index = start + i
            if index >= n:
                index -= n
            target = targets[index]
            if target is exclude:
                continue
            if target.available(now) and target.breaker.allow_request(now):
                self._next = index + 1
                return target
        return _fallback(exclude, targets, now)


class LeastRequests:
    """Power of two choices on `in_flight`, as Envoy's LEAST_REQUEST does.

    Two distinct available targets are drawn at random and the less loaded one wins (ties go to the
    first draw, which is random). This avoids the herd that strict least-loaded causes when many
    requests see the same counts, at O(n) filtering plus O(1) choice.
    """

    __slots__ = ("_random",)

    def __init__(self, rng: random.Random | None = None) -> None:
        self._random: Callable[[], float] = (rng or random.Random()).random

    def pick(self, targets: Sequence[Target], now: float, exclude: Target | None = None) -> Target | None:
        candidates = [t for t in targets if t is not exclude and t.available(now)]
        while candidates:
            n = len(candidates)
            if n == 1:
                chosen = candidates[0]
            else:
                i = int(self._random() * n)
                j = int(self._random() * (n - 1))
                if j >= i:
                    j += 1
                first, second = candidates[i], candidates[j]
                chosen = second if second.in_flight < first.in_flight else first
            if chosen.breaker.allow_request(now):
                return chosen
            candidates.remove(chosen)  # not reached while would_allow and allow_request agree
        return _fallback(exclude, targets, now)


def _fallback(exclude: Target | None, targets: Sequence[Target], now: float) -> Target | None:
    """The excluded target, when it is the only one left that can take the request."""
    if (
        exclude is not None
        and exclude in targets
        and exclude.available(now)
        and exclude.breaker.allow_request(now)
    ):
        return exclude
    return None


BALANCER_KINDS: tuple[str, ...] = ("round_robin", "least_requests")


def make_balancer(kind: str) -> Balancer:
    """Build a balancer by its config name (`round_robin` or `least_requests`)."""
    if kind == "round_robin":
        return RoundRobin()
    if kind == "least_requests":
        return LeastRequests()
    raise ValueError(f"unknown load balancer {kind!r}; expected one of {', '.join(BALANCER_KINDS)}")
