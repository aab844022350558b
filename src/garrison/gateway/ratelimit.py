"""Rate limits: one ``RateLimiter`` per route, counting with the ``limits`` library or in Redis.

Memory storage (per worker) is ``MemoryCounters`` (gateway/ratelimit_memory.py: ``limits``'
strategies, single-threaded and bounded), called synchronously (``hit_sync``). Redis storage is
shared by every worker and replica. Around the counting this module adds:

- keys namespaced ``garrison:rl:<route>:<key kind>:<identity>``; an identity longer than 128
  characters is replaced by its SHA-256, so a key never grows with attacker input;
- a ``RateDecision`` with what the response headers need (limit, remaining, reset, retry-after);
- Redis failure handling: every round trip has a deadline, and a ``CircuitBreaker`` stops calling
  a failing Redis for ``redis_retry_interval`` seconds, after which one probe round trip at a time
  tests it again. So a dead Redis costs at most about one connection attempt per second, not one
  per request, and the limiter recovers on its own when Redis returns. While Redis is failing each
  decision follows ``on_redis_error``: ``open`` allows (flagged ``failed_open``), ``closed`` refuses
  with ``storage_error`` set, which the caller answers with 503, not 429.

Redis hits are batched. ``hit()`` queues the request and awaits its decision; one sender task per
limiter sends everything queued in ONE round trip: one ``EVALSHA`` of a script that takes every
queued key with its number of hits, and answers, per key, what each of those hits needs to be
decided on its own. Hits that arrive while a round trip is under way form the next batch, so under
load a batch holds whatever arrived during one round trip, and when idle a hit goes out on the next
event-loop iteration. ``n`` hits on one key cost what one did, and are still decided one by one, in
queue order, exactly as ``n`` separate hits would be: a fixed window does ``INCRBY n`` and the
waiters get the counts ``c-n+1 .. c``; the moving window and the sliding-window counter apply
``limits``' own acquisition rule once per hit, inside the script. A Lua script runs atomically, so
concurrent batches from many processes cannot overshoot a limit. The window's end (``PTTL``) comes
back in the same reply: a hit never costs a second round trip.

Why hand-written scripts rather than ``limits``' async Redis storage: its API counts one key per
call (``incr``, ``acquire_entry``, ``acquire_sliding_window_entry`` each run one script on one key;
an ``amount`` acquires all or nothing and says nothing per hit), and its window getters are a
further round trip. Through it every request paid one or two redis-py round trips of its own
(~100 µs of gateway CPU per hit, measured with bench/gateway/ratelimit_bench.py). The scripts
below keep ``limits``' key layout and data (a fixed window's counter with a TTL; the moving
window's list of hit timestamps, newest first, trimmed to the limit; the sliding-window counter's
``{key}``/``{key}/-1`` pair with millisecond TTLs) and its acquisition rules (the code they follow
is named in each), so a replica on the per-hit code shares counters with one on this code during a
rolling upgrade. All of a script's keys are in one call, so this needs one Redis (or a primary
with replicas), not Redis Cluster, whose scripts may only touch one hash slot.

A hit waits for at most the round trip in flight and then its own, each bounded by
``redis_timeout``. The breaker sees one outcome per round trip, and every waiter of a failed
round trip gets the fail-mode decision.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, get_args

import redis.asyncio
import redis.exceptions
from limits import RateLimitItem, parse
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from garrison.gateway.ratelimit_decision import (
    Outcome,
    RateDecision,
    rate_limit_headers,
    rate_limit_lines,
    sliding_window_stats,
)
from garrison.gateway.ratelimit_memory import MemoryCounters
from garrison.gateway.ratelimit_scripts import SCRIPTS
from garrison.proxy.upstream.circuit import CircuitBreaker, CircuitState
from garrison.telemetry import logging as log

__all__ = [
    "RateDecision",
    "RateLimitSpec",
    "RateLimiter",
    "rate_limit_headers",
    "rate_limit_lines",
]

Strategy = Literal["fixed_window", "moving_window", "sliding_window_counter"]
KeyKind = Literal["client", "api_key", "ip", "route"]
StorageKind = Literal["memory", "redis"]
FailMode = Literal["open", "closed"]

MAX_IDENTITY = 128
KEY_PREFIX = "garrison:"
# Keys per script call: bounds how long one call holds Redis (a few µs per key). A flood from
# many addresses queues more keys than this; the rest go in the next round trip.
MAX_BATCH_KEYS = 1000
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
    redis_timeout: float = 0.5  # deadline for one round trip to Redis, seconds
    redis_retry_interval: float = 1.0  # how long a failing Redis is left alone before a probe
    redis_max_connections: int = 64  # pool bound per limiter and worker; batching uses one

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


Waiters = list[asyncio.Future[RateDecision]]
Batch = dict[str, Waiters]  # storage key -> the hits on it, in arrival order


class RateLimiter:
    """One route's limit; ``hit(identity)`` counts a request and decides it.

    ``identity`` is the value of the spec's key kind: the client id, the API key's lookup id (never
    the secret key itself), the client IP, or anything constant for ``route``.

    ``clock`` gives epoch seconds; every ``reset_at`` is on it. Memory windows are kept on it;
    Redis hands back time-to-live figures (relative, on Redis's own clock), which a decision places
    onto ``clock()``. Tests inject a fixed clock to check reset and retry-after
    exactly; in production it must be the wall clock, as the moving window's Redis entries are
    timestamps that every replica compares.
    """

    def __init__(
        self,
        spec: RateLimitSpec,
        metrics_callback: Callable[[Outcome], None] | None = None,
        *,
        route: str = "_",
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not route or ":" in route:
            raise ValueError("a rate limit route name must be non-empty and contain no ':'")
        self.spec = spec
        self.item: RateLimitItem = parse(spec.rate)
        self.limit = self.item.amount
        self.expiry = self.item.get_expiry()
        self.route = route
        self._clock = clock
        self._namespace = f"rl:{route}:{spec.key}:"
        self._metrics = metrics_callback
        self._last_error = ""
        self._error_logged_at = -math.inf
        self._memory: MemoryCounters | None = None
        self._pool: redis.asyncio.ConnectionPool | None = None
        self._client: redis.asyncio.Redis | None = None
        self._breaker: CircuitBreaker | None = None
        self._pending: Batch = {}  # hits queued for the next round trip
        self._sender: asyncio.Task[None] | None = None
        if spec.storage == "memory":
            self._memory = MemoryCounters(self.limit, self.expiry)
        else:
            assert spec.redis_url is not None  # checked by RateLimitSpec
            # One round trip is in flight at a time: the client holds one connection of the pool
            # and reconnects it when Redis drops it.
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
            script, self._reply_width = SCRIPTS[spec.strategy]
            # The script object sends EVALSHA, and loads the script when Redis lacks it (NOSCRIPT,
            # e.g. after a restart).
            self._client = redis.asyncio.Redis(connection_pool=self._pool, single_connection_client=True)
            self._script = self._client.register_script(script)
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
        counters = self._memory
        if counters is None:
            raise TypeError("hit_sync needs memory storage; use 'await hit()' with Redis")
        key = self.storage_key(identity)
        now, strategy = self._clock(), self.spec.strategy
        if strategy == "fixed_window":
            decision = self._fixed(*counters.hit_fixed(key, now), now)
        elif strategy == "moving_window":
            allowed = counters.acquire_moving(key, now)
            window_start, count = counters.moving_window(key, now)
            decision = self._moving(allowed, window_start, count, now)
        else:
            allowed = counters.acquire_sliding(key, now)
            decision = self._sliding(allowed, counters.sliding_window(key, now), now)
        if self._metrics is not None:
            self._metrics("allowed" if decision.allowed else "limited")
        return decision

    def sweep(self) -> None:
        """Drop some memory keys whose windows are over (the gateway's sweeper calls this)."""
        if self._memory is not None:
            self._memory.sweep(self._clock())

    # -- any storage -----------------------------------------------------------------------------

    async def hit(self, identity: str) -> RateDecision:
        """Count and decide one request; never raises for a storage failure (see ``on_redis_error``)."""
        if self._memory is not None:
            return self.hit_sync(identity)
        breaker = self._breaker
        assert breaker is not None
        loop = asyncio.get_running_loop()
        if breaker.state is not CircuitState.CLOSED and not breaker.would_allow(loop.time()):
            return self._storage_failure(breaker.retry_after(loop.time()))
        waiter: asyncio.Future[RateDecision] = loop.create_future()
        key = self.storage_key(identity)
        waiters = self._pending.get(key)
        if waiters is None:
            self._pending[key] = [waiter]
        else:
            waiters.append(waiter)
        sender = self._sender
        if sender is None or sender.done():  # done: cancelled before it ran (loop shutdown)
            self._sender = loop.create_task(self._send_batches())
        return await waiter

    async def aclose(self) -> None:
        """Close the Redis connections (a no-op for memory storage); queued hits fail over."""
        sender = self._sender
        if sender is not None and not sender.done():
            sender.cancel()
            await asyncio.wait({sender})
        self._sender = None
        pending, self._pending = self._pending, {}
        self._fail(pending, 1)
        if self._client is not None:
            await self._client.aclose()  # gives its connection back to the pool, which closes it
        if self._pool is not None:
            await self._pool.aclose()

    # -- Redis batches ---------------------------------------------------------------------------

    async def _send_batches(self) -> None:
        """Send queued hits, one round trip at a time, until none are left."""
        try:
            while self._pending:
                await self._send(self._take_batch())
        finally:
            self._sender = None

    def _take_batch(self) -> Batch:
        pending = self._pending
        if len(pending) <= MAX_BATCH_KEYS:
            self._pending = {}
            return pending
        batch = dict(itertools.islice(pending.items(), MAX_BATCH_KEYS))
        for key in batch:
            del pending[key]
        return batch

    async def _send(self, batch: Batch) -> None:
        """One round trip for ``batch``: every waiter gets a decision (or, for a bug, the exception)."""
        breaker = self._breaker
        assert breaker is not None
        loop = asyncio.get_running_loop()
        if not breaker.allow_request(loop.time()):
            self._fail(batch, breaker.retry_after(loop.time()))
            return
        keys, args = self._script_arguments(batch)
        try:
            async with asyncio.timeout(self.spec.redis_timeout):
                reply = await self._script(keys, args)
        except redis.exceptions.ResponseError as exc:
            # Redis answered, so it is up: a script error fails this batch's decisions but must
            # not trip the breaker.
            breaker.record_success(loop.time())
            self._log_error_throttled(loop.time(), str(exc))
            self._fail(batch, 1)
            return
        except STORAGE_ERRORS as exc:
            self._last_error = type(exc).__name__
            breaker.record_failure(loop.time())
            self._fail(batch, breaker.retry_after(loop.time()))
            return
        except asyncio.CancelledError:
            breaker.release_probe()  # aclose(): no verdict on Redis
            self._fail(batch, 1)
            raise
        except Exception as exc:
            breaker.release_probe()
            self._raise_in(batch, exc)
            return
        breaker.record_success(loop.time())
        try:
            self._decide(batch, reply)
        except Exception as exc:
            self._raise_in(batch, exc)

    def _script_arguments(self, batch: Batch) -> tuple[list[str], list[Any]]:
        hits = " ".join([str(len(waiters)) for waiters in batch.values()])
        strategy = self.spec.strategy
        if strategy == "fixed_window":
            return [KEY_PREFIX + key for key in batch], [hits, self.expiry]
        if strategy == "moving_window":
            return [KEY_PREFIX + key for key in batch], [hits, self._clock(), self.limit, self.expiry]
        keys: list[str] = []
        for key in batch:  # limits' layout: both counters in one hash slot, "{key}/-1" and "{key}"
            current = f"{KEY_PREFIX}{{{key}}}"
            keys += (current + "/-1", current)
        return keys, [hits, self.limit, self.expiry]

    def _decide(self, batch: Batch, reply: Any) -> None:
        """Each waiter's decision from the script's reply: the hits on a key in queue order."""
        width = self._reply_width
        fields = reply.split() if isinstance(reply, bytes | str) else []
        if len(fields) != width * len(batch):
            raise RuntimeError(f"rate limit script replied {reply!r:.80} to {len(batch)} keys")
        now, strategy, settle = self._clock(), self.spec.strategy, self._settle
        for index, waiters in enumerate(batch.values()):
            item = fields[width * index : width * index + width]
            if strategy == "fixed_window":
                count, ttl = int(item[0]), int(item[1])
                reset_at, first = now + ttl / 1000, count - len(waiters) + 1
                for number, waiter in enumerate(waiters):
                    settle(waiter, self._fixed(first + number, reset_at, now))
            elif strategy == "moving_window":
                accepted, counted, window_start = int(item[0]), int(item[1]), float(item[2])
                for number, waiter in enumerate(waiters, 1):
                    settle(waiter, self._moving(number <= accepted, window_start, counted + number, now))
            else:
                accepted, previous, previous_ttl, current, current_ttl = map(int, item)
                for number, waiter in enumerate(waiters, 1):
                    stats = (
                        previous,
                        previous_ttl / 1000,
                        current + min(number, accepted),
                        current_ttl / 1000,
                    )
                    settle(waiter, self._sliding(number <= accepted, stats, now))

    def _settle(self, waiter: asyncio.Future[RateDecision], decision: RateDecision) -> None:
        if self._metrics is not None:
            self._metrics(decision.outcome)
        if not waiter.done():  # a cancelled waiter's hit still counted
            waiter.set_result(decision)

    def _fail(self, batch: Batch, retry_after: int) -> None:
        decision = self._failure_decision(retry_after)
        for waiters in batch.values():
            for waiter in waiters:
                self._settle(waiter, decision)

    @staticmethod
    def _raise_in(batch: Batch, exc: Exception) -> None:
        """A bug: every waiter that has no decision yet raises it, as an unbatched hit would."""
        for waiters in batch.values():
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_exception(exc)

    # -- decisions -------------------------------------------------------------------------------

    def _fixed(self, count: int, reset_at: float, now: float) -> RateDecision:
        return RateDecision.counted(count <= self.limit, self.limit, self.limit - count, reset_at, now)

    def _moving(self, allowed: bool, window_start: float, count: int, now: float) -> RateDecision:
        # The oldest counted hit leaves the window at window_start + expiry; with an empty window
        # (window_start is then "now") that is a full period away, which is still a correct bound.
        return RateDecision.counted(allowed, self.limit, self.limit - count, window_start + self.expiry, now)

    def _sliding(self, allowed: bool, stats: tuple[int, float, int, float], now: float) -> RateDecision:
        remaining, reset_at = sliding_window_stats(self.limit, self.expiry, stats, now)
        return RateDecision.counted(allowed, self.limit, remaining, reset_at, now)

    def _failure_decision(self, retry_after: int) -> RateDecision:
        fail_open = self.spec.on_redis_error == "open"
        return RateDecision(
            allowed=fail_open,
            limit=self.limit,
            remaining=0,
            reset_at=self._clock() + retry_after,
            retry_after=0 if fail_open else retry_after,
            failed_open=fail_open,
            storage_error=True,
        )

    def _storage_failure(self, retry_after: int) -> RateDecision:
        decision = self._failure_decision(retry_after)
        if self._metrics is not None:
            self._metrics(decision.outcome)
        return decision

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
