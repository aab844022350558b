"""Rate limits: one ``RateLimiter`` per route, counting with the ``limits`` library.

Counting is ``limits``' job: its ``MemoryStorage`` (per worker) and its async Redis storage (shared
by every worker and replica; each hit is one atomic Lua script, so concurrent bursts from many
processes cannot overshoot). This module adds what the gateway needs around it:

- keys namespaced ``garrison:rl:<route>:<key kind>:<identity>``; an identity longer than 128
  characters is replaced by its SHA-256, so a key never grows with attacker input;
- a ``RateDecision`` with what the response headers need (limit, remaining, reset, retry-after);
- a synchronous path for memory storage (``hit_sync``) — the memory strategies never wait;
- Redis failure handling: every storage call has a deadline, and a ``CircuitBreaker`` stops calling
  a failing Redis for ``redis_retry_interval`` seconds, after which one probe call at a time tests
  it again. So a dead Redis costs at most about one connection attempt per second, not one per
  request, and the limiter recovers on its own when Redis returns. While Redis is failing each
  decision follows ``on_redis_error``: ``open`` allows (flagged ``failed_open``), ``closed`` refuses
  with ``storage_error`` set, which the caller answers with 503, not 429.

The storage primitives are called directly (``incr``/``acquire_entry``/
``acquire_sliding_window_entry`` and their window getters — exactly what ``limits.strategies`` call)
so that the key is ours and a fixed-window hit costs one round trip for the count plus one for the
reset time.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, get_args

import redis.asyncio
import redis.exceptions
from limits import RateLimitItem, parse
from limits.aio.storage import RedisStorage
from limits.storage import MemoryStorage
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from garrison.gateway.upstream.circuit import CircuitBreaker, CircuitState
from garrison.telemetry import logging as log

__all__ = [
    "RateDecision",
    "RateLimitSpec",
    "RateLimiter",
    "rate_limit_headers",
]

Strategy = Literal["fixed_window", "moving_window", "sliding_window_counter"]
KeyKind = Literal["client", "api_key", "ip", "route"]
StorageKind = Literal["memory", "redis"]
FailMode = Literal["open", "closed"]
Outcome = Literal["allowed", "limited", "failed_open", "failed_closed"]

MAX_IDENTITY = 128
WINDOW_CACHE_SIZE = 10_000
# Errors that mean "Redis did not answer properly": everything else is a bug and propagates.
STORAGE_ERRORS = (redis.exceptions.RedisError, OSError, TimeoutError)


@dataclass(frozen=True, slots=True)
class RateLimitSpec:
    """One route's ``rate_limit`` block, validated on construction."""

    rate: str  # limits notation: "100/second", "10/minute", "5 per 30 seconds"
    strategy: Strategy = "fixed_window"
    key: KeyKind = "ip"
    storage: StorageKind = "memory"
    redis_url: str | None = None
    on_redis_error: FailMode = "closed"
    redis_timeout: float = 0.5  # deadline for one hit's storage calls, seconds
    redis_retry_interval: float = 1.0  # how long a failing Redis is left alone before a probe
    redis_max_connections: int = 64  # per limiter (per route) and per worker process

    def __post_init__(self) -> None:
        parse(self.rate)  # raises ValueError on a bad rate string
        for value, kind in (
            (self.strategy, Strategy),
            (self.key, KeyKind),
            (self.storage, StorageKind),
            (self.on_redis_error, FailMode),
        ):
            if value not in get_args(kind):
                raise ValueError(f"unknown rate limit setting {value!r}; expected one of {get_args(kind)}")
        if self.storage == "redis" and not self.redis_url:
            raise ValueError("rate limit storage 'redis' needs a redis_url")
        if not self.redis_timeout > 0 or not self.redis_retry_interval > 0:
            raise ValueError("redis_timeout and redis_retry_interval must be > 0")
        if self.redis_max_connections < 1:
            raise ValueError("redis_max_connections must be >= 1")


@dataclass(frozen=True, slots=True)
class RateDecision:
    """The outcome of one hit.

    ``allowed`` False with ``storage_error`` False means 429; with ``storage_error`` True it means the
    limit could not be evaluated and the route fails closed (503). ``failed_open`` marks a request
    allowed only because the storage was failing.
    """

    allowed: bool
    limit: int
    remaining: int
    reset_at: float  # epoch seconds when the window (or the oldest counted hit) frees capacity
    retry_after: int  # whole seconds, >= 1 when refused, 0 when allowed
    failed_open: bool = False
    storage_error: bool = False


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


def _retry_after(reset_at: float, now: float) -> int:
    return max(1, math.ceil(reset_at - now))


def _sliding_stats(
    limit: int, expiry: int, stats: tuple[int, float, int, float], now: float
) -> tuple[int, float]:
    """(remaining, reset_at) from a sliding-window counter, as ``limits``' ``get_window_stats``."""
    previous, previous_ttl, current, current_ttl = stats
    weighted = previous * previous_ttl / expiry + current
    remaining = max(0, limit - math.floor(weighted))
    if not (previous or current):
        return remaining, now
    previous_in = previous_ttl % (expiry / previous) if previous else math.inf
    current_in = current_ttl % expiry if current else math.inf
    return remaining, now + min(previous_in, current_in)


