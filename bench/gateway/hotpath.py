"""Python cost of one proxied request, without sockets.

Feeds a typical keep-alive request and its upstream response through the gateway's real
``ClientConnection`` and ``UpstreamConnection`` objects, with stub transports that only count
writes, and prints microseconds per request for the plain proxy and for each security step (a JWT route
with a warm token cache, a memory rate limit), with the access log on and off. It isolates the
Python work (parsing callbacks, routing, header rewriting, bookkeeping, logging) from system calls
and the event loop, to tell where a throughput gap in bench/gateway/run.py comes from.

    .venv/bin/python bench/gateway/hotpath.py [--requests N] [--clock wall|cpu] [--audit]

``--audit`` adds an ``audit`` section (every request an ``http.request`` event, the emitter not
started, so nothing leaves the process): the first figure is then the request path with the event
handed over (``Emitter.defer``: a tuple), and a second figure the emitter's pump building and
serializing the queued events, per request, which it does off the request's latency but on the same
core.

``--clock cpu`` times with ``time.process_time`` (CPU seconds of this process), which other work on
a shared machine disturbs less than the wall clock does.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import jwt
import uvloop
from cryptography.hazmat.primitives.asymmetric import ec

from garrison.config.loader import parse_config
from garrison.gateway.proxy import ClientConnection
from garrison.gateway.server import GatewayServer
from garrison.proxy.upstream.pool import UpstreamConnection

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
  jwt: {{issuer: "http://issuer.test", jwks_url: "http://127.0.0.1:9/jwks", audiences: [bench]}}
services:
  api: {{targets: ["http://127.0.0.1:9"]}}
routes:
  - match: {{path: /api, prefix: true}}
    service: api
    auth: {auth}
{rate_limit}
{audit}
"""
AUDIT = """audit:
  listen: 127.0.0.1:9
  emitter: {memory_max: 1000000}
"""
BATCH = 1000  # audit.emitter.batch_max's default
RATE_LIMIT = "    rate_limit: {rate: 10000000/minute, key: ip, strategy: fixed_window}"
# (label, route auth, route rate limit): the plain proxy, then each security step on its own.
VARIANTS = (
    ("plain", "{require: none}", ""),
    ("jwt", "{require: jwt, scopes: [bench]}", ""),
    ("rate limit", "{require: none}", RATE_LIMIT),
    ("jwt + rate limit", "{require: jwt, scopes: [bench]}", RATE_LIMIT),
)


def bench_token() -> tuple[dict[str, Any], str]:
    """A public JWK and one ES256 access token signed with its key, both made now."""
    key = ec.generate_private_key(ec.SECP256R1())
    jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
    jwk.update(kid="bench", alg="ES256", use="sig")
    now = int(time.time())
    claims = {"iss": "http://issuer.test", "aud": "bench", "sub": "bench", "scope": "bench"}
    token = jwt.encode(
        {**claims, "iat": now, "exp": now + 3600}, key, "ES256", headers={"kid": "bench", "typ": "at+jwt"}
    )
    return jwk, token


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


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


async def measure(
    config: str, request: bytes, jwk: dict[str, Any], requests: int, clock: str = "wall"
) -> tuple[float, float]:
    """Microseconds per request: the request path, and (with audit) the pump's serialization."""
    server = GatewayServer(parse_config(config), asyncio.get_running_loop(), audit_instance="bench")
    assert server.runtime.jwks is not None
    server.runtime.jwks.load({"keys": [jwk]})  # as if fetched: no network in this measurement
    service = next(iter(server.runtime.services.values()))
    pool = service.pools[service.targets[0]]
    upstream = UpstreamConnection(pool)
    upstream.connection_made(StubTransport())  # type: ignore[arg-type]
    pool.idle.append(upstream)
    client = ClientConnection(server)
    client.connection_made(StubTransport())  # type: ignore[arg-type]
    client.data_received(request)  # warm the caches (header block, token) like a keep-alive client
    upstream.data_received(RESPONSE)
    now = CLOCKS[clock]
    emitter: Any = server.emitter
    queue = getattr(emitter, "_queue", None)
    if queue is not None:
        queue.clear()
    elapsed = pumped = 0.0
    done = 0
    while done < requests:
        chunk = min(BATCH, requests - done)  # the pump takes a batch about this often
        started = now()
        for _ in range(chunk):
            client.data_received(request)
            upstream.data_received(RESPONSE)
        elapsed += now() - started
        done += chunk
        if queue:
            assert len(queue) == chunk, len(queue)
            started = now()
            while queue:
                emitter._take()  # what the pump does with a batch before it posts it
            pumped += now() - started
    server.access_log.close()
    return elapsed / requests * 1e6, pumped / requests * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=50_000)
    parser.add_argument(
        "--clock", choices=sorted(CLOCKS), default="wall", help="wall = perf_counter, cpu = process_time"
    )
    parser.add_argument("--audit", action="store_true", help="every request an http.request event")
    args = parser.parse_args()
    jwk, token = bench_token()
    request = REQUEST.replace(b"\r\n\r\n", b"\r\nAuthorization: Bearer %s\r\n\r\n" % token.encode())
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp) / "state"
        for log_label, log in (
            ("log on", f"{{path: {Path(tmp) / 'access.log'}}}"),
            ("log off", "{enabled: false}"),
        ):
            for label, auth, rate_limit in VARIANTS:
                config = CONFIG.format(
                    state=state,
                    access_log=log,
                    auth=auth,
                    rate_limit=rate_limit,
                    audit=AUDIT if args.audit else "",
                )
                micros, pump = uvloop.run(measure(config, request, jwk, args.requests, args.clock))
                line = f"{label:17} {log_label:8} {micros:6.2f} µs of Python per proxied request"
                if args.audit:
                    line += f", + {pump:5.2f} µs in the audit pump"
                print(f"{line} ({args.clock})")


if __name__ == "__main__":
    main()
