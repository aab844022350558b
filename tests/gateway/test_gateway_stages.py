"""The gateway's request path as stages: each route's compiled chain, and its answers, without sockets.

The chains are compiled from real garrison.yaml text (parse_config + build_runtime); the stages run
against a recording host in place of the client connection.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Iterator
from time import perf_counter
from typing import Any

import pytest

from garrison.config.loader import parse_config
from garrison.events.emitter import NullEmitter
from garrison.gateway.audit import GatewayAudit
from garrison.gateway.exchange import Exchange
from garrison.gateway.policy_stages import AuthStage, RateLimitStage
from garrison.gateway.runtime import Route, Runtime, build_runtime
from garrison.proxy.exchange import BODY_NONE
from garrison.proxy.upstream.pool import UpstreamConnection
from garrison.telemetry.metrics import GatewayMetrics

CONFIG = """
state_dir: {state}
gateway:
  listen: 127.0.0.1:0
  tls: {{insecure_disable: true}}
  jwt: {{issuer: "http://issuer.test", jwks_url: "http://127.0.0.1:9/jwks", audiences: [t]}}
services:
  api: {{targets: ["http://127.0.0.1:9"]}}
routes:
  - name: plain
    match: {{path: /plain}}
    service: api
    auth: {{require: none}}
  - name: everything
    match: {{path: /everything}}
    service: api
    auth: {{require: jwt}}
    cors: {{allow_origins: ["https://app.example"]}}
    rate_limit:
      - {{rate: 5/minute, key: client}}
      - {{rate: 1/minute, key: ip, strategy: fixed_window}}
      - {{rate: 100/minute, key: route}}
    cache: {{ttl: 60}}
  - name: limited
    match: {{path: /limited}}
    service: api
    auth: {{require: none}}
    rate_limit: {{rate: 1/minute, key: ip, strategy: fixed_window}}
  - name: cached
    match: {{path: /cached}}
    service: api
    auth: {{require: none}}
    cache: {{ttl: 60}}
"""


@pytest.fixture
def runtime(tmp_path: Any) -> Iterator[Runtime]:
    loop = asyncio.new_event_loop()
    config = parse_config(CONFIG.format(state=tmp_path / "state")).config
    try:
        yield build_runtime(config, loop, GatewayMetrics())
    finally:
        loop.close()


def route(runtime: Runtime, name: str) -> Route:
    for entries in (*runtime.routes.exact.values(), *runtime.routes.prefixes.values()):
        for entry in entries:
            if entry.payload.name == name:
                return entry.payload
    raise KeyError(name)


def exchange_for(target: Route, *, authorization: list[bytes] | None = None) -> Exchange:
    return Exchange(
        method=b"GET",
        path=b"/x",
        request_line=b"GET /x HTTP/1.1\r\n",
        host=b"gw.test",
        http11=True,
        keep_alive=True,
        start=perf_counter(),
        route=target,
        client_ip="192.0.2.7",
        request_id=b"r1",
        trace_id=b"0" * 32,
        body_mode=BODY_NONE,
        content_length=0,
        head_rest=b"\r\n",
        trace_lines=b"",
        authorization=authorization or [],
        api_key=[],
        query=b"",
    )


class Host:
    """Stands in for the client connection: records what the stages answer or send upstream."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.failures: list[tuple[int, str, bytes]] = []
        self.sent: list[Exchange] = []
        self.spawned: list[Coroutine[Any, Any, None]] = []
        self.written: list[bytes] = []
        self.preflights: list[bytes] = []
        self.audit = GatewayAudit(NullEmitter(), "none", b"")  # the stages report refused tokens to it

    def fail(self, exchange: Exchange, status: int, code: str, extra: bytes = b"") -> None:
        self.failures.append((status, code, extra + exchange.extra_response_headers))

    def send_upstream(self, exchange: Exchange, conn: UpstreamConnection) -> None:
        self.sent.append(exchange)

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        self.spawned.append(coro)  # a new upstream connection: not opened in these tests
        coro.close()

    spawn_slow_path = spawn

    def answer_preflight(self, exchange: Exchange, head: bytes) -> None:
        self.preflights.append(head)

    def serving(self, exchange: Exchange) -> bool:
        return True

    def upstream_failed(self, exchange: Exchange, reason: str) -> None:
        raise AssertionError(reason)

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def finish(self, exchange: Exchange) -> None: ...
    def flush(self) -> None: ...

    def now(self) -> float:
        return 0.0


