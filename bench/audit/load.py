"""The load of bench/audit/run.py, one process on the load core: prints one JSON object when done.

- ``emit``: ``--emitters`` real ``AuditEmitter``s (one keep-alive TLS connection each, the emit
  token, batches of ``batch_max``) deliver ``--events`` events of the mix. The lines are serialized
  before the clock starts and handed over with ``defer`` (the way the gateway's hot path hands over a
  line it built), so the load core spends its time on delivery, not on JSON. ``start`` is the wall
  time of the first emit.
- ``alerts``: a background of the mix at ``--rate`` events/s through one emitter, and every
  ``--every`` seconds a burst of ``--burst`` failed ``auth.login`` from a fresh address through
  another (as the identity provider would send them), built and stamped when emitted.
- ``tcp``: the same lines as ``emit``, newline-terminated, over ``--connections`` plain TCP
  connections to ``--port`` (rsyslog's imptcp).

    python bench/audit/load.py emit --config garrison.yaml --events 100000 [--emitters 4]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import mix

from garrison.config.loader import load_config
from garrison.events.emitter import AuditEmitter
from garrison.events.schema import Actor, Event
from garrison.events.settings import emitter_settings

TIMEOUT = 120.0


def _emitters(config: Path, count: int, component: str) -> list[AuditEmitter]:
    settings = emitter_settings(load_config(config).config)
    if settings is None:
        raise SystemExit(f"{config}: no audit section")
    return [AuditEmitter(settings, component, f"bench-{n}") for n in range(count)]


def _lines(count: int, seed: int, emitters: int) -> list[list[bytes]]:
    """The mix serialized, dealt out to the emitters in turn."""
    dealt: list[list[bytes]] = [[] for _ in range(emitters)]
    for number, event in enumerate(mix.events(count, seed, "bench")):
        dealt[number % emitters].append(event.to_json())
    return dealt


def _line(line: bytes) -> bytes:
    return line


async def emit(args: argparse.Namespace) -> dict[str, Any]:
    dealt = _lines(args.events, args.seed, args.emitters)
    emitters = _emitters(args.config, args.emitters, "gateway")
    for emitter in emitters:
        await emitter.start()
    start, cpu = time.time(), time.process_time()
    for emitter, lines in zip(emitters, dealt, strict=True):
        for line in lines:
            emitter.defer(_line, line)
    deadline = time.monotonic() + TIMEOUT
    while sum(e.stats.delivered for e in emitters) < args.events and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    delivered_at, cpu = time.time(), time.process_time() - cpu
    for emitter in emitters:
        await emitter.close()
    return {
        "start": start,
        "delivered_at": delivered_at,
        "load_cpu_seconds": cpu,  # the load process's CPU from the first emit to the last delivery
        "delivered": sum(e.stats.delivered for e in emitters),
        "dropped": sum(sum(e.stats.dropped.values()) for e in emitters),
    }


async def alerts(args: argparse.Namespace) -> dict[str, Any]:
    background, attacker = _emitters(args.config, 2, "identity")
    await background.start()
    await attacker.start()
    pool = mix.events(max(1, int(args.rate * args.seconds)), args.seed, "bench")
    bursts: list[dict[str, Any]] = []
    started = time.monotonic()
    sent, tick = 0, 0.01
    while (elapsed := time.monotonic() - started) < args.seconds:
        due = min(len(pool), int(elapsed * args.rate))
        for event in pool[sent:due]:
            background.emit(event)
        sent = due
        if elapsed >= args.every * (len(bursts) + 1) - args.every / 2:
            ip = f"203.0.113.{len(bursts) + 1}"
            burst = [
                Event(
                    "identity",
                    "auth.login",
                    "failure",
                    Actor(subject=f"victim{n}", ip=ip),
                    details={"reason": "bad_password"},
                )
                for n in range(args.burst)
            ]
            for event in burst:
                attacker.emit(event)
            bursts.append({"ip": ip, "times": {e.id: e.time for e in burst}})
        await asyncio.sleep(tick)
    await asyncio.sleep(2.0)  # the last burst's alert: well under the window of its rule
    await background.close()
    await attacker.close()
    return {"bursts": bursts, "background": sent, "delivered": background.stats.delivered}


def tcp(args: argparse.Namespace) -> dict[str, Any]:
    dealt = _lines(args.events, args.seed, args.connections)
    chunks = [b"".join(line + b"\n" for line in lines) for lines in dealt]
    sockets = [socket.create_connection(("127.0.0.1", args.port)) for _ in chunks]
    start = time.time()
    views = [memoryview(chunk) for chunk in chunks]
    for sock in sockets:
        sock.setblocking(False)
    offsets = [0] * len(views)
    while any(offset < len(view) for offset, view in zip(offsets, views, strict=True)):
        for number, (sock, view) in enumerate(zip(sockets, views, strict=True)):
            if offsets[number] < len(view):
                try:
                    offsets[number] += sock.send(view[offsets[number] : offsets[number] + 262_144])
                except BlockingIOError:
                    time.sleep(0.0005)
    sent_at = time.time()
    for sock in sockets:
        sock.close()
    return {"start": start, "sent_at": sent_at, "bytes": sum(len(c) for c in chunks)}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("mode", choices=("emit", "alerts", "tcp"))
    parser.add_argument("--config", type=Path, help="the emitters' garrison.yaml (emit, alerts)")
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--emitters", type=int, default=4, help="emitters (connections), emit mode")
    parser.add_argument("--connections", type=int, default=4, help="TCP connections, tcp mode")
    parser.add_argument("--port", type=int, help="rsyslog's port, tcp mode")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--rate", type=float, default=2000.0, help="background events/s, alerts mode")
    parser.add_argument("--seconds", type=float, default=12.0, help="alerts mode: how long")
    parser.add_argument("--every", type=float, default=3.0, help="alerts mode: seconds between bursts")
    parser.add_argument("--burst", type=int, default=25, help="alerts mode: failed sign-ins per burst")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.mode == "tcp":
        result = tcp(args)
    else:
        result = asyncio.run(emit(args) if args.mode == "emit" else alerts(args))
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
