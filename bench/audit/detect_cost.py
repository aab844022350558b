"""Cost of the collector's detection stage per event, on a realistic mix (mostly `http.request`).

Runs ``Detector.committed`` on batches of 1,000 already-logged events, as the collector hands them
over, and prints CPU microseconds per event: the whole mix, and gateway requests alone, with the shipped
Sigma rules and without them. Requests come from 5,000 clients over 10 routes with ids drawn from
100,000 (so most request lines are new to the verdict cache), 5 user agents, and a few percent 4xx.

    .venv/bin/python bench/audit/detect_cost.py [--events 200000]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time

from mix import QUERIES, ROUTES  # the benchmark's own mix (bench/audit/mix.py, beside this script)

from garrison.audit.detect import Detector
from garrison.audit.pipeline import LoggedEvent
from garrison.config.audit_detection import DetectionConfig
from garrison.events.schema import Actor, Event

AGENTS = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148",
    "okhttp/4.12.0",
    "python-httpx/0.28.1",
    "Go-http-client/2.0",
]


def mix(n: int, web_share: float, seed: int = 1) -> list[LoggedEvent]:
    rng = random.Random(seed)
    out: list[LoggedEvent] = []
    t0 = 1_800_000_000.0
    for i in range(n):
        at, ip = t0 + i * 2e-5, f"10.{rng.randrange(20)}.{rng.randrange(250)}.{rng.randrange(1, 250)}"
        if rng.random() < web_share:
            status = rng.choices([200, 304, 404, 401], [90, 6, 3, 1])[0]
            details = {
                "method": "GET",
                "path": rng.choice(ROUTES).format(n=rng.randrange(100_000)),
                "query": rng.choice(QUERIES).format(n=rng.randrange(50)),
                "status": status,
                "user_agent": rng.choice(AGENTS),
                "host": "shop.example",
                "bytes_out": 900,
                "duration_ms": 2.5,
                "route": "api",
            }
            event = Event("gateway", "http.request", "success", Actor(ip=ip), details=details, time=at)
        else:
            kind = rng.choice(["auth.login", "token.refresh", "mesh.edge", "secret.read", "token.issued"])
            actor = Actor(subject=f"user{rng.randrange(5000)}", ip=ip, service="spiffe://shop/orders")
            event = Event("identity", kind, "success", actor, target="payments", time=at)
        out.append(LoggedEvent(i, event, b""))
    return out


def measure(events: list[LoggedEvent], sigma: bool) -> tuple[float, float]:
    """CPU microseconds per event: the whole process, and the event loop's thread alone (SQLite
    evaluates Sigma rules in a worker thread without the GIL)."""

    async def appender(batch: list[Event]) -> list[LoggedEvent]:
        return []

    config = DetectionConfig(sigma_builtin=sigma, baseline_learning=1e9)
    detector = Detector(config, appender)

    async def run() -> tuple[float, float]:
        start, loop_start = time.process_time(), time.thread_time()
        for i in range(0, len(events), 1000):
            await detector.committed(events[i : i + 1000])
        return time.process_time() - start, time.thread_time() - loop_start

    total, loop = asyncio.run(run())
    return total / len(events) * 1e6, loop / len(events) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=200_000)
    n = parser.parse_args().events
    realistic, web_only = mix(n, 0.8), mix(n, 1.0, seed=2)
    for label, events in (("mix (80% http.request)", realistic), ("http.request only", web_only)):
        for sigma in (True, False):
            total, loop = measure(events, sigma)
            state = "on " if sigma else "off"
            print(f"{label:24} sigma={state}: {total:6.2f} us/event CPU ({loop:6.2f} on the event loop)")


if __name__ == "__main__":
    main()
