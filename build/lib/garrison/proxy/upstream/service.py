"""One upstream service: its targets, and the one place their in-flight and breaker accounting lives.

Every attempt at an upstream goes through ``UpstreamService``: ``pick`` chooses a target and counts
the attempt in flight (the least-requests balancer reads that count), and exactly one of
``responded``/``failed``/``abandoned`` ends it, decrementing the count and telling the target's
circuit breaker what happened. The client connection keeps no counts of its own, so an attempt can
neither be counted twice nor leak a count when the client goes away.
"""

from __future__ import annotations

from dataclasses import dataclass

from garrison.proxy.upstream.balancer import Balancer
from garrison.proxy.upstream.health import ActiveHealthChecker
from garrison.proxy.upstream.pool import TargetPool
from garrison.proxy.upstream.retry import IDEMPOTENT_METHODS, RetryBudget
from garrison.proxy.upstream.target import Target

# Upstream statuses that count as a failure of the target for its breaker (as Envoy's
# consecutive_gateway_failure outlier detection counts them).
GATEWAY_FAILURES = frozenset((502, 503, 504))


@dataclass(eq=False)
class UpstreamService:
    name: str
    targets: list[Target]
    pools: dict[Target, TargetPool]
    balancer: Balancer
    budget: RetryBudget
    retry_attempts: int
    read_timeout: float
    health: ActiveHealthChecker | None = None

    # -- one attempt: pick, then exactly one of responded / failed / abandoned ------------------
    def pick(self, now: float, previous: Target | None) -> Target | None:
        """A target for the next attempt, counted in flight; None when every breaker is open."""
        target = self.balancer.pick(self.targets, now, previous)
        if target is not None:
            target.in_flight += 1
        return target

    def retry_after(self, now: float) -> int:
        """Seconds until the first target's breaker lets a request through (for Retry-After)."""
        return min(target.breaker.retry_after(now) for target in self.targets)

    @staticmethod
    def response_head(target: Target, status: int, now: float) -> None:
        """The response head arrived: its status is the breaker's verdict (the attempt stays in flight)."""
        if status in GATEWAY_FAILURES:
            target.breaker.record_failure(now)
        else:
            target.breaker.record_success(now)

    @staticmethod
    def responded(target: Target) -> None:
        """The response is complete: the attempt is no longer in flight."""
        target.in_flight -= 1

    @staticmethod
    def failed(target: Target, now: float) -> None:
        """The attempt failed (connect error, reset, timeout): a failure for the breaker."""
        target.in_flight -= 1
        target.breaker.record_failure(now)

    @staticmethod
    def abandoned(target: Target, response_started: bool) -> None:
        """The client side gave up on the attempt: no verdict on the target.

        A half-open probe slot taken by an attempt that never got a response head is handed back,
        so a client that goes away cannot hold the breaker half-open.
        """
        target.in_flight -= 1
        if not response_started:
            target.breaker.release_probe()

    # -- retries ----------------------------------------------------------------------------------
    def record_request(self, now: float) -> None:
        """A first attempt: it earns the retry budget its share."""
        self.budget.record_request(now)

    def may_retry(self, method: bytes, has_body: bool, attempts: int, reason: str, now: float) -> bool:
        """Whether a failed attempt is tried again: idempotent, bodiless, within attempts and budget."""
        return (
            reason != "timeout"
            and method in IDEMPOTENT_METHODS
            and not has_body
            and attempts <= self.retry_attempts
            and self.budget.try_spend(now)
        )

    # -- housekeeping -----------------------------------------------------------------------------
    def sweep(self, now: float) -> None:
        for pool in self.pools.values():
            pool.sweep(now)

    async def close(self) -> None:
        for pool in self.pools.values():
            pool.close()
        if self.health is not None:
            await self.health.stop()
