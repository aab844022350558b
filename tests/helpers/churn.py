"""Connection churn against a gateway, and the gateway's RSS after each round (issue 7, item 2).

A round, as the issue describes the attack: ``count`` idle keep-alive connections (one request
each, all held open together, then closed by the client), ``count`` slowloris connections (a head
that never ends, cut by the gateway's ``header_timeout``), and ``count`` normal requests, each on
a fresh connection. At most ``batch`` connections are opened at once. Everything is bounded: a
round opens exactly ``3 * count`` connections, each ends by a gateway timeout or by the client,
and a round that takes longer than ROUND_TIMEOUT fails.

Used by tests/gateway/test_gateway_churn.py, and by hand for the before/after figures:

    .venv/bin/python tests/helpers/churn.py --rounds 3 --count 3000 --batch 200

which starts a recording upstream and a TLS gateway (``cert: auto``, ``header_timeout: 0.5s``)
and prints the gateway's RSS once each round has settled.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ssl
import sys
import tempfile
import urllib.request
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway_harness import GatewayProcess, RecordingUpstream, base_config, deep_merge, wait_until
from prometheus_client.parser import text_string_to_metric_families

KEEP_ALIVE_REQUEST = b"GET /churn HTTP/1.1\r\nHost: gateway.test\r\n\r\n"
CLOSE_REQUEST = b"GET /churn HTTP/1.1\r\nHost: gateway.test\r\nConnection: close\r\n\r\n"
SLOWLORIS_HEAD = b"GET /churn HTTP/1.1\r\nHost: gateway.test\r\nX-Slow: "  # never finished
ROUND_TIMEOUT = 120.0  # far above a healthy round (seconds): a hung gateway fails instead of hanging
SETTLE_TIMEOUT = 15.0  # for the gateway to see every close and trim after a round


@dataclass
class RoundResult:
    """What one kind of connection saw in a round; callers check it, so a round that did nothing
    (every connection refused, say) cannot pass for a quiet gateway."""

    kind: str
    opened: int = 0
    statuses: Counter[int] = field(default_factory=Counter)


async def _status_of(reader: asyncio.StreamReader) -> int:
    line = await reader.readline()
    parts = line.split(b" ", 2)
    return int(parts[1]) if len(parts) >= 2 and parts[1].isdigit() else 0


async def _read_response(reader: asyncio.StreamReader) -> int:
    """The status of one Content-Length response, its body read too, so the connection is idle."""
    status = await _status_of(reader)
    length = 0
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    await reader.readexactly(length)
    return status


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()


async def _in_batches(count: int, batch: int, one: Callable[[], Awaitable[None]]) -> None:
    done = 0
    while done < count:
        size = min(batch, count - done)
        await asyncio.gather(*(one() for _ in range(size)))
        done += size


async def idle_round(port: int, count: int, batch: int, tls: ssl.SSLContext | None) -> RoundResult:
    """``count`` keep-alive connections, one request each, all held open together, then closed."""
    result = RoundResult("idle")
    writers: list[asyncio.StreamWriter] = []

    async def one() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=tls)
        writers.append(writer)
        result.opened += 1
        writer.write(KEEP_ALIVE_REQUEST)
        result.statuses[await _read_response(reader)] += 1

    try:
        await _in_batches(count, batch, one)
    finally:
        await asyncio.gather(*(_close(writer) for writer in writers))
    return result


async def slowloris_round(port: int, count: int, batch: int, tls: ssl.SSLContext | None) -> RoundResult:
    """``count`` connections sending a head that never ends; each reads the gateway's answer."""
    result = RoundResult("slowloris")

    async def one() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=tls)
        result.opened += 1
        try:
            writer.write(SLOWLORIS_HEAD)
            result.statuses[await _status_of(reader)] += 1
            await reader.read()  # until the gateway closes
        finally:
            await _close(writer)

    await _in_batches(count, batch, one)
    return result


async def normal_round(port: int, count: int, batch: int, tls: ssl.SSLContext | None) -> RoundResult:
    """``count`` requests, each on a fresh connection that the gateway closes after answering."""
    result = RoundResult("normal")

    async def one() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=tls)
        result.opened += 1
        try:
            writer.write(CLOSE_REQUEST)
            result.statuses[await _status_of(reader)] += 1
            await reader.read()
        finally:
            await _close(writer)

    await _in_batches(count, batch, one)
    return result


