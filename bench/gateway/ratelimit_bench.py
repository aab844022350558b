"""Redis-backed rate limit hits per second, in one process, against a real Redis.

Runs ``--concurrency`` coroutines on uvloop (like the gateway's open client connections under wrk
-c50), each awaiting ``RateLimiter.hit()`` in a loop until ``--hits`` hits in total are decided,
for each strategy with one shared key (``key: route``) and with many keys (``key: ip``, one key per
coroutine). Prints hits per second and the CPU time this process spends per hit, user and system
(the gateway's share of the cost; Redis runs in its own process, but a loopback send also runs the
receiving side's TCP work inside the sender's system call). The rate never triggers, as in the
``garrison-redis`` column of bench/gateway/run.py.

    .venv/bin/python bench/gateway/ratelimit_bench.py [--hits N] [--concurrency C] [--redis URL]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
import uuid

import redis
import uvloop

from garrison.gateway.ratelimit import RateLimiter, RateLimitSpec, Strategy

STRATEGIES: tuple[Strategy, ...] = ("fixed_window", "moving_window", "sliding_window_counter")
NEVER_LIMITED = "10000000/minute"


async def measure(
    url: str, strategy: Strategy, route: str, shared: bool, hits: int, concurrency: int
) -> tuple[float, float, float]:
    """(hits per second, user and system CPU µs per hit) for ``hits`` hits from ``concurrency`` coroutines."""
    spec = RateLimitSpec(rate=NEVER_LIMITED, strategy=strategy, storage="redis", redis_url=url)
    limiter = RateLimiter(spec, route=route)
    left = hits

    async def client(number: int) -> None:
        nonlocal left
        identity = "" if shared else f"10.0.{number // 250}.{number % 250}"
        while left > 0:
            left -= 1
            decision = await limiter.hit(identity)
            if decision.storage_error:
                raise RuntimeError("Redis failed during the benchmark")

    try:
        await limiter.hit("warm-up")  # connect and load the scripts before the clock starts
        started, cpu = time.perf_counter(), os.times()
        await asyncio.gather(*(client(n) for n in range(concurrency)))
        elapsed, end = time.perf_counter() - started, os.times()
    finally:
        await limiter.aclose()
    return hits / elapsed, (end.user - cpu.user) / hits * 1e6, (end.system - cpu.system) / hits * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--hits", type=int, default=50_000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args()
    route = "bench" + uuid.uuid4().hex[:8]
    try:
        for strategy in STRATEGIES:
            for shared in (True, False):
                rate, user, system = uvloop.run(
                    measure(args.redis, strategy, route, shared, args.hits, args.concurrency)
                )
                keys = "one key" if shared else f"{args.concurrency} keys"
                print(
                    f"{strategy:23} {keys:8} {rate:9,.0f} hits/s   CPU per hit: "
                    f"{user:6.1f} µs user {system:6.1f} µs system"
                )
    finally:
        with redis.Redis.from_url(args.redis) as client:
            keys = list(client.scan_iter(match=f"*{route}*"))
            if keys:
                client.delete(*keys)


if __name__ == "__main__":
    main()
