"""Redis rate limits batch concurrent hits into one round trip: still exact, still failing safe."""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from gateway_harness import ThrowawayRedis

from garrison.gateway import ratelimit
from garrison.gateway.ratelimit import RateDecision, RateLimiter, RateLimitSpec

STRATEGIES = ["fixed_window", "moving_window", "sliding_window_counter"]


@pytest.fixture
def route(redis_url: str) -> Iterator[str]:
    name = "b" + uuid.uuid4().hex[:12]
    yield name
    with redis.Redis.from_url(redis_url) as client:
        keys = list(client.scan_iter(match=f"garrison:*{name}*"))
        if keys:
            client.delete(*keys)


class CountingScript:
    """Stands in for a limiter's script object: counts round trips, can run a step before each."""

    def __init__(self, limiter: RateLimiter, before: Callable[[], None] | None = None) -> None:
        self.script: Any = limiter._script
        self.before = before
        self.keys: list[int] = []  # keys sent, per round trip
        limiter._script = self  # type: ignore[assignment]

    async def __call__(self, keys: list[str], args: list[Any]) -> Any:
        self.keys.append(len(keys))
        if self.before is not None:
            self.before()
        return await self.script(keys, args)


def _limiter(
    url: str,
    route: str,
    strategy: str,
    rate: str = "20/minute",
    metrics: Callable[[str], None] | None = None,
    **extra: Any,
) -> RateLimiter:
    spec = RateLimitSpec(rate=rate, strategy=strategy, storage="redis", redis_url=url, **extra)  # type: ignore[arg-type]
    return RateLimiter(spec, metrics, route=route)


def _check_in_order(decisions: list[RateDecision], limit: int) -> None:
    """Hits on one key, in queue order: the first ``limit`` allowed counting down, the rest refused."""
    allowed, refused = decisions[:limit], decisions[limit:]
    assert [d.allowed for d in allowed] == [True] * len(allowed)
    assert [d.remaining for d in allowed] == list(range(limit - 1, limit - 1 - len(allowed), -1))
    assert all(not d.allowed and not d.storage_error and d.retry_after >= 1 for d in refused)
    assert all(d.limit == limit and not d.storage_error for d in decisions)
    now = time.time()  # the window (one minute) frees capacity within a minute
    assert all(now - 1 < d.reset_at <= now + 60 for d in decisions)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_a_burst_from_two_limiters_allows_exactly_the_limit(
    strategy: str, redis_url: str, route: str
) -> None:
    """Two limiters ("workers", each with its own connection) share a key: 3x the limit, concurrently."""

    async def main() -> tuple[list[RateDecision], list[list[int]]]:
        workers = [_limiter(redis_url, route, strategy) for _ in range(2)]
        try:
            for worker in workers:
                await worker.hit("warm-up")  # connected and the script loaded
            scripts = [CountingScript(worker) for worker in workers]
            hits = [worker.hit("shared") for _ in range(30) for worker in workers]
            decisions = await asyncio.gather(*hits)
            return decisions, [script.keys for script in scripts]
        finally:
            for worker in workers:
                await worker.aclose()

    decisions, round_trips = asyncio.run(main())
    assert sum(d.allowed for d in decisions) == 20
    assert not any(d.storage_error for d in decisions)
    # Every allowed hit was counted on its own: the counts handed out are distinct.
    assert sorted(d.remaining for d in decisions if d.allowed) == list(range(20))
    assert all(d.retry_after >= 1 and d.remaining == 0 for d in decisions if not d.allowed)
    # The 30 hits queued on one loop iteration went out together: one round trip per limiter.
    assert round_trips == [[1 if strategy != "sliding_window_counter" else 2]] * 2


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_one_round_trip_decides_many_keys_each_in_queue_order(
    strategy: str, redis_url: str, route: str
) -> None:
    identities = ["a", "b", "a", "c", "a", "a", "b", "a", "a", "a", "c", "a"]  # a: 8, b: 2, c: 2

    async def main() -> tuple[list[RateDecision], list[int]]:
        limiter = _limiter(redis_url, route, strategy, rate="5/minute")
        try:
            await limiter.hit("warm-up")
            script = CountingScript(limiter)
            decisions = await asyncio.gather(*(limiter.hit(identity) for identity in identities))
            return decisions, script.keys
        finally:
            await limiter.aclose()

    decisions, round_trips = asyncio.run(main())
    assert round_trips == [3 if strategy != "sliding_window_counter" else 6]
    for identity in "abc":
        _check_in_order([d for i, d in zip(identities, decisions, strict=True) if i == identity], 5)