def test_each_route_compiles_only_the_stages_it_needs(runtime: Runtime) -> None:
    assert route(runtime, "plain").chain.names == ("upstream",)
    assert route(runtime, "limited").chain.names == ("rate-limit", "upstream")
    assert route(runtime, "cached").chain.names == ("cache", "upstream")
    # Address and route limits before authentication, client limits after it, the cache after both.
    assert route(runtime, "everything").chain.names == (
        "cors-preflight",
        "rate-limit",
        "rate-limit",
        "auth",
        "rate-limit",
        "cache",
        "upstream",
    )


def test_limits_are_split_around_authentication(runtime: Runtime) -> None:
    stages = route(runtime, "everything").chain.stages
    limits = [stage for stage in stages if isinstance(stage, RateLimitStage)]
    assert [stage.key for stage in limits] == ["ip", "route", "client"]
    assert [stage.last for stage in limits] == [False, False, True]  # headers once the last counted
    auth = next(stage for stage in stages if isinstance(stage, AuthStage))
    assert auth.held_rate_headers  # a refused credential still carries the address limits' headers


def test_a_plain_route_dispatches_to_an_idle_connection(runtime: Runtime) -> None:
    target = route(runtime, "plain")
    service = target.service
    pool = service.pools[service.targets[0]]
    idle = UpstreamConnection(pool)
    pool.idle.append(idle)
    host, exchange = Host(runtime), exchange_for(target)
    target.chain.run(exchange, host)
    assert host.sent == [exchange] and host.failures == []
    assert exchange.target is service.targets[0] and exchange.attempts == 1
    assert service.targets[0].in_flight == 1  # counted by the UpstreamService, not the connection


def test_a_new_upstream_connection_is_a_task(runtime: Runtime) -> None:
    target = route(runtime, "plain")
    host = Host(runtime)
    target.chain.run(exchange_for(target), host)
    assert host.sent == [] and len(host.spawned) == 1


def test_an_exceeded_limit_answers_429_before_the_upstream(runtime: Runtime) -> None:
    target = route(runtime, "limited")
    host = Host(runtime)
    target.chain.run(exchange_for(target), host)  # the one request a minute allowed
    assert host.failures == [] and len(host.spawned) == 1
    refused = exchange_for(target)
    target.chain.run(refused, host)
    assert [(status, code) for status, code, _ in host.failures] == [(429, "too_many_requests")]
    assert b"ratelimit" in host.failures[0][2].lower()  # why, for the client
    assert len(host.spawned) == 1  # the refused request never reached dispatch


def test_a_missing_token_is_refused_with_the_held_rate_headers(runtime: Runtime) -> None:
    target = route(runtime, "everything")
    host = Host(runtime)
    target.chain.run(exchange_for(target), host)
    [(status, code, extra)] = host.failures
    assert (status, code) == (401, "unauthorized")
    assert b"www-authenticate" in extra.lower()
    assert b"ratelimit" in extra.lower()  # the address limits counted before the refusal
    assert host.spawned == [] and host.sent == []


def test_a_preflight_is_answered_before_limits_and_credentials(runtime: Runtime) -> None:
    target = route(runtime, "everything")
    host = Host(runtime)
    preflight = exchange_for(target)
    preflight.preflight = b"HTTP/1.1 204 No Content\r\n"
    for _ in range(3):  # more than the address limit allows: a preflight is not counted
        target.chain.run(preflight, host)
    assert host.preflights == [b"HTTP/1.1 204 No Content\r\n"] * 3
    assert host.failures == []
