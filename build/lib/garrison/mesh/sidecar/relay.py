"""The HTTP/1.1 connection both sides of the sidecar share, on the proxy core: its parser callbacks
and its life.

``RelayConnection`` is a ``ProxyConnection`` (proxy/connection.py: the one state machine, flow
control, output gathered and written once) driven by llhttp's callbacks. A request is parsed and
normalised (mesh/sidecar/request.py) and, at the end of its head, handed to the side's ``handle``
(inbound: the policy; outbound: the peer), which answers it (answers.py) or forwards it
(forward.py): a refused call is answered before a byte of its body is read, an allowed one goes
upstream at once and its body streams after it, with no size limit (memory is bounded by flow
control, not by a cap). Requests on one connection are answered in order; a pipelined one waits in
``pending``, its body held until its turn (bounded: reading pauses).

Timeouts (the side's sweeper, ``check_deadlines``): the head and the gap between body reads are the
client's; while the connection does not read (paused: the upstream is not draining, or an earlier
request is answered) the client's clock stops and the upstream's read timeout runs instead.
"""

from __future__ import annotations

import asyncio
from typing import cast

import httptools

from garrison.mesh.sidecar.answers import KEEPALIVE_TIMEOUT
from garrison.mesh.sidecar.forward import ForwardingRelay
from garrison.mesh.sidecar.request import Reject, Request, split_headers
from garrison.proxy.connection import PAUSE_PIPELINE, PAUSE_UPSTREAM
from garrison.proxy.http1 import LAST_CHUNK, chunk
from garrison.proxy.state import CLOSED, CLOSING, IDLE, READING_BODY, READING_HEAD, SERVING
from garrison.proxy.state import ResponsePhase as Phase
from garrison.uri.normalize import TargetRejected, parse_request_target

__all__ = ["RelayConnection"]

MAX_HEADERS, MAX_HEAD_BYTES = 100, 64 * 1024
HEADER_TIMEOUT, BODY_TIMEOUT = 10.0, 30.0  # BODY_TIMEOUT: between two reads of a body


class _Closed(Exception):
    """Raised from a parser callback to stop parsing input that arrived after a close."""


class RelayConnection(ForwardingRelay):
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
        version = parser.get_http_version()
        if version not in ("1.1", "1.0"):
            raise Reject(505, "http_version_not_supported")
        try:
            target = parse_request_target(self.url)
        except TargetRejected as exc:
            raise Reject(exc.status, "bad_request") from None
        if target.authority is not None:
            raise Reject(400, "bad_request")  # a service calls in origin form
        headers = split_headers(self.raw_headers)
        query = target.query if target.has_query else None
        request = Request(parser.get_method(), target.path, query, headers, bool(parser.should_keep_alive()))
        # 1xx answers are not for HTTP/1.0 clients (RFC 9110, 15.2).
        request.expect_continue = headers.expect_continue and request.has_body and version == "1.1"
        self.parsing = request
        self.raw_headers, self.head_size = [], 0  # from here on, on_header counts trailers alone
        if request.has_body:
            self._wait(READING_BODY, BODY_TIMEOUT)
        else:
            self._enter(SERVING)
        if self.active is None:
            self._start(request)  # decided now, before any of the body is read
        else:
            self.pending.append(request)
            self._pause(PAUSE_PIPELINE)

    def on_body(self, body: bytes) -> None:
        request = self.parsing
        if request is None or self.state >= CLOSING:
            return  # answered and closing: the rest is dropped
        request.body_size += len(body)
        self.deadline = self.loop.time() + BODY_TIMEOUT
        self.forward_body(request, chunk(body) if request.headers.chunked else body)

    def on_message_complete(self) -> None:
        request = self.parsing
        self.parsing = None
        if request is None or self.state >= CLOSING:
            return
        if request.headers.chunked:
            self.forward_body(request, LAST_CHUNK)  # our own last chunk: client trailers are dropped
        request.request_done = True
        if self.state is READING_BODY:
            self._enter(SERVING)
        # (A request answered before its body ended has closed the connection: see finish.)
        if self.active is None and self.state is SERVING:
            self._wait(IDLE, KEEPALIVE_TIMEOUT)  # answered at its head, before this callback

    def _refuse(self, reject: Reject) -> None:
        """A request refused while parsing (its head, its body, a timeout): answered, then close."""
        request, active = self.parsing, self.active
        if active is not None:
            if request is active and active.response is not Phase.DONE:
                # The body of the request being forwarded broke off: the upstream gets no more.
                self._drop_upstream(active)
                active.close_after = True
                if active.response is Phase.PENDING:
                    self.answer_json(active, reject.status, reject.error, "the request was refused")
                else:
                    active.response = Phase.DONE  # its answer had started: the close says it all
                    self.finish(active)
                return
            self._close(linger=True)  # an answer is in progress: the refusal cannot be sent in order
            return
        if request is None:
            request = Request(b"-", b"", None, split_headers([]), False)  # nothing of it is logged
        request.close_after = True
        self.active = request
        self.side.refused(request, reject.error)
        self.answer_json(request, reject.status, reject.error, "the request was refused")

    # -- timeouts (the side's sweeper) ----------------------------------------------------------------
    def check_deadlines(self, now: float) -> None:
        if self._upstream_timed_out(now):
            return
        state = self.state
        if state is SERVING or state >= CLOSING:
            return
        if self.paused and state is not IDLE:
            # Not reading (flow control, pipelining): the client cannot be late. Its clock
            # starts again, in full, once reading resumes.
            self.deadline = now + (BODY_TIMEOUT if state is READING_BODY else HEADER_TIMEOUT)
            return
        if now < self.deadline:
            return
        if state is IDLE:
            self._close()
        else:
            self._refuse(Reject(408, "request_timeout"))
        self.flush()

    def _upstream_timed_out(self, now: float) -> bool:
        """The active request's upstream read timeout: a 504 (or a close) when it has passed.

        Its clock runs once the request is all sent, or while the upstream stops draining the
        body; while the client is still sending, the body timeout is the client's."""
        request = self.active
        if request is None or request.upstream is None or request.service is None:
            return False
        if not (request.request_done or self.paused & PAUSE_UPSTREAM):
            return False
        conn = request.upstream
        if now - max(conn.last_read, request.sent_at) <= request.service.read_timeout:
            return False
        request.upstream = None
        conn.abort()
        self._upstream_detached()
        self.upstream_failed(request, "timeout")
        self.flush()
        return True

    def close_if_idle(self) -> None:
        """Drain: close a keep-alive connection with nothing in flight."""
        if self.active is None and self.parsing is None and not self.pending:
            self._close()
