"""The client side of the gateway: one asyncio Protocol per client connection.

Everything on the hot path is a callback: llhttp (httptools) calls ``on_headers_complete``, which
validates, routes and writes the request head to a pooled upstream connection in the same call;
the upstream's parser calls back ``on_upstream_head/body/complete``, which write straight to the
client. No task, queue or future is created for a request unless a new upstream connection must be
opened. Pipelined requests wait in a queue and are served in order.

A closed connection is freed at once, by reference counting: the parser, which holds bound methods
of the connection, exists only from ``connection_made`` to ``connection_lost``, and
``connection_lost`` drops everything else that could close a cycle (``_release``). A cycle would keep
each dead connection, its transport and, over TLS, uvloop's 256 KiB read buffer and OpenSSL's state
until the cyclic GC's next full collection, which counts objects, not bytes: under connection churn
that was hundreds of megabytes (issue 7; docs/THREAT_MODEL.md, gateway, denial of service).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Coroutine
from time import perf_counter
from typing import TYPE_CHECKING, Any, cast

import httptools

from garrison.gateway.authn import CertificateClient, ClientCertificates
from garrison.gateway.errors import error_response
from garrison.gateway.exchange import (
    BODY_CHUNKED,
    Exchange,
    Rejected,
    response_head,
)
from garrison.gateway.forward import dispatch
from garrison.gateway.head import HeaderCache, build_exchange
from garrison.proxy.http1 import LAST_CHUNK, chunk
from garrison.proxy.state import (
    CLOSED,
    CLOSING,
    IDLE,
    LEGAL,
    READING_BODY,
    READING_HEAD,
    SERVING,
    ConnectionState,
    IllegalTransition,
)
from garrison.proxy.state import ResponsePhase as _Phase
from garrison.tokens.jwt import AuthError

if TYPE_CHECKING:
    from garrison.gateway.runtime import Runtime
    from garrison.gateway.server import GatewayServer
    from garrison.proxy.upstream.pool import UpstreamConnection

PENDING, STARTED, DONE = _Phase.PENDING, _Phase.STARTED, _Phase.DONE

# Why reading from the client is paused; reading resumes when no reason is left.
PAUSE_PIPELINE, PAUSE_BUFFER, PAUSE_UPSTREAM = 1, 2, 4
MAX_BUFFERED_BODY = 256 * 1024
LINGER_SECONDS = 1.0


class _Closed(Exception):
    """Raised from a parser callback to stop parsing input that arrived before a close."""


class ClientConnection(asyncio.Protocol):
    def __init__(self, server: GatewayServer) -> None:
        self.server = server
        self.loop = server.loop
        self.transport: asyncio.Transport | None = None
        # An httptools.HttpRequestParser (untyped, hence Any) from connection_made to connection_lost
        # only: it holds bound methods of this object, a reference cycle (see _release).
        self.parser: Any = None
        self.peer = "0.0.0.0"
        self.paused = 0
        # One state (proxy/state.py): what the connection is reading, and whether it is closing;
        # the server's sweeper enforces the matching timeout against `deadline`.
        self.state = IDLE
        self.deadline = 0.0
        self.head_bytes = 0
        self.url_parts: list[bytes] = []
        self.raw_headers: list[tuple[bytes, bytes]] = []
        self.parsing: Exchange | None = None  # request whose body is being read
        self.active: Exchange | None = None  # request being served
        self.pending: deque[Exchange] = deque()
        self.reject_after: Rejected | None = None
        self.head_size = 0
        # Per-connection caches of work that depends only on values a keep-alive client repeats.
        self.host_seen: bytes | None = None
        self.host_lower = b""
        self.host_key = b""
        self.header_cache: HeaderCache | None = None
        # The client certificate's configured client, resolved once per connection and per config
        # (the certificate cannot change on a connection; a reload can change what it maps to).
        self.certificate_cache: tuple[ClientCertificates, CertificateClient | AuthError] | None = None
        # Output is gathered and written once per event, so a response head and its body leave
        # in one write() system call: on loopback the syscall costs more than all our Python.
        self.out: list[bytes] = []

    # -- asyncio.Protocol -----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        self.parser = httptools.HttpRequestParser(self)
        peer = transport.get_extra_info("peername")
        if peer:
            self.peer = peer[0].removeprefix("::ffff:")
        server = self.server
        if len(server.connections) >= server.max_connections or server.draining:
            server.runtime.metrics.reject("too_many_connections")
            self._send_error(Rejected(503, "too_many_connections"), None, close=True)
            return
        server.connections.add(self)
        self._wait(READING_HEAD, server.runtime.limits.header_timeout)

    def data_received(self, data: bytes) -> None:
        if self.state >= CLOSING:
            return
        if self.parsing is None:
            # Raw bytes of the head being received, whitespace padding included; a head that
            # ends in this read counts up to its blank line. (llhttp would buffer an endless
            # header line; this count is what stops it.)
            end = data.find(b"\r\n\r\n")
            self.head_bytes += len(data) if end < 0 else end + 4
        try:
            self._feed(data)
        finally:
            self.flush()

    def _feed(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            reason = exc.__context__
            if isinstance(reason, _Closed):
                return
            self._refuse(reason if isinstance(reason, Rejected) else Rejected(500, "internal_error"))
            return
        except httptools.HttpParserUpgrade:
            return  # already refused in on_headers_complete
        except httptools.HttpParserError:
            self._refuse(Rejected(400, "bad_request"))
            return
        if self.parsing is None and self.head_bytes > self.server.runtime.limits.max_header_bytes:
            self._refuse(Rejected(431, "header_fields_too_large"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.state = CLOSED  # always legal: the transport is gone whatever the state was
        self.server.connections.discard(self)
        self.server.closed_connections += 1  # when to hand freed memory back (gateway/heap.py)
        active = self.active
        self.active = None
        if active is not None and active.response is not DONE:
            active.close_after = True
            self._drop_upstream(active, reason="client_closed")
            if active.status == 0 or active.response is PENDING:
                active.status = 499  # as nginx logs it: the client went away first
            self._record(active)
        self._release()

    def _release(self) -> None:
        """Drop what could keep this closed connection in a reference cycle (see the module docstring).

        The parser holds bound methods of this object; a refusal kept for later holds a traceback
        whose frames hold this object. The transport goes too: whatever still holds this object for
        a moment (a task finishing) need not hold the TLS state as well.
        """
        self.parser = None
        self.transport = None
        self.reject_after = None
        self.header_cache = None
        self.certificate_cache = None

    def pause_writing(self) -> None:
        active = self.active
        if active is not None and active.upstream is not None:
            active.upstream.pause_reading()

    def resume_writing(self) -> None:
        active = self.active
        if active is not None and active.upstream is not None:
            active.upstream.resume_reading()

    # -- httptools callbacks: the request ---------------------------------------------------------
    def on_message_begin(self) -> None:
        if self.state >= CLOSING:
            raise _Closed
        self.url_parts = []
        self.raw_headers = []
        self.head_size = 0
        if self.state is not READING_HEAD:
            self._wait(READING_HEAD, self.server.runtime.limits.header_timeout)

    def on_url(self, url: bytes) -> None:
        self.url_parts.append(url)
        self.head_size += len(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.raw_headers.append((name, value))
        self.head_size += len(name) + len(value) + 4
        if self.parsing is not None:
            # A trailer of a chunked body: never forwarded, but bounded like a head.
            limits = self.server.runtime.limits
            if self.head_size > limits.max_header_bytes or len(self.raw_headers) > limits.max_headers:
                raise Rejected(431, "header_fields_too_large")

    def on_headers_complete(self) -> None:
        runtime = self.server.runtime
        exchange = build_exchange(self, runtime)  # admission and route (gateway/head.py)
        self.parsing = exchange
        self.head_bytes = 0
        self.head_size = 0  # from here on, on_header sees trailers, counted on their own
        self.raw_headers = []
        if exchange.has_body:
            self._wait(READING_BODY, runtime.limits.body_timeout)
        else:
            self._enter(SERVING)
        if self.active is None:
            self._start(exchange)
        else:
            self.pending.append(exchange)
            self._pause(PAUSE_PIPELINE)

    def on_body(self, body: bytes) -> None:
        exchange = self.parsing
        assert exchange is not None
        exchange.body_seen += len(body)
        limits = self.server.runtime.limits
        if exchange.body_seen > limits.max_body:
            raise Rejected(413, "payload_too_large")
        self.deadline = self.loop.time() + limits.body_timeout
        data = chunk(body) if exchange.body_mode == BODY_CHUNKED else body
        self._forward_body(exchange, data)

    def on_message_complete(self) -> None:
        exchange = self.parsing
        assert exchange is not None
        self.parsing = None
        if exchange.body_mode == BODY_CHUNKED:
            self._forward_body(exchange, LAST_CHUNK)
        exchange.request_done = True
        if self.state is READING_BODY:
            self._enter(SERVING)
        if exchange.response is DONE:
            self.finish(exchange)

    # -- building and starting an exchange -------------------------------------------------------

    def _start(self, exchange: Exchange) -> None:
        self.active = exchange
        exchange.route.chain.run(exchange, self)  # the route's stages (gateway/stages.py)

    # -- what the stages use (gateway/stages.py, policy_stages.py, forward.py) -----------------------
    @property
    def runtime(self) -> Runtime:
        return self.server.runtime

    def now(self) -> float:
        return self.loop.time()

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        self.server.spawn(coro)

    def spawn_slow_path(self, coro: Coroutine[Any, Any, None]) -> None:
        self.server.spawn(coro)

    def serving(self, exchange: Exchange) -> bool:
        return exchange is self.active and self.state < CLOSING

    def certificate_client(self, clients: ClientCertificates) -> CertificateClient:
        cached = self.certificate_cache
        if cached is None or cached[0] is not clients:
            assert self.transport is not None
            peercert: dict[str, Any] | None = self.transport.get_extra_info("peercert")
            try:
                resolved: CertificateClient | AuthError = clients.client_for(peercert)
            except AuthError as refusal:
                resolved = refusal
            cached = self.certificate_cache = (clients, resolved)
        if isinstance(cached[1], AuthError):
            raise cached[1]
        return cached[1]

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
        if exchange.response is DONE:
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
        exchange.response = DONE
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

    def upstream_failed(self, exchange: Exchange, reason: str) -> None:
        target = exchange.target
        assert target is not None
        service = exchange.route.service
        service.failed(target, self.loop.time())
        exchange.cache_fill = None  # a body cut short is never cached
        self.server.runtime.metrics.upstream_error(service.name, target.url, reason)
        if exchange.response is not PENDING:
            exchange.close_after = True  # a body cut short cannot be mended: close so the client sees it
            exchange.response = DONE
            self.finish(exchange)
            return
        if self.state >= CLOSING or exchange is not self.active:
            return
        if service.may_retry(exchange.method, exchange.has_body, exchange.attempts, reason, self.loop.time()):
            dispatch(exchange, self)
            return
        if reason == "timeout":
            self.fail(exchange, 504, "gateway_timeout")
        else:
            self.fail(exchange, 502, "bad_gateway")

    def _drop_upstream(self, exchange: Exchange, reason: str) -> None:
        conn = exchange.upstream
        exchange.upstream = None
        if conn is not None:
            conn.abort()
            if exchange.target is not None:
                exchange.route.service.abandoned(exchange.target, exchange.response is not PENDING)

    # -- finishing ---------------------------------------------------------------------------------
    def answer_preflight(self, exchange: Exchange, head: bytes) -> None:
        """The gateway's own 204 to an allowed CORS preflight; the upstream never sees it."""
        exchange.status = 204
        exchange.response = DONE
        if not exchange.request_done:
            exchange.close_after = True
        runtime = self.server.runtime
        close = b"connection: close\r\n" if exchange.close_after or not exchange.keep_alive else b""
        security = runtime.security_headers + runtime.referrer_policy_line
        self.write(b"".join((head, security, exchange.trace_lines, close, b"\r\n")))
        self.finish(exchange)

    def fail(self, exchange: Exchange, status: int, code: str, extra: bytes = b"") -> None:
        # CORS and RateLimit-* headers go on refusals too, so a page can read why it was refused.
        extra += exchange.extra_response_headers
        exchange.status = status
        exchange.response = DONE
        if not exchange.request_done:
            exchange.close_after = True
        close = exchange.close_after or not exchange.keep_alive
        self._send_error(Rejected(status, code, extra), exchange, close=close)
        self.finish(exchange)

    def finish(self, exchange: Exchange) -> None:
        if self.active is not exchange:
            return
        if not exchange.request_done and not exchange.close_after:
            return  # response done, request body still arriving: finish on message complete
        self._record(exchange)
        self.active = None
        if exchange.close_after or not exchange.keep_alive:
            self._close()
            return
        if self.reject_after is not None:
            self._send_error(self.reject_after, None, close=True)
            return
        if self.pending:
            self._start(self.pending.popleft())
            if not self.pending:
                self._resume(PAUSE_PIPELINE)
        elif self.state is SERVING:
            # Nothing of the next request read yet. (A head already begun keeps its header timeout.)
            self._wait(IDLE, self.server.runtime.limits.keepalive_timeout)

    def _record(self, exchange: Exchange) -> None:
        self.server.record(exchange)

    def _refuse(self, rejection: Rejected) -> None:
        """A request that fails validation: answer it (after any response in progress) and close."""
        self.server.runtime.metrics.reject(rejection.code)
        self._pause(PAUSE_PIPELINE)
        active = self.active
        if active is not None:
            if self.parsing is active and active.response is not DONE:
                # The body of the request being served is broken: the upstream gets no more of it.
                self._drop_upstream(active, reason="bad_request")
                if active.response is PENDING:
                    self.fail(active, rejection.status, rejection.code, rejection.extra_headers)
                else:
                    self._close()
                return
            self.reject_after = rejection
            return
        self._send_error(rejection, self.parsing, close=True)
        if self.parsing is not None:
            self.parsing.status = rejection.status
            self._record(self.parsing)
        else:
            # Refused before it became an exchange (bad framing, bad target, no route...): it is
            # still logged, with what is known safely about it.
            self.server.record_refusal(rejection.client_ip or self.peer, rejection.status, rejection.code)

    def _send_error(self, rejection: Rejected, exchange: Exchange | None, close: bool) -> None:
        runtime = self.server.runtime
        self.write(
            error_response(
                rejection.status,
                rejection.code,
                request_id=exchange.request_id if exchange is not None else None,
                security_headers=runtime.security_headers + runtime.referrer_policy_line,
                close=close,
                extra_headers=rejection.extra_headers,
                head_only=exchange is not None and exchange.method == b"HEAD",
            )
        )
        if close:
            self._close()

    # -- small helpers -----------------------------------------------------------------------------
    def write(self, data: bytes) -> None:
        self.out.append(data)

    def flush(self) -> None:
        out = self.out
        if not out:
            return
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        if self.transport is not None and self.state < CLOSING:
            self.transport.write(data)

    def _close(self) -> None:
        if self.state < CLOSING and self.transport is not None:
            self.flush()
            self.server.connections.discard(self)
            if self.parsing is not None and self.transport.can_write_eof():
                self._enter(CLOSING)
                # Answered before the request body was all read: closing now, with unread bytes,
                # would send a TCP reset that can destroy the answer in flight. Half-close, keep
                # reading (and discarding) for a moment, then close (nginx's "lingering close").
                self.transport.write_eof()
                self.loop.call_later(LINGER_SECONDS, self.transport.close)
            else:
                self._enter(CLOSED)
                self.transport.close()
        active = self.active
        if active is not None and active.upstream is not None:
            self._drop_upstream(active, reason="client_closed")

    def _wait(self, state: ConnectionState, timeout: float) -> None:
        """Enter a state whose timeout runs from now."""
        self._enter(state)
        self.deadline = self.loop.time() + timeout

    def _enter(self, state: ConnectionState) -> None:
        if state not in LEGAL[self.state]:
            raise IllegalTransition(self.state, state)
        self.state = state

    def _pause(self, reason: int) -> None:
        if not self.paused and self.transport is not None and self.state < CLOSING:
            self.transport.pause_reading()
        self.paused |= reason

    def _resume(self, reason: int) -> None:
        if not self.paused & reason:
            return
        self.paused &= ~reason
        if not self.paused and self.transport is not None and self.state < CLOSING:
            self.transport.resume_reading()

    # -- timeouts, driven by the server's sweeper --------------------------------------------------
    def check_deadlines(self, now: float) -> None:
        active = self.active
        if active is not None and active.upstream is not None and active.response is not DONE:
            conn = active.upstream
            if now - conn.last_read > active.route.service.read_timeout:
                active.upstream = None
                conn.abort()
                self.upstream_failed(active, "timeout")
                self.flush()
                return
        state = self.state
        if state is SERVING or state >= CLOSING or now < self.deadline:
            return
        if state is IDLE:
            self._close()
        else:
            self._refuse(Rejected(408, "request_timeout"))
        self.flush()

    def close_if_idle(self) -> None:
        """Drain: close a keep-alive connection that has no request in flight."""
        if self.active is None and self.parsing is None and not self.pending:
            self._close()