async def _churn_round(port: int, count: int, batch: int, tls: ssl.SSLContext | None) -> list[RoundResult]:
    async with asyncio.timeout(ROUND_TIMEOUT):
        return [
            await idle_round(port, count, batch, tls),
            await slowloris_round(port, count, batch, tls),
            await normal_round(port, count, batch, tls),
        ]


def churn_round(port: int, count: int, batch: int, tls: ssl.SSLContext | None) -> list[RoundResult]:
    """One round (idle, slowloris, normal), run to its end on a fresh event loop."""
    return asyncio.run(_churn_round(port, count, batch, tls))


# -- the gateway under test ---------------------------------------------------------------------------
def churn_config(directory: Path, upstream_port: int, tls: bool = True) -> dict[str, Any]:
    """The test config with TLS (what makes each connection cost memory) and room for the churn."""
    overrides: dict[str, Any] = {
        "gateway": {
            # 0.5 s cuts a slowloris head quickly and still leaves a loaded machine time for a
            # TLS handshake and a one-line request.
            "limits": {"header_timeout": "0.5s", "max_connections": 10000},
            "access_log": {"path": str(directory / "access.log")},
        },
    }
    if tls:
        overrides["gateway"]["tls"] = {"cert": "auto", "insecure_disable": False}
    return deep_merge(base_config(directory, upstream_port), overrides)


def rss_kib(pid: int) -> int:
    """Resident set size of process ``pid`` in KiB, as the kernel counts it (/proc, VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def _gauges(gateway: GatewayProcess) -> dict[str, float]:
    url = f"http://127.0.0.1:{gateway.admin_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:  # loopback admin listener
        text = response.read().decode()
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if not sample.labels
    }


def settle(gateway: GatewayProcess) -> dict[str, float]:
    """Wait until the gateway has seen every connection close and, where it trims its heap (see
    src/garrison/gateway/heap.py), has trimmed since the last close. Both numbers come from one
    scrape, so there is no window between them. A gateway without the heap metric (before issue 7)
    is settled once nothing is open. Returns the scrape's unlabelled samples."""

    def settled() -> dict[str, float] | None:
        gauges = _gauges(gateway)
        quiet = gauges["garrison_gateway_open_connections"] == 0
        trimmed = gauges.get("garrison_gateway_heap_trim_pending_connections", 0) == 0
        return gauges if quiet and trimmed else None

    gauges = wait_until(settled, timeout=SETTLE_TIMEOUT, interval=0.05)
    assert gauges is not None, f"gateway did not settle: {_gauges(gateway)}"
    return gauges


def gateway_pid(gateway: GatewayProcess) -> int:
    assert gateway.proc is not None
    return gateway.proc.pid


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--count", type=int, default=3000, help="connections of each kind per round")
    parser.add_argument("--batch", type=int, default=200, help="connections opened at once")
    parser.add_argument("--plain", action="store_true", help="plaintext HTTP instead of TLS")
    args = parser.parse_args()
    upstream = RecordingUpstream().start()
    with tempfile.TemporaryDirectory(prefix="garrison-churn-") as tmp:
        gateway = GatewayProcess(Path(tmp), churn_config(Path(tmp), upstream.port, tls=not args.plain))
        try:
            gateway.start()
            tls = None if args.plain else ssl.create_default_context(cafile=str(gateway.ca_path))
            pid = gateway_pid(gateway)
            print(f"started: rss {rss_kib(pid) / 1024:.1f} MiB", flush=True)
            for number in range(1, args.rounds + 1):
                results = churn_round(gateway.port, args.count, args.batch, tls)
                gauges = settle(gateway)
                seen = "; ".join(f"{r.kind} {r.opened} opened, {dict(r.statuses)}" for r in results)
                trims = gauges.get("garrison_gateway_heap_trims_total", "n/a")
                print(
                    f"round {number}: rss {rss_kib(pid) / 1024:.1f} MiB (trims {trims}; {seen})", flush=True
                )
        finally:
            gateway.stop()
            upstream.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
