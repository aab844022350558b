"""Rate limits: the three strategies in memory and in a real Redis, headers, fail modes, recovery."""

from __future__ import annotations

import asyncio
import math
import multiprocessing
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from gateway_harness import ThrowawayRedis

from garrison.gateway.ratelimit import RateDecision, RateLimiter, RateLimitSpec, rate_limit_headers

STRATEGIES = ["fixed_window", "moving_window", "sliding_window_counter"]


def _route() -> str:
    return "t" + uuid.uuid4().hex[:12]


def _delete_keys(url: str, route: str) -> None:
    with redis.Redis.from_url(url) as client:
        keys = list(client.scan_iter(match=f"garrison:*{route}*"))
        if keys:
            client.delete(*keys)


@pytest.fixture
def route(redis_url: str) -> Iterator[str]:
    name = _route()
    yield name
    _delete_keys(redis_url, name)


NOW = 1_800_000_000.0  # the injected clock's time: decisions are checked against it exactly


def _clock() -> float:
    return NOW


def _check_window(decisions: list[RateDecision], limit: int, period: int) -> None:
    allowed, refused = decisions[:limit], decisions[limit:]
    assert all(d.allowed for d in allowed)
    assert [d.remaining for d in allowed] == list(range(limit - 1, -1, -1))
    assert all(d.retry_after == 0 and not d.storage_error for d in allowed)
    for decision in refused:
        assert not decision.allowed and not decision.storage_error
        assert decision.remaining == 0
        assert 1 <= decision.retry_after <= period
        assert NOW < decision.reset_at <= NOW + period


# -- memory ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_memory_allows_exactly_n_then_refuses(strategy: str) -> None:
    limiter = RateLimiter(RateLimitSpec(rate="5/minute", strategy=strategy), route="r", clock=_clock)  # type: ignore[arg-type]
    decisions = [limiter.hit_sync("10.0.0.1") for _ in range(7)]
    _check_window(decisions, 5, 60)
    # Another identity has its own window; the async path gives the same answers.
    assert limiter.hit_sync("10.0.0.2").remaining == 4
    assert not asyncio.run(limiter.hit("10.0.0.1")).allowed


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_memory_window_frees_capacity(strategy: str) -> None:
    limiter = RateLimiter(RateLimitSpec(rate="2/second", strategy=strategy))  # type: ignore[arg-type]
    assert [limiter.hit_sync("a").allowed for _ in range(3)] == [True, True, False]
    # Real elapsed time is the behaviour under test: the in-memory storage keeps its windows on time.time()
    # (an injected clock only shifts the times the limiter reports). The sliding counter weighs the
    # previous second too: wait two.
    time.sleep(2.05)
    assert limiter.hit_sync("a").allowed


def test_memory_counts_outcomes_through_the_metrics_callback() -> None:
    seen: list[str] = []
    limiter = RateLimiter(RateLimitSpec(rate="1/minute"), seen.append)
    limiter.hit_sync("x")
    limiter.hit_sync("x")
    assert seen == ["allowed", "limited"]


