"""The HTTP/1.1 connection both sides of the sidecar share, on the proxy core.

``RelayConnection`` is a ``ProxyConnection`` (proxy/connection.py: the one state machine, flow
control, output gathered and written once) driven by llhttp's callbacks. A request is parsed and
normalised (mesh/sidecar/request.py), its body buffered, then handed to the side's ``handle``
(inbound: the policy; outbound: the peer). ``forward`` then takes it to an ``UpstreamService``
(proxy/upstream/service.py): pick (counted in flight), an idle pooled connection or a new one, and
exactly one of responded / failed / abandoned; retries of idempotent bodiless requests within the
service's budget. The response is streamed back as the upstream's parser produces it.

Requests on one connection are answered in order; a pipelined one waits in ``pending``.
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from typing import TYPE_CHECKING, cast

import httptools

from garrison.mesh.sidecar.request import Reject, Request, split_headers
from garrison.proxy.connection import PAUSE_PIPELINE, PAUSE_UPSTREAM, ProxyConnection
from garrison.proxy.http1 import HOP_BY_HOP, LAST_CHUNK, chunk, status_line
from garrison.proxy.state import CLOSED, CLOSING, IDLE, READING_BODY, READING_HEAD, SERVING
from garrison.proxy.state import ResponsePhase as Phase
from garrison.uri.normalize import TargetRejected, parse_request_target

if TYPE_CHECKING:
    from garrison.mesh.sidecar.server import Side
    from garrison.proxy.upstream.pool import TargetPool, UpstreamConnection

__all__ = ["RelayConnection"]

MAX_HEADERS, MAX_HEAD_BYTES, MAX_BODY = 100, 64 * 1024, 8 * 1024 * 1024
HEADER_TIMEOUT, BODY_TIMEOUT, KEEPALIVE_TIMEOUT = 10.0, 30.0, 75.0
_RESPONSE_DROPPED = HOP_BY_HOP | {b"content-length"}


class _Closed(Exception):
    """Raised from a parser callback to stop parsing input that arrived after a close."""


class RelayConnection(ProxyConnection):
    def __init__(self, side: Side) -> None:
        super().__init__(side.loop)
        self.side = side
        self.url = b""
        self.raw_headers: list[tuple[bytes, bytes]] = []
        self.head_size = 0
        self.parsing: Request | None = None
        self.active: Request | None = None
        self.pending: deque[Request] = deque()

    # -- the side's decision ---------------------------------------------------------------------
    def handle(self, request: Request) -> None:
        """Answer the request, or ``forward`` it (inbound: policy; outbound: peer)."""
        raise NotImplementedError

    # -- asyncio.Protocol ------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.parser = httptools.HttpRequestParser(self)
        peer = transport.get_extra_info("peername")
        if peer:
            self.peer = str(peer[0])
        self.side.connections.add(self)
        self._wait(READING_HEAD, HEADER_TIMEOUT)

    def data_received(self, data: bytes) -> None:
        if self.state >= CLOSING:
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            reason = exc.__context__
            if not isinstance(reason, _Closed):
                self._refuse(reason if isinstance(reason, Reject) else Reject(500, "internal_error"))
        except httptools.HttpParserUpgrade:
            self._refuse(Reject(501, "not_implemented"))
        except httptools.HttpParserError:
            self._refuse(Reject(400, "bad_request"))
        self.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.state = CLOSED  # always legal: the transport is gone
        self.side.connections.discard(self)
        active, self.active = self.active, None
        if active is not None and active.response is not Phase.DONE:
            self._drop_upstream(active)
            active.status = active.status if active.response is Phase.STARTED else 499
            self.side.record(active)
        self.pending.clear()
        self.parser = None  # it holds bound methods of this object: no cycle outlives the connection
        self.transport = None

    def pause_writing(self) -> None:
        if self.active is not None and self.active.upstream is not None:
            self.active.upstream.pause_reading()

    def resume_writing(self) -> None:
        if self.active is not None and self.active.upstream is not None:
            self.active.upstream.resume_reading()

    # -- llhttp callbacks --------------------------------------------------------------------------
    def on_message_begin(self) -> None:
        if self.state >= CLOSING:
            raise _Closed
        self.url, self.raw_headers, self.head_size = b"", [], 0
        if self.state is not READING_HEAD:
            self._wait(READING_HEAD, HEADER_TIMEOUT)

    def on_url(self, url: bytes) -> None:
        self.url += url
        self.head_size += len(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.raw_headers.append((name, value))
        self.head_size += len(name) + len(value) + 4
        if self.head_size > MAX_HEAD_BYTES or len(self.raw_headers) > MAX_HEADERS:
            raise Reject(431, "header_fields_too_large")

    def on_headers_complete(self) -> None:
        parser = self.parser
        if parser.should_upgrade() or parser.get_method() == b"CONNECT":
            raise Reject(501, "not_implemented")
        if parser.get_http_version() not in ("1.1", "1.0"):
            raise Reject(505, "http_version_not_supported")
        try:
            target = parse_request_target(self.url)
        except TargetRejected as exc:
            raise Reject(exc.status, "bad_request") from None
        if target.authority is not None:
            raise Reject(400, "bad_request")  # a service calls in origin form
        headers = split_headers(self.raw_headers)
        if (headers.content_length or 0) > MAX_BODY:
            raise Reject(413, "payload_too_large")
        query = target.query if target.has_query else None
        request = Request(parser.get_method(), target.path, query, headers, bool(parser.should_keep_alive()))
        self.parsing = request
        self.raw_headers = []
        if headers.chunked or headers.content_length:
            self._wait(READING_BODY, BODY_TIMEOUT)
        else:
            self._enter(SERVING)

    def on_body(self, body: bytes) -> None:
        request = self.parsing
        assert request is not None
        request.body_size += len(body)
        if request.body_size > MAX_BODY:
            raise Reject(413, "payload_too_large")
        request.body.append(body)
        self.deadline = self.loop.time() + BODY_TIMEOUT

    def on_message_complete(self) -> None:
        request = self.parsing
        assert request is not None
        self.parsing = None
        request.request_done = True
        if self.state is READING_BODY:
            self._enter(SERVING)
        if self.active is None:
            self._start(request)
        else:
            self.pending.append(request)
            self._pause(PAUSE_PIPELINE)

    def _start(self, request: Request) -> None:
        self.active = request
        self.handle(request)

    # -- answers ------------------------------------------------------------------------------------
    def answer_json(self, request: Request, status: int, error: str, message: str) -> None:
        """The sidecar's own answer: a JSON body ``{"error", "message"}``."""
        body = json.dumps({"error": error, "message": message}).encode()
        request.status = status
        self.write(
            b"".join(
                (
                    status_line(status),
                    b"content-type: application/json\r\ncontent-length: %d\r\n" % len(body),
                    request.trace,
                    b"connection: close\r\n" if request.close_after else b"",
                    b"\r\n",
                    b"" if request.method == b"HEAD" else body,
                )
            )
        )
        request.response = Phase.DONE
        self.finish(request)

    def _refuse(self, reject: Reject) -> None:
        """A request refused while parsing: answered, then the connection closes."""
        request = self.parsing or Request(b"GET", b"/", None, split_headers([]), False)
        self.parsing = None
        request.close_after = True
        if self.active is not None:
            self._close()  # an answer is in progress: the refusal cannot be sent in order
            return
        self.active = request
        self.side.refused(request, reject.error)
        self.answer_json(request, reject.status, reject.error, "the request was refused")

    def finish(self, request: Request) -> None:
        """The answer is complete: log it, then the next request, keep-alive, or close."""
        if request is not self.active:
            return
        self.active = None
        self.side.record(request)
        if request.close_after or self.side.draining or self.state >= CLOSING:
            self._close()
            return
        if self.pending:
            self._resume(PAUSE_PIPELINE)
            self._start(self.pending.popleft())
        elif self.parsing is None and self.state is SERVING:
            self._wait(IDLE, KEEPALIVE_TIMEOUT)

    def _close(self) -> None:
        if self.transport is not None and self.state < CLOSING:
            self._close_transport(linger=self.parsing is not None)

    def serving(self, request: Request) -> bool:
        return request is self.active and self.state < CLOSING

    # -- to the upstream ------------------------------------------------------------------------------
    def forward(self, request: Request, head: bytes) -> None:
        """Send ``head`` (and the body) to ``request.service``; ``expected_peer`` set: over mTLS."""
        assert request.service is not None
        request.upstream_head = head
        request.service.record_request(self.loop.time())
        self.dispatch(request)

    def dispatch(self, request: Request) -> None:
        service = request.service
        assert service is not None
        target = service.pick(self.loop.time(), request.target)
        if target is None:
            self.answer_json(request, 503, "unavailable", f"{request.peer or 'the app'} is unavailable")
            return
        request.target = target
        request.attempts += 1
        pool = service.pools[target]
        conn = pool.take_idle()
        if conn is not None:
            self._send(request, conn)
        else:
            self.side.spawn(self._connect(request, pool))

    async def _connect(self, request: Request, pool: TargetPool) -> None:
        target = request.target
        assert target is not None and request.service is not None
        if request.expected_peer is not None:
            pool.ssl_context = self.side.client_context()  # the identity's current one, never a copy
        try:
            conn = await pool.connect()
        except (OSError, TimeoutError) as exc:  # ssl.SSLError is an OSError
            if not self.serving(request):
                request.service.abandoned(target, response_started=False)
                return
            self.side.upstream_error(request, type(exc).__name__)
            self.upstream_failed(request, "connect")
            self.flush()
            return
        if not self.serving(request):
            pool.release(conn)
            request.service.abandoned(target, response_started=False)
            return
        if request.expected_peer is not None and not self.side.verify_peer(request, conn):
            conn.abort()
            request.service.failed(target, self.loop.time())
            self.answer_json(request, 502, "bad_gateway", f"{request.peer} presented another identity")
            self.flush()
            return
        self._send(request, conn)
        self.flush()

    def _send(self, request: Request, conn: UpstreamConnection) -> None:
        request.upstream = conn
        conn.start(self, request.upstream_head, head_only=request.method == b"HEAD")

    def _drop_upstream(self, request: Request) -> None:
        conn, request.upstream = request.upstream, None
        if conn is not None:
            conn.abort()
        if request.target is not None and request.service is not None and conn is not None:
            request.service.abandoned(request.target, request.response is not Phase.PENDING)

    # -- from the upstream (proxy/upstream/pool.UpstreamListener) ---------------------------------------
    def on_upstream_head(self, status: int, headers: list[tuple[bytes, bytes]], chunked: bool) -> None:
        request = self.active
        assert request is not None and request.target is not None and request.service is not None
        request.service.response_head(request.target, status, self.loop.time())
        request.status = status
        request.response = Phase.STARTED
        length = next((value for name, value in headers if name.lower() == b"content-length"), None)
        bodiless = request.method == b"HEAD" or status in (204, 304)
        request.rechunk = not bodiless and (chunked or length is None)
        lines = [status_line(status)]
        lines += [b"%s: %s\r\n" % (n, v) for n, v in headers if n.lower() not in _RESPONSE_DROPPED]
        if request.rechunk:
            lines.append(b"transfer-encoding: chunked\r\n")
        elif length is not None:
            lines.append(b"content-length: %s\r\n" % length)
        if request.close_after or self.side.draining:
            request.close_after = True
            lines.append(b"connection: close\r\n")
        lines.append(b"\r\n")
        self.write(b"".join(lines))

    def on_upstream_body(self, data: bytes) -> None:
        request = self.active
        if request is not None and self.transport is not None:
            self.out.append(chunk(data) if request.rechunk else data)

    def on_upstream_complete(self, keep_alive: bool) -> None:
        request = self.active
        assert request is not None and request.target is not None and request.service is not None
        conn, request.upstream = request.upstream, None
        request.service.responded(request.target)
        if request.rechunk:
            self.write(LAST_CHUNK)
        if conn is not None:
            if keep_alive:
                conn.pool.release(conn)
            else:
                conn.abort()
        request.response = Phase.DONE
        self.finish(request)

    def on_upstream_failed(self, reason: str) -> None:
        request = self.active
        if request is not None:
            request.upstream = None
            self.upstream_failed(request, reason)

    def on_upstream_writable(self, writable: bool) -> None:
        if writable:
            self._resume(PAUSE_UPSTREAM)
        else:
            self._pause(PAUSE_UPSTREAM)

    def upstream_failed(self, request: Request, reason: str) -> None:
        """An attempt failed: retried when idempotent and within budget, else 502 (504 on timeout)."""
        service, target = request.service, request.target
        assert service is not None and target is not None
        now = self.loop.time()
        service.failed(target, now)
        if request.response is not Phase.PENDING:
            request.close_after = True  # a body cut short cannot be mended: the client must see it
            request.response = Phase.DONE
            self.finish(request)
            return
        if self.state >= CLOSING or request is not self.active:
            return
        if service.may_retry(request.method, request.body_size > 0, request.attempts, reason, now):
            self.dispatch(request)
        elif reason == "timeout":
            self.answer_json(request, 504, "gateway_timeout", f"{request.peer or 'the app'} timed out")
        else:
            self.answer_json(request, 502, "bad_gateway", f"{request.peer or 'the app'} is unreachable")

    # -- timeouts (the side's sweeper) ----------------------------------------------------------------
    def check_deadlines(self, now: float) -> None:
        request = self.active
        if request is not None and request.upstream is not None and request.service is not None:
            conn = request.upstream
            if now - conn.last_read > request.service.read_timeout:
                request.upstream = None
                conn.abort()
                self.upstream_failed(request, "timeout")
                self.flush()
                return
        state = self.state
        if state is SERVING or state >= CLOSING or now < self.deadline:
            return
        if state is IDLE:
            self._close()
        elif self.active is None:
            self._refuse(Reject(408, "request_timeout"))
        self.flush()

    def close_if_idle(self) -> None:
        """Drain: close a keep-alive connection with nothing in flight."""
        if self.active is None and self.parsing is None and not self.pending:
            self._close()