def test_a_long_burst_over_many_round_trips_stays_exact(redis_url: str, route: str) -> None:
    """Hits keep arriving while round trips are in flight: later batches carry on the same counts."""

    async def main() -> list[RateDecision]:
        limiter = _limiter(redis_url, route, "fixed_window", rate="150/minute")
        decisions: list[RateDecision] = []

        async def client() -> None:
            for _ in range(10):
                decisions.append(await limiter.hit("k"))

        try:
            await asyncio.gather(*(client() for _ in range(20)))
            return decisions
        finally:
            await limiter.aclose()

    decisions = asyncio.run(main())
    assert sorted(d.remaining for d in decisions if d.allowed) == list(range(150))
    assert sum(not d.allowed and not d.storage_error for d in decisions) == 50


def test_a_cancelled_hit_still_counts_and_the_others_are_decided(redis_url: str, route: str) -> None:
    async def main() -> list[RateDecision]:
        limiter = _limiter(redis_url, route, "fixed_window", rate="10/minute")
        try:
            await limiter.hit("warm-up")
            tasks = [asyncio.create_task(limiter.hit("k")) for _ in range(4)]
            await asyncio.sleep(0)  # all four queued; the round trip has not started
            tasks[0].cancel()
            decisions = await asyncio.gather(*tasks[1:])
            assert tasks[0].cancelled()
            return [*decisions, await limiter.hit("k")]
        finally:
            await limiter.aclose()

    decisions = asyncio.run(main())
    assert [d.remaining for d in decisions] == [8, 7, 6, 5]


@pytest.mark.process
@pytest.mark.parametrize("mode", ["open", "closed"])
def test_every_waiter_of_a_failed_round_trip_gets_the_fail_mode(mode: str) -> None:
    server = ThrowawayRedis()
    server.start()
    seen: list[str] = []

    async def main() -> tuple[RateDecision, list[RateDecision], list[RateDecision], list[int]]:
        limiter = _limiter(
            f"redis://127.0.0.1:{server.port}/0",
            "down",
            "fixed_window",
            rate="100/minute",
            on_redis_error=mode,
            redis_retry_interval=0.2,
            metrics=seen.append,
        )
        try:
            before = await limiter.hit("a")
            # Redis dies as the batch goes out: the round trip fails for every hit in it.
            script = CountingScript(limiter, before=server.kill)
            during = await asyncio.gather(*(limiter.hit(identity) for identity in "abcabcabca"))
            script.before = None
            server.start()  # a fresh, empty Redis
            after = await _until_stored(limiter)
            return before, during, after, script.keys
        finally:
            await limiter.aclose()

    try:
        before, during, after, round_trips = asyncio.run(main())
    finally:
        server.stop()
    assert before.allowed and not before.storage_error
    assert round_trips[0] == 3  # one round trip carried the ten hits on three keys
    assert all(d.storage_error and d.allowed is (mode == "open") for d in during)
    assert all(d.failed_open for d in during) if mode == "open" else all(d.retry_after >= 1 for d in during)
    assert seen[1:11] == [f"failed_{mode}"] * 10
    # Recovered: the new Redis counts from scratch (NOSCRIPT was answered by loading the script).
    assert all(d.allowed and not d.storage_error for d in after)
    assert sorted(d.remaining for d in after) == list(range(95, 100))


