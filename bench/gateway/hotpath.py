"""Python cost of one proxied request, without sockets.

Feeds a typical keep-alive request and its upstream response through the gateway's real
``ClientConnection`` and ``UpstreamConnection`` objects, with stub transports that only count
writes, and prints microseconds per request: with the access log on and off. It isolates the
Python work (parsing callbacks, routing, header rewriting, bookkeeping, logging) from system calls
and the event loop, to tell where a throughput gap in bench/gateway/run.py comes from.

    .venv/bin/python bench/gateway/hotpath.py [--requests N]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

import uvloop

from garrison.config.loader import parse_config
from garrison.gateway.proxy import ClientConnection
from garrison.gateway.server import GatewayServer
from garrison.gateway.upstream.pool import UpstreamConnection

REQUEST = (
    b"GET /api/orders/123?x=1 HTTP/1.1\r\nHost: localhost:8443\r\nUser-Agent: wrk\r\nAccept: */*\r\n\r\n"
)
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nServer: nginx\r\nDate: Sun, 22 Nov 2026 06:34:03 GMT\r\n"
    b"Content-Type: application/json\r\nContent-Length: 11\r\nConnection: keep-alive\r\n\r\n"
    b'{"ok":true}'
)
CONFIG = """
state_dir: {state}
gateway:
  listen: 127.0.0.1:0
  tls: {{insecure_disable: true}}
  access_log: {access_log}
services:
  api: {{targets: ["http://127.0.0.1:9"]}}
routes:
  - {{match: {{path: /api, prefix: true}}, service: api, auth: {{require: none}}}}
"""


class StubTransport:
    def __init__(self) -> None:
        self.writes = 0

    def write(self, data: bytes) -> None:
        self.writes += 1

    def get_extra_info(self, name: str) -> Any:
        return ("127.0.0.1", 40000)

    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...
    def close(self) -> None: ...
    def abort(self) -> None: ...
    def is_closing(self) -> bool:
        return False


async def measure(access_log: str, requests: int, state: Path) -> float:
    loaded = parse_config(CONFIG.format(state=state, access_log=access_log))
    server = GatewayServer(loaded, asyncio.get_running_loop())
    service = next(iter(server.runtime.services.values()))
    pool = service.pools[service.targets[0]]
    upstream = UpstreamConnection(pool)
    upstream.connection_made(StubTransport())  # type: ignore[arg-type]
    pool.idle.append(upstream)
    client = ClientConnection(server)
    client.connection_made(StubTransport())  # type: ignore[arg-type]
    started = time.perf_counter()
    for _ in range(requests):
        client.data_received(REQUEST)
        upstream.data_received(RESPONSE)
    elapsed = time.perf_counter() - started
    server.access_log.close()
    return elapsed / requests * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=50_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        log_on = f"{{path: {Path(tmp) / 'access.log'}}}"
        for label, setting in (("access log on", log_on), ("access log off", "{enabled: false}")):
            micros = uvloop.run(measure(setting, args.requests, Path(tmp) / "state"))
            print(f"{label:15} {micros:6.2f} µs of Python per proxied request ({args.requests:,} requests)")


if __name__ == "__main__":
    main()