class RateLimiter:
    """One route's limit; ``hit(identity)`` counts a request and decides it.

    ``identity`` is the value of the spec's key kind: the client id, the API key's lookup id (never
    the secret key itself), the client IP, or anything constant for ``route``.
    """

    def __init__(
        self,
        spec: RateLimitSpec,
        metrics_callback: Callable[[Outcome], None] | None = None,
        *,
        route: str = "_",
    ) -> None:
        if not route or ":" in route:
            raise ValueError("a rate limit route name must be non-empty and contain no ':'")
        self.spec = spec
        self.item: RateLimitItem = parse(spec.rate)
        self.limit = self.item.amount
        self.expiry = self.item.get_expiry()
        self.route = route
        self._namespace = f"rl:{route}:{spec.key}:"
        self._metrics = metrics_callback
        self._last_error = ""
        self._error_logged_at = -math.inf
        self._window_ends: dict[str, float] = {}
        self._memory: MemoryStorage | None = None
        self._pool: redis.asyncio.ConnectionPool | None = None
        self._redis: RedisStorage | None = None
        self._breaker: CircuitBreaker | None = None
        if spec.storage == "memory":
            self._memory = MemoryStorage()
        else:
            assert spec.redis_url is not None  # checked by RateLimitSpec
            # A bounded pool that queues for a free connection (within the hit's deadline) instead
            # of opening one connection per concurrent request during a burst.
            self._pool = redis.asyncio.BlockingConnectionPool.from_url(
                spec.redis_url,
                max_connections=spec.redis_max_connections,
                timeout=spec.redis_timeout,
                socket_connect_timeout=spec.redis_timeout,
                socket_timeout=spec.redis_timeout,
                # One immediate retry: the first command on a connection that a restarted Redis
                # dropped fails, the retry reconnects. No backoff sleeps on the request path.
                retry=Retry(NoBackoff(), 1),
            )
            options: dict[str, Any] = {"connection_pool": self._pool}
            self._redis = RedisStorage(
                "async+" + spec.redis_url, implementation="redispy", key_prefix="garrison", **options
            )
            self._breaker = CircuitBreaker(
                consecutive_failures=3,
                open_for=spec.redis_retry_interval,
                half_open_probes=1,
                on_change=self._breaker_changed,
            )

    def __repr__(self) -> str:
        return f"RateLimiter(route={self.route!r}, rate={self.spec.rate!r}, storage={self.spec.storage!r})"

    def storage_key(self, identity: str) -> str:
        """The key counted for ``identity``, without the ``garrison:`` prefix the storage adds."""
        if len(identity) > MAX_IDENTITY:
            identity = "sha256=" + hashlib.sha256(identity.encode("utf-8", "surrogatepass")).hexdigest()
        return self._namespace + identity

    # -- memory ----------------------------------------------------------------------------------

    def hit_sync(self, identity: str) -> RateDecision:
        """Count and decide one request against memory storage, without an event loop."""
        storage = self._memory
        if storage is None:
            raise TypeError("hit_sync needs memory storage; use 'await hit()' with Redis")
        key = "garrison:" + self.storage_key(identity)
        limit, expiry, strategy = self.limit, self.expiry, self.spec.strategy
        if strategy == "fixed_window":
            count = storage.incr(key, expiry)
            decision = self._fixed(count, storage.get_expiry(key))
        elif strategy == "moving_window":
            allowed = storage.acquire_entry(key, limit, expiry)
            decision = self._moving(allowed, *storage.get_moving_window(key, limit, expiry))
        else:
            allowed = storage.acquire_sliding_window_entry(key, limit, expiry, 1)
            decision = self._sliding(allowed, storage.get_sliding_window(key, expiry))
        if self._metrics is not None:
            self._metrics("allowed" if decision.allowed else "limited")
        return decision

    # -- any storage -----------------------------------------------------------------------------

    async def hit(self, identity: str) -> RateDecision:
        """Count and decide one request; never raises for a storage failure (see ``on_redis_error``)."""
        if self._memory is not None:
            return self.hit_sync(identity)
        breaker = self._breaker
        assert breaker is not None
        loop = asyncio.get_running_loop()
        if not breaker.allow_request(loop.time()):
            return self._storage_failure(breaker.retry_after(loop.time()))
        try:
            async with asyncio.timeout(self.spec.redis_timeout):
                decision = await self._redis_hit(self.storage_key(identity))
        except redis.exceptions.ResponseError as exc:
            # Redis answered, so it is up: an error about one key fails this request's decision
            # but must not trip the breaker.
            breaker.record_success(loop.time())
            self._log_error_throttled(loop.time(), str(exc))
            return self._storage_failure(1)
        except STORAGE_ERRORS as exc:
            self._last_error = type(exc).__name__
            breaker.record_failure(loop.time())
            return self._storage_failure(breaker.retry_after(loop.time()))
        except BaseException:
            breaker.release_probe()  # cancelled: no verdict on Redis
            raise
        breaker.record_success(loop.time())
        if self._metrics is not None:
            self._metrics("allowed" if decision.allowed else "limited")
        return decision

    async def _redis_hit(self, key: str) -> RateDecision:
        storage = self._redis
        assert storage is not None
        limit, expiry, strategy = self.limit, self.expiry, self.spec.strategy
        if strategy == "fixed_window":
            try:
                count = await storage.incr(key, expiry)
            except redis.exceptions.ResponseError as exc:
                # WRONGTYPE: a moving window's list under this key, left by a config that used
                # that strategy on this route. Start this key's window afresh rather than failing
                # every request for it until the old key expires.
                if "WRONGTYPE" not in str(exc):
                    raise
                await storage.clear(key)
                count = await storage.incr(key, expiry)
            return self._fixed(count, await self._window_end(key, count))
        if strategy == "moving_window":
            try:
                allowed = await storage.acquire_entry(key, limit, expiry)
            except redis.exceptions.ResponseError as exc:
                if "WRONGTYPE" not in str(exc):  # a fixed window's counter: see above
                    raise
                await storage.clear(key)
                allowed = await storage.acquire_entry(key, limit, expiry)
            return self._moving(allowed, *await storage.get_moving_window(key, limit, expiry))
        allowed = await storage.acquire_sliding_window_entry(key, limit, expiry, 1)
        return self._sliding(allowed, await storage.get_sliding_window(key, expiry))

    async def _window_end(self, key: str, count: int) -> float:
        """When the fixed window of ``key`` ends, remembered locally to save a round trip per hit.

        The hit that opens a window (count 1) knows its end; any later hit in this process reuses
        it until it passes. Another process's window costs one TTL read, then it is remembered too.
        """
        now = time.time()
        if count == 1:
            end = now + self.expiry
        else:
            end = self._window_ends.get(key, 0.0)
            if end > now:
                return end
            assert self._redis is not None
            end = await self._redis.get_expiry(key)
        ends = self._window_ends
        if len(ends) >= WINDOW_CACHE_SIZE and key not in ends:
            del ends[next(iter(ends))]  # oldest first: dicts keep insertion order
        ends[key] = end
        return end

    async def aclose(self) -> None:
        """Close the Redis connections (a no-op for memory storage)."""
        if self._pool is not None:
            await self._pool.aclose()

    # -- decisions -------------------------------------------------------------------------------

    def _fixed(self, count: int, reset_at: float) -> RateDecision:
        allowed = count <= self.limit
        now = time.time()
        return RateDecision(
            allowed,
            self.limit,
            max(0, self.limit - count),
            reset_at,
            0 if allowed else _retry_after(reset_at, now),
        )

    def _moving(self, allowed: bool, window_start: float, count: int) -> RateDecision:
        now = time.time()
        # The oldest counted hit leaves the window at window_start + expiry; with an empty window
        # (window_start is then "now") that is a full period away, which is still a correct bound.
        reset_at = window_start + self.expiry
        remaining = max(0, self.limit - count) if allowed else 0
        return RateDecision(
            allowed, self.limit, remaining, reset_at, 0 if allowed else _retry_after(reset_at, now)
        )

    def _sliding(self, allowed: bool, stats: tuple[int, float, int, float]) -> RateDecision:
        now = time.time()
        remaining, reset_at = _sliding_stats(self.limit, self.expiry, stats, now)
        if not allowed:
            remaining = 0
        return RateDecision(
            allowed, self.limit, remaining, reset_at, 0 if allowed else _retry_after(reset_at, now)
        )

    def _storage_failure(self, retry_after: int) -> RateDecision:
        fail_open = self.spec.on_redis_error == "open"
        if self._metrics is not None:
            self._metrics("failed_open" if fail_open else "failed_closed")
        return RateDecision(
            allowed=fail_open,
            limit=self.limit,
            remaining=0,
            reset_at=time.time() + retry_after,
            retry_after=0 if fail_open else retry_after,
            failed_open=fail_open,
            storage_error=True,
        )

    def _log_error_throttled(self, now: float, message: str) -> None:
        if now - self._error_logged_at >= self.spec.redis_retry_interval:
            self._error_logged_at = now
            log.warn("gateway.ratelimit.storage_error", route=self.route, error=message[:200])

    def _breaker_changed(self, state: CircuitState) -> None:
        if state is CircuitState.OPEN:
            log.warn(
                "gateway.ratelimit.storage_unavailable",
                route=self.route,
                error=self._last_error,
                mode=self.spec.on_redis_error,
                retry_in=self.spec.redis_retry_interval,
            )
        elif state is CircuitState.CLOSED:
            log.log("gateway.ratelimit.storage_recovered", route=self.route)
