"""The HTTP/1.1 connection both sides of the sidecar share, on the proxy core: its parser callbacks
and its life.

``RelayConnection`` is a ``ProxyConnection`` (proxy/connection.py: the one state machine, flow
control, output gathered and written once) driven by llhttp's callbacks. A request is parsed and
normalised (mesh/sidecar/request.py), its body buffered, then handed to the side's ``handle``
(inbound: the policy; outbound: the peer), which answers it (answers.py) or forwards it
(forward.py). Requests on one connection are answered in order; a pipelined one waits in ``pending``.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, cast

import httptools

from garrison.mesh.sidecar.forward import ForwardingRelay
from garrison.mesh.sidecar.request import Reject, Request, split_headers
from garrison.proxy.connection import PAUSE_PIPELINE
from garrison.proxy.state import CLOSED, CLOSING, IDLE, READING_BODY, READING_HEAD, SERVING
from garrison.proxy.state import ResponsePhase as Phase
from garrison.uri.normalize import TargetRejected, parse_request_target

if TYPE_CHECKING:
    pass

__all__ = ["RelayConnection"]

MAX_HEADERS, MAX_HEAD_BYTES, MAX_BODY = 100, 64 * 1024, 8 * 1024 * 1024
HEADER_TIMEOUT, BODY_TIMEOUT = 10.0, 30.0
CONTINUE_LINE = b"HTTP/1.1 100 Continue\r\n\r\n"


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
            if headers.expect_continue and self.active is None:
                # The body is buffered here before anything goes upstream: let the client send it
                # now rather than after its own timeout (curl waits a second).
                self.write(CONTINUE_LINE)
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

    def _refuse(self, reject: Reject) -> None:
        """A request refused while parsing: answered, then the connection closes."""
        request = self.parsing or Request(
            b"-", b"", None, split_headers([]), False
        )  # nothing of it is logged
        self.parsing = None
        request.close_after = True
        if self.active is not None:
            self._close()  # an answer is in progress: the refusal cannot be sent in order
            return
        self.active = request
        self.side.refused(request, reject.error)
        self.answer_json(request, reject.status, reject.error, "the request was refused")

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
