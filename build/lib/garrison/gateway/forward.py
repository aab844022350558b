"""The last stage of every route, and the client connection's upstream half (part 2).

``UpstreamStage`` hands the exchange to an upstream target.
Last because everything before it may answer instead (a preflight, a limit, a refused credential, a
cache hit), and an upstream attempt is the most costly thing the gateway does. The target and its
in-flight count come from the route's ``UpstreamService`` (proxy/upstream/service.py); an idle
pooled connection is used in the same callback, and only a new connection is a task.

``ForwardingConnection`` is the part of the client connection that talks to the upstream: it
sends the head and body, and receives the upstream's response events (it is the pool's
``UpstreamListener``), writing them straight to the client. Retries go back through ``dispatch``.
"""

from __future__ import annotations

from time import perf_counter
from typing import TYPE_CHECKING, Protocol

from garrison.gateway.answers import AnsweringConnection
from garrison.gateway.exchange import response_head
from garrison.pki.workload_tls import PeerIdentityMismatch
from garrison.proxy.connection import MAX_BUFFERED_BODY, PAUSE_BUFFER, PAUSE_UPSTREAM
from garrison.proxy.http1 import CONTINUE_LINE, LAST_CHUNK, chunk
from garrison.proxy.stages import DONE, ChainHost, Verdict
from garrison.proxy.state import CLOSING
from garrison.proxy.state import ResponsePhase as _Phase
from garrison.telemetry import logging as log

if TYPE_CHECKING:
    from collections.abc import Coroutine
    from typing import Any

    from garrison.gateway.exchange import Exchange
    from garrison.proxy.upstream.pool import UpstreamConnection
    from garrison.proxy.upstream.target import Target

PENDING, STARTED, DONE_PHASE = _Phase.PENDING, _Phase.STARTED, _Phase.DONE


class ForwardHost(ChainHost["Exchange"], Protocol):
    """What dispatching needs from the client connection."""

    def fail(self, exchange: Exchange, status: int, code: str, extra: bytes = b"") -> None: ...
    def write(self, data: bytes) -> None: ...
    def now(self) -> float: ...
    def spawn(self, coro: Coroutine[Any, Any, None]) -> None: ...
    # -- the request, on its way up ------------------------------------------------------------------
    def send_upstream(self, exchange: Exchange, conn: UpstreamConnection) -> None: ...
    def upstream_failed(self, exchange: Exchange, reason: str) -> None: ...
    def mesh_mismatch(self, exchange: Exchange) -> None: ...


class UpstreamStage:
    name = "upstream"

    def check(self, exchange: Exchange, host: ForwardHost) -> Verdict:
        # 1xx responses are not for HTTP/1.0 clients (RFC 9110 §15.2).
        if exchange.expect_continue and exchange.has_body and exchange.http11 and not exchange.request_done:
            host.write(CONTINUE_LINE)
        now = host.now()
        exchange.route.service.record_request(now)
        dispatch(exchange, host, now)
        return DONE


def dispatch(exchange: Exchange, host: ForwardHost, now: float) -> None:
    """One attempt (the first, or a retry): pick a target and send on an idle or new connection."""
    service = exchange.route.service
    target = service.pick(now, exchange.target)
    if target is None:
        retry_after = service.retry_after(now)
        host.fail(exchange, 503, "service_unavailable", b"retry-after: %d\r\n" % retry_after)
        return
    exchange.target = target
    exchange.attempts += 1
    conn = service.pools[target].take_idle()
    if conn is not None:
        host.send_upstream(exchange, conn)
    else:
        host.spawn(_connect(exchange, host, target))


async def _connect(exchange: Exchange, host: ForwardHost, target: Target) -> None:
    service = exchange.route.service
    pool = service.pools[target]
    try:
        conn = await pool.connect()
    except PeerIdentityMismatch as exc:  # a sidecar presenting another identity: nothing was sent
        log.warn("gateway.mesh.peer_mismatch", service=service.name, target=target.url, message=str(exc))
        host.mesh_mismatch(exchange)
        host.flush()
        return
    except (OSError, TimeoutError) as exc:
        reason = "connect_timeout" if isinstance(exc, TimeoutError) else "connect_error"
        host.upstream_failed(exchange, reason)
        host.flush()
        return
    if not host.serving(exchange):
        pool.release(conn)
        service.abandoned(target, response_started=False)
        return
    host.send_upstream(exchange, conn)
    host.flush()


