"""The client side of the gateway: one asyncio Protocol per client connection.

Everything on the hot path is a callback: llhttp (httptools) calls ``on_headers_complete``, which
admits and routes the request (gateway/head.py) and runs the route's chain of stages
(gateway/stages.py), the last of which writes the request head to a pooled upstream connection, all
in the same call;
the upstream's parser calls back ``on_upstream_head/body/complete``, which write straight to the
client. No task, queue or future is created for a request unless a new upstream connection must be
opened (or a stage must wait for Redis or a key set). Pipelined requests wait in a queue and are
served in order.

A closed connection is freed at once, by reference counting: the parser, which holds bound methods
of the connection, exists only from ``connection_made`` to ``connection_lost``, and
``connection_lost`` drops everything else that could close a cycle (``_release``). A cycle would keep
each dead connection, its transport and, over TLS, uvloop's 256 KiB read buffer and OpenSSL's state
until the cyclic GC's next full collection, which counts objects, not bytes: under connection churn
that was hundreds of megabytes (issue 7; docs/THREAT_MODEL.md, gateway, denial of service).
"""

from __future__ import annotations

import asyncio
from typing import cast

import httptools

from garrison.gateway.exchange import Rejected
from garrison.gateway.forward import ForwardingConnection
from garrison.gateway.head import build_exchange
from garrison.proxy.connection import PAUSE_PIPELINE
from garrison.proxy.exchange import BODY_CHUNKED
from garrison.proxy.http1 import LAST_CHUNK, chunk
from garrison.proxy.state import (
    CLOSED,
    CLOSING,
    IDLE,
    LEGAL,
    READING_BODY,
    READING_HEAD,
    SERVING,
    IllegalTransition,
)
from garrison.proxy.state import ResponsePhase as _Phase

PENDING, DONE = _Phase.PENDING, _Phase.DONE


class _Closed(Exception):
    """Raised from a parser callback to stop parsing input that arrived before a close."""


class ClientConnection(ForwardingConnection):
    """The parser callbacks and the connection's life; the rest is in its bases:
    ``ForwardingConnection`` (gateway/forward.py: upstream dispatch and response),
    ``AnsweringConnection`` (gateway/answers.py: per-request state, answers, the stages' host) and
    ``ProxyConnection`` (proxy/connection.py: state machine, flow control, output)."""

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
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            reason = exc.__context__
            if not isinstance(reason, _Closed):
                self._refuse(reason if isinstance(reason, Rejected) else Rejected(500, "internal_error"))
        except httptools.HttpParserUpgrade:
            pass  # already refused in on_headers_complete
        except httptools.HttpParserError:
            self._refuse(Rejected(400, "bad_request"))
        else:
            if self.parsing is None and self.head_bytes > self.server.runtime.limits.max_header_bytes:
                self._refuse(Rejected(431, "header_fields_too_large"))
        self.flush()  # everything the callbacks wrote, in one write (proxy/connection.py)

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
        elif SERVING in LEGAL[self.state]:  # _enter(SERVING), inlined: once a request
            self.state = SERVING
        else:
            raise IllegalTransition(self.state, SERVING)
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
