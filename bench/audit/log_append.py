"""Audit log append throughput: events/s that EventLog makes durable (encoded, hashed into the chain
and the Merkle tree head, written, fsync'd), in batches of 1,000 small events.

Two shapes: one appender awaiting each batch (one write + one fsync per batch), and ``--concurrency``
appenders at once (group commit: batches that arrive during a write share the next write and fsync).
Events are built before the clock starts (the caller's cost, not the log's). The log lives in a fresh
directory under ``--dir`` (default: the system temporary directory; use a directory on the disk the
collector's state_dir is on, since fsync cost is the disk's). ``measure`` is the reusable part.

    .venv/bin/python bench/audit/log_append.py [--batches 200] [--batch-size 1000] [--concurrency 8]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from garrison.audit.log import EventLog
from garrison.events.schema import Actor, Event


def small_event(number: int) -> Event:
    """About 300 bytes on the wire: a failed login with an actor and two details."""
    return Event(
        component="identity",
        type="auth.login",
        outcome="failure",
        actor=Actor(subject=f"user{number % 100}", ip=f"198.51.100.{number % 250}"),
        details={"reason": "bad_password", "n": number},
    )


async def _run(directory: Path, batches: list[list[Event]], concurrency: int) -> float:
    log = await EventLog.open(directory)
    queue = list(reversed(batches))

    async def worker() -> None:
        while queue:
            await log.append(queue.pop())

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    await log.close()
    return elapsed


def measure(root: Path, batches: int, batch_size: int, concurrency: int) -> dict[str, Any]:
    """Append ``batches`` batches of ``batch_size`` events with ``concurrency`` appenders in a fresh
    log under ``root``; events/s and batches/s."""
    prepared = [[small_event(b * batch_size + i) for i in range(batch_size)] for b in range(batches)]
    with tempfile.TemporaryDirectory(dir=root) as directory:
        elapsed = asyncio.run(_run(Path(directory), prepared, concurrency))
        size = sum(f.stat().st_size for f in Path(directory).glob("segment-*"))
    events = batches * batch_size
    return {
        "concurrency": concurrency,
        "batch_size": batch_size,
        "events": events,
        "seconds": round(elapsed, 3),
        "events_per_s": round(events / elapsed),
        "batches_per_s": round(batches / elapsed, 1),
        "bytes_per_event": round(size / events),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()))
    parser.add_argument("--core", type=int, default=None, help="Pin to this CPU core.")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.core is not None:
        os.sched_setaffinity(0, {args.core})
    results = [measure(args.dir, args.batches, args.batch_size, n) for n in (1, args.concurrency)]
    if args.json:
        print(json.dumps(results, indent=2))
        return
    for r in results:
        print(
            f"{r['concurrency']} appender(s), batches of {r['batch_size']}: {r['events_per_s']:,} events/s "
            f"({r['batches_per_s']} batches/s, {r['bytes_per_event']} bytes/event, {r['events']:,} events "
            f"in {r['seconds']} s)"
        )


if __name__ == "__main__":
    main()