class ForwardingConnection(AnsweringConnection):
    """The client connection's upstream half: it sends the request on, and is the pool's
    ``UpstreamListener`` for the response, which it writes straight to the client."""

    # -- back-pressure between the two sides ------------------------------------------------------
    def pause_writing(self) -> None:
        active = self.active
        if active is not None and active.upstream is not None:
            active.upstream.pause_reading()

    def resume_writing(self) -> None:
        active = self.active
        if active is not None and active.upstream is not None:
            active.upstream.resume_reading()

    # -- the request, on its way up ------------------------------------------------------------------
    def send_upstream(self, exchange: Exchange, conn: UpstreamConnection) -> None:
        assert exchange.target is not None
        exchange.upstream = conn
        exchange.upstream_start = perf_counter()
        head = exchange.upstream_head(exchange.target, self.server.runtime.preserve_host)
        if exchange.body_buffer:
            head = b"".join((head, *exchange.body_buffer))
            exchange.body_buffer = []
            exchange.buffered = 0
            self._resume(PAUSE_BUFFER)
        conn.start(self, head, head_only=exchange.method == b"HEAD")

    def _forward_body(self, exchange: Exchange, data: bytes) -> None:
        if exchange is self.active and exchange.upstream is not None:
            exchange.upstream.write(data)
            return
        if exchange.response is DONE_PHASE:
            return  # the upstream already answered; the rest of the body is read and dropped
        exchange.body_buffer.append(data)
        exchange.buffered += len(data)
        if exchange.buffered > MAX_BUFFERED_BODY:
            self._pause(PAUSE_BUFFER)

    # -- upstream callbacks (UpstreamListener) ---------------------------------------------------
    def on_upstream_head(self, status: int, headers: list[tuple[bytes, bytes]], chunked: bool) -> None:
        exchange = self.active
        assert exchange is not None and exchange.target is not None
        exchange.route.service.response_head(exchange.target, status, self.loop.time())
        if self.server.draining:
            exchange.keep_alive = False  # tell the client, so it reconnects to a live process
        exchange.status = status
        exchange.response = STARTED
        exchange.upstream_time = perf_counter() - exchange.upstream_start
        runtime = self.server.runtime
        self.write(
            response_head(
                exchange, status, headers, chunked, runtime.security_headers, runtime.referrer_policy_line
            )
        )
        if exchange.cache is not None and exchange.cache_request is not None:
            ttl = exchange.route.cache_ttl
            assert ttl is not None
            exchange.cache_fill = exchange.cache.start_fill(exchange.cache_request, status, headers, ttl)

    def on_upstream_body(self, data: bytes) -> None:
        exchange = self.active
        if exchange is None or self.transport is None:
            return
        exchange.bytes_out += len(data)
        self.out.append(chunk(data) if exchange.rechunk else data)
        fill = exchange.cache_fill
        if fill is not None and not fill.add(data):
            exchange.cache_fill = None  # too large to cache

    def on_upstream_complete(self, keep_alive: bool) -> None:
        exchange = self.active
        assert exchange is not None and exchange.target is not None
        conn = exchange.upstream
        exchange.upstream = None
        exchange.route.service.responded(exchange.target)
        if exchange.rechunk:
            self.write(LAST_CHUNK)
        if exchange.cache_fill is not None:
            exchange.cache_fill.commit()  # the whole body arrived
            exchange.cache_fill = None
        if conn is not None:
            if keep_alive and exchange.request_done:
                conn.pool.release(conn)
            else:
                conn.abort()
        exchange.response = DONE_PHASE
        if not exchange.request_done:
            exchange.close_after = True  # the rest of the request body would have to be drained
        self.finish(exchange)

    def on_upstream_failed(self, reason: str) -> None:
        exchange = self.active
        if exchange is not None:
            exchange.upstream = None
            self.upstream_failed(exchange, reason)

    def on_upstream_writable(self, writable: bool) -> None:
        if writable:
            self._resume(PAUSE_UPSTREAM)
        else:
            self._pause(PAUSE_UPSTREAM)

    def mesh_mismatch(self, exchange: Exchange) -> None:
        """The sidecar presented another SPIFFE ID: 502 at once, never retried (it would say the same)."""
        target = exchange.target
        assert target is not None
        service = exchange.route.service
        service.failed(target, self.loop.time())
        self.server.runtime.metrics.upstream_error(service.name, target.url, "identity_mismatch")
        if self.state < CLOSING and exchange is self.active:
            self.fail(exchange, 502, "bad_gateway")

    def upstream_failed(self, exchange: Exchange, reason: str) -> None:
        target = exchange.target
        assert target is not None
        service = exchange.route.service
        service.failed(target, self.loop.time())
        exchange.cache_fill = None  # a body cut short is never cached
        self.server.runtime.metrics.upstream_error(service.name, target.url, reason)
        if exchange.response is not PENDING:
            exchange.close_after = True  # a body cut short cannot be mended: close so the client sees it
            exchange.response = DONE_PHASE
            self.finish(exchange)
            return
        if self.state >= CLOSING or exchange is not self.active:
            return
        if service.may_retry(exchange.method, exchange.has_body, exchange.attempts, reason, self.loop.time()):
            dispatch(exchange, self, self.loop.time())
            return
        if reason == "timeout":
            self.fail(exchange, 504, "gateway_timeout")
        else:
            self.fail(exchange, 502, "bad_gateway")