def test_keys_are_namespaced_and_long_identities_hashed() -> None:
    limiter = RateLimiter(RateLimitSpec(rate="1/second", key="api_key"), route="orders")
    assert limiter.storage_key("k1") == "rl:orders:api_key:k1"
    long_key = limiter.storage_key("x" * 1000)
    assert long_key.startswith("rl:orders:api_key:sha256=") and len(long_key) < 120
    with pytest.raises(ValueError):
        RateLimiter(RateLimitSpec(rate="1/second"), route="a:b")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"rate": "lots"},
        {"rate": "1/second", "strategy": "token_bucket"},
        {"rate": "1/second", "key": "header"},
        {"rate": "1/second", "storage": "redis"},
        {"rate": "1/second", "on_redis_error": "maybe"},
        {"rate": "1/second", "redis_timeout": 0},
    ],
)
def test_spec_rejects_bad_settings(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        RateLimitSpec(**kwargs)


def test_hit_sync_needs_memory_storage() -> None:
    limiter = RateLimiter(RateLimitSpec(rate="1/second", storage="redis", redis_url="redis://127.0.0.1:1"))
    with pytest.raises(TypeError):
        limiter.hit_sync("a")
    asyncio.run(limiter.aclose())


# -- headers -----------------------------------------------------------------------------------------


def test_headers_allowed_and_refused() -> None:
    now = 1000.0
    allowed = RateDecision(True, 10, 7, now + 12.2, 0)
    assert rate_limit_headers(allowed, now) == [
        (b"RateLimit-Limit", b"10"),
        (b"RateLimit-Remaining", b"7"),
        (b"RateLimit-Reset", b"13"),
    ]
    refused = RateDecision(False, 10, 0, now + 30, 30)
    assert rate_limit_headers(refused, now)[-1] == (b"Retry-After", b"30")
    assert (b"RateLimit-Reset", b"30") in rate_limit_headers(refused, now)
    past = RateDecision(True, 10, 9, now - 5, 0)
    assert (b"RateLimit-Reset", b"0") in rate_limit_headers(past, now)


def test_headers_without_storage() -> None:
    failed_open = RateDecision(True, 10, 0, 0.0, 0, failed_open=True, storage_error=True)
    assert rate_limit_headers(failed_open) == []
    failed_closed = RateDecision(False, 10, 0, 0.0, 2, storage_error=True)
    assert rate_limit_headers(failed_closed) == [(b"Retry-After", b"2")]


# -- Redis -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_redis_allows_exactly_n_then_refuses(strategy: str, redis_url: str, route: str) -> None:
    async def main() -> list[RateDecision]:
        spec = RateLimitSpec(rate="5/minute", strategy=strategy, storage="redis", redis_url=redis_url)  # type: ignore[arg-type]
        limiter = RateLimiter(spec, route=route, clock=_clock)
        try:
            return [await limiter.hit("10.0.0.1") for _ in range(7)]
        finally:
            await limiter.aclose()

    _check_window(asyncio.run(main()), 5, 60)
    with redis.Redis.from_url(redis_url) as client:
        assert any(
            key.startswith(f"garrison:rl:{route}:ip:".encode()) or b"{" in key
            for key in client.keys(f"*{route}*")
        )


def test_redis_sliding_window_first_decision(redis_url: str, route: str) -> None:
    """Issue 7, item 4: the first hit of a window resets a whole window away, not "now".

    The first hit creates the counter with a TTL of exactly two windows; ``ttl % window`` made that
    a reset of 0 and a Retry-After of 1 for hits refused in the same millisecond. The seven hits go
    in one round trip (one script run, one Redis millisecond), so the figures are exact.
    """

    async def main() -> tuple[RateDecision, list[RateDecision]]:
        spec = RateLimitSpec(
            rate="5/minute", strategy="sliding_window_counter", storage="redis", redis_url=redis_url
        )
        limiter = RateLimiter(spec, route=route, clock=_clock)
        try:
            first = await limiter.hit("fresh")
            return first, list(await asyncio.gather(*(limiter.hit("burst") for _ in range(7))))
        finally:
            await limiter.aclose()

    first, burst = asyncio.run(main())
    assert first.allowed and first.remaining == 4 and first.reset_at == NOW + 60
    assert (b"RateLimit-Reset", b"60") in rate_limit_headers(first, NOW)
    assert [d.allowed for d in burst] == [True] * 5 + [False] * 2
    assert [d.reset_at for d in burst] == [NOW + 60] * 7
    assert [d.retry_after for d in burst] == [0] * 5 + [60] * 2
    assert rate_limit_headers(burst[-1], NOW)[-1] == (b"Retry-After", b"60")


@pytest.mark.parametrize(
    ("stats", "reset_in"),
    [
        ((0, 0.0, 1, 120.0), 60.0),  # first hit of a fresh window: the counter's TTL is 2 windows
        ((0, 0.0, 5, 120.0), 60.0),  # full in the same millisecond: capacity only at the window's end
        ((0, 0.0, 3, 90.0), 30.0),  # half way through the window
        ((6, 28.0, 0, 88.0), 8.0),  # the previous window still counts 2.8 hits: 2 in 0.8 * 10 s
        ((6, 30.0, 2, 90.0), 0.0),  # a share of exactly 3 hits is below 3 the next instant
        ((4, 12.0, 1, 72.0), 12.0),  # a share under 1 hit is gone at the current window's end
    ],
)
def test_sliding_stats_reset(stats: tuple[int, float, int, float], reset_in: float) -> None:
    """Both storages feed this: Redis TTLs, and ``limits``' memory figures (a current TTL of two
    windows at an epoch-aligned window start, the same first-hit case)."""
    from garrison.gateway.ratelimit_decision import sliding_window_stats

    _, reset_at = sliding_window_stats(5, 60, stats, NOW)
    assert reset_at - NOW == pytest.approx(reset_in)


def test_memory_sliding_window_first_decision() -> None:
    """The memory path puts the same window end on the injected clock (memory windows are aligned
    to the epoch, so that end is anywhere up to a window away), and refusals wait for it."""
    limiter = RateLimiter(RateLimitSpec(rate="5/minute", strategy="sliding_window_counter"), clock=_clock)
    decisions = [limiter.hit_sync("a") for _ in range(7)]
    reset_at = decisions[0].reset_at
    assert NOW < reset_at <= NOW + 60
    assert all(d.reset_at == pytest.approx(reset_at, abs=0.01) for d in decisions)
    assert [d.retry_after for d in decisions[5:]] == [math.ceil(reset_at - NOW)] * 2


def test_redis_strategy_change_reuses_the_key(redis_url: str, route: str) -> None:
    """A route switched between fixed and moving windows finds the other's key: it starts afresh."""

    async def main() -> tuple[RateDecision, RateDecision]:
        fixed = RateLimiter(RateLimitSpec(rate="5/minute", storage="redis", redis_url=redis_url), route=route)
        moving = RateLimiter(
            RateLimitSpec(rate="5/minute", strategy="moving_window", storage="redis", redis_url=redis_url),
            route=route,
        )
        try:
            await fixed.hit("a")
            first = await moving.hit("a")
            return first, await fixed.hit("a")
        finally:
            await fixed.aclose()
            await moving.aclose()

    first, second = asyncio.run(main())
    assert first.allowed and not first.storage_error and first.remaining == 4
    assert second.allowed and not second.storage_error and second.remaining == 4


def _hammer(redis_url: str, route: str, strategy: str, ready: Any, start: Any, results: Any) -> None:
    """One gateway-like process: 2 rounds of 100 concurrent hits on one key."""

    async def main() -> int:
        spec = RateLimitSpec(rate="200/minute", strategy=strategy, storage="redis", redis_url=redis_url)  # type: ignore[arg-type]
        limiter = RateLimiter(spec, route=route)
        try:
            await limiter.hit("warm-up")  # connect before the race starts
            ready.put(None)
            start.wait(10)
            allowed = 0
            for _ in range(2):
                decisions = await asyncio.gather(*(limiter.hit("shared") for _ in range(100)))
                assert not any(d.storage_error for d in decisions)
                allowed += sum(d.allowed for d in decisions)
            return allowed
        finally:
            await limiter.aclose()

    results.put(asyncio.run(main()))


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_two_processes_share_a_redis_limit(strategy: str, redis_url: str, route: str) -> None:
    context = multiprocessing.get_context("spawn")
    ready, start, results = context.Queue(), context.Event(), context.Queue()
    workers = [
        context.Process(target=_hammer, args=(redis_url, route, strategy, ready, start, results))
        for _ in range(2)
    ]
    for worker in workers:
        worker.start()
    try:
        for _ in workers:
            ready.get(timeout=60)  # each connected and waiting: the race starts for both at once
        start.set()
        counts = [results.get(timeout=4) for _ in workers]
    finally:
        for worker in workers:
            worker.join(2)
            if worker.is_alive():
                worker.kill()
                worker.join()
        for queue in (ready, results):
            queue.close()
            queue.join_thread()
    assert abs(sum(counts) - 200) <= 2, counts  # within 1% of the limit
    assert all(worker.exitcode == 0 for worker in workers)


@pytest.mark.parametrize("mode", ["open", "closed"])
def test_unreachable_redis_follows_the_fail_mode(mode: str, held_port: int) -> None:
    seen: list[str] = []

    async def main() -> tuple[list[RateDecision], str]:
        spec = RateLimitSpec(
            rate="5/second",
            storage="redis",
            redis_url=f"redis://127.0.0.1:{held_port}/0",  # held: it refuses connections
            on_redis_error=mode,  # type: ignore[arg-type]
        )
        limiter = RateLimiter(spec, seen.append, route="down")
        try:
            first = [await limiter.hit("a") for _ in range(3)]  # opens the breaker
            rest = [await limiter.hit("a") for _ in range(200)]
            assert limiter._breaker is not None
            return first + rest, limiter._breaker.state.value
        finally:
            await limiter.aclose()

    decisions, breaker_state = asyncio.run(main())
    assert all(d.storage_error for d in decisions)
    if mode == "open":
        assert all(d.allowed and d.failed_open for d in decisions)
        assert rate_limit_headers(decisions[0]) == []
        assert seen == ["failed_open"] * len(decisions)
    else:
        assert not any(d.allowed or d.failed_open for d in decisions)
        assert all(d.retry_after >= 1 for d in decisions)
        assert seen == ["failed_closed"] * len(decisions)
    # With the breaker open, a dead Redis is not dialled per request.
    assert breaker_state == "open"


@pytest.mark.process
@pytest.mark.parametrize("mode", ["open", "closed"])
def test_redis_killed_mid_run_then_recovers(mode: str) -> None:
    server = ThrowawayRedis()
    server.start()

    async def main() -> None:
        spec = RateLimitSpec(
            rate="1000/minute",
            storage="redis",
            redis_url=f"redis://127.0.0.1:{server.port}/0",
            on_redis_error=mode,  # type: ignore[arg-type]
            redis_retry_interval=0.3,
        )
        limiter = RateLimiter(spec, route="recover")
        try:
            before = await limiter.hit("a")
            assert before.allowed and not before.storage_error and before.remaining == 999

            server.kill()
            during = [await limiter.hit("a") for _ in range(5)]
            assert all(d.storage_error for d in during)
            assert all(d.allowed is (mode == "open") for d in during)

            server.start()  # a fresh, empty Redis on the same port
            deadline = time.monotonic() + 3
            after = await limiter.hit("a")
            while after.storage_error and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
                after = await limiter.hit("a")
            assert after.allowed and not after.storage_error
        finally:
            await limiter.aclose()

    try:
        asyncio.run(main())
    finally:
        server.stop()


def test_header_lines_match_the_header_pairs() -> None:
    from garrison.gateway.ratelimit import rate_limit_lines

    now = 1_000.0
    for decision in (
        RateDecision(True, 10, 9, now + 30, 0),
        RateDecision(False, 10, 0, now + 30, 30),
        RateDecision(False, 10, 0, now, 2, storage_error=True),
        RateDecision(True, 10, 0, now, 0, failed_open=True, storage_error=True),
    ):
        pairs = rate_limit_headers(decision, now)
        expected = b"".join(b"%s: %s\r\n" % (name.lower(), value) for name, value in pairs)
        assert rate_limit_lines(decision, now) == expected