async def _until_stored(limiter: RateLimiter, deadline: float = 5.0) -> list[RateDecision]:
    """Five concurrent hits on a fresh key, repeated (new key each time) until Redis counts them."""
    loop = asyncio.get_running_loop()
    give_up = loop.time() + deadline
    attempt = 0
    while True:
        attempt += 1
        key = f"recovered-{attempt}"
        decisions = list(await asyncio.gather(*(limiter.hit(key) for _ in range(5))))
        if not any(d.storage_error for d in decisions) or loop.time() > give_up:
            return decisions
        await asyncio.sleep(0.05)


def test_a_redis_error_reply_fails_the_round_trip_but_not_the_breaker(redis_url: str, route: str) -> None:
    async def main() -> tuple[list[RateDecision], RateDecision, str]:
        limiter = _limiter(redis_url, route, "fixed_window", rate="5/minute")
        with redis.Redis.from_url(redis_url) as client:
            client.set(f"garrison:{limiter.storage_key('broken')}", "not a number")
        try:
            decisions = []
            for _ in range(4):  # more than the breaker's three consecutive failures
                decisions += await asyncio.gather(limiter.hit("broken"), limiter.hit("fine"))
            assert limiter._breaker is not None
            return decisions, await limiter.hit("fine"), limiter._breaker.state.value
        finally:
            await limiter.aclose()

    decisions, later, breaker_state = asyncio.run(main())
    assert all(d.storage_error and not d.allowed and d.retry_after == 1 for d in decisions)
    assert breaker_state == "closed"  # Redis answered every time
    assert later.allowed and not later.storage_error and later.remaining == 4


@pytest.mark.parametrize("mode", ["open", "closed"])
def test_hits_queued_when_the_limiter_closes_get_the_fail_mode(mode: str, redis_url: str, route: str) -> None:
    async def main() -> list[RateDecision]:
        limiter = _limiter(redis_url, route, "moving_window", on_redis_error=mode)
        await limiter.hit("warm-up")
        tasks = [asyncio.create_task(limiter.hit("k")) for _ in range(3)]
        await asyncio.sleep(0)  # queued, not sent
        await limiter.aclose()
        return list(await asyncio.gather(*tasks))

    decisions = asyncio.run(main())
    assert all(d.storage_error and d.allowed is (mode == "open") for d in decisions)


def test_more_keys_than_one_call_takes_go_in_several_round_trips(
    redis_url: str, route: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ratelimit, "MAX_BATCH_KEYS", 3)
    identities = [f"10.0.0.{n}" for n in range(7)] * 2

    async def main() -> tuple[list[RateDecision], list[int]]:
        limiter = _limiter(redis_url, route, "fixed_window", rate="2/minute")
        try:
            await limiter.hit("warm-up")
            script = CountingScript(limiter)
            decisions = await asyncio.gather(*(limiter.hit(identity) for identity in identities))
            return decisions, script.keys
        finally:
            await limiter.aclose()

    decisions, round_trips = asyncio.run(main())
    assert round_trips == [3, 3, 1]
    assert [d.remaining for d in decisions] == [1] * 7 + [0] * 7
    assert all(d.allowed for d in decisions)


@pytest.mark.process
@pytest.mark.parametrize("mode", ["open", "closed"])
def test_a_redis_that_never_answers_times_out_and_opens_the_breaker(mode: str) -> None:
    """A server that accepts connections and says nothing: every round trip meets its deadline."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)  # the kernel completes the handshakes; nobody ever reads
        port = silent.getsockname()[1]

        async def main() -> tuple[list[RateDecision], str]:
            limiter = _limiter(
                f"redis://127.0.0.1:{port}/0",
                "silent",
                "sliding_window_counter",
                on_redis_error=mode,
                redis_timeout=0.1,
            )
            try:
                decisions: list[RateDecision] = []
                for _ in range(4):  # three failed round trips open the breaker; then no dialling
                    decisions += await asyncio.gather(*(limiter.hit(ip) for ip in ("a", "b", "a")))
                assert limiter._breaker is not None
                return decisions, limiter._breaker.state.value
            finally:
                await limiter.aclose()

        decisions, breaker_state = asyncio.run(main())
    assert len(decisions) == 12
    assert all(d.storage_error and d.allowed is (mode == "open") for d in decisions)
    assert breaker_state == "open"
