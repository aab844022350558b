"""One request through the sidecar: its head as parsed and normalised, and its upstream attempt.

The head is parsed by llhttp (httptools) with the proxy core's rules on top (proxy/http1.py: framing;
garrison.uri: the request target, normalised once, decided on and forwarded as decided). Headers that
describe the connection, the framing the sidecar redoes, and every Garrison-owned header
(``garrison-*``, ``x-garrison-*``) are dropped here: the caller's identity the app sees is only ever
the one the sidecar adds from the verified certificate.
"""

from __future__ import annotations

from time import perf_counter
from typing import TYPE_CHECKING

from garrison.proxy.http1 import (
    HOP_BY_HOP,
    OWNED_PREFIX,
    BadFraming,
    check_transfer_encoding,
    connection_tokens,
    parse_content_length,
)
from garrison.proxy.state import ResponsePhase
from garrison.proxy.trace import request_id_for, trace_for

if TYPE_CHECKING:
    from garrison.proxy.upstream.pool import UpstreamConnection
    from garrison.proxy.upstream.service import UpstreamService
    from garrison.proxy.upstream.target import Target

__all__ = ["OWNED_HEADER_PREFIX", "Reject", "Request", "split_headers"]

OWNED_HEADER_PREFIX = b"garrison-"
# Set by the sidecar itself; a copy from the client is dropped.
SIDECAR_SET = frozenset({b"host", b"content-length", b"x-request-id", b"traceparent"})


class Reject(Exception):
    """A request refused before it reached any policy (framing, target, limits)."""

    def __init__(self, status: int, error: str) -> None:
        super().__init__(error)
        self.status = status
        self.error = error


class Headers:
    """What ``split_headers`` keeps and reads from a request head."""

    __slots__ = ("chunked", "content_length", "expect_continue", "kept", "request_id", "traceparent")

    def __init__(self) -> None:
        self.kept: list[bytes] = []  # "name: value\r\n" lines passed on
        self.chunked = False
        self.content_length: int | None = None
        self.request_id: bytes | None = None
        self.traceparent: bytes | None = None
        self.expect_continue = False


def split_headers(raw: list[tuple[bytes, bytes]]) -> Headers:
    """Framing and trace headers read, hop-by-hop and owned headers dropped; raises Reject."""
    headers = Headers()
    named: set[bytes] = set()
    for name, value in raw:
        if name.lower() == b"connection":
            named.update(connection_tokens(value))
    for name, value in raw:
        lower = name.lower()
        try:
            if lower == b"transfer-encoding":
                check_transfer_encoding(value)
                headers.chunked = True
            elif lower == b"content-length":
                headers.content_length = parse_content_length(value)
        except BadFraming:
            raise Reject(400, "bad_request") from None
        if lower == b"x-request-id":
            headers.request_id = value
        elif lower == b"traceparent":
            headers.traceparent = value
        elif lower == b"expect":
            headers.expect_continue = value.lower() == b"100-continue"
        # Underscores as dashes: CGI-style frameworks read garrison_caller as garrison-caller.
        dashed = lower.replace(b"_", b"-")
        if (
            lower in HOP_BY_HOP
            or lower in SIDECAR_SET
            or lower in named
            or dashed.startswith(OWNED_HEADER_PREFIX)
            or dashed.startswith(OWNED_PREFIX)
        ):
            continue
        headers.kept.append(b"%s: %s\r\n" % (name, value))
    return headers


class Request:
    """A request head, how far its body has got, and its upstream attempt.

    The body is not kept: each piece llhttp delivers goes on to the upstream connection as it
    arrives. Only what arrives before that connection is ready (a new connection being opened, an
    earlier pipelined request still being answered) waits in ``body``, a bounded amount (the
    connection stops reading past ``MAX_BUFFERED_BODY``, proxy/connection.py).
    """

    __slots__ = (
        "attempts",
        "body",
        "body_size",
        "buffered",
        "caller",
        "close_after",
        "expect_continue",
        "expected_peer",
        "has_body",
        "headers",
        "keep_alive",
        "method",
        "path",
        "peer",
        "query",
        "rechunk",
        "request_done",
        "request_id",
        "response",
        "sent_at",
        "service",
        "start",
        "status",
        "target",
        "trace",
        "trace_id",
        "upstream",
        "upstream_head",
    )

    def __init__(self, method: bytes, path: bytes, query: bytes | None, headers: Headers, keep_alive: bool):
        self.method = method
        self.path = path  # normalised (garrison.uri)
        self.query = query  # None: no "?" at all
        self.headers = headers
        self.keep_alive = keep_alive
        self.has_body = headers.chunked or bool(headers.content_length)
        self.body: list[bytes] = []  # body pieces (framed as sent upstream) waiting for a connection
        self.buffered = 0  # bytes in ``body``
        self.body_size = 0  # body bytes read from the client so far
        self.request_done = not self.has_body  # the whole request was read (set again at its end)
        self.expect_continue = False  # the client waits for 100 Continue before its body
        self.start = perf_counter()
        self.request_id = request_id_for(headers.request_id)
        trace_id, span, flags = trace_for(headers.traceparent)
        self.trace_id = trace_id
        self.trace = b"x-request-id: %s\r\ntraceparent: 00-%s-%s-%s\r\n" % (
            self.request_id,
            trace_id,
            span,
            flags,
        )
        self.caller = ""  # inbound: the caller's SPIFFE ID; outbound: this service's
        self.peer = ""  # the callee service
        self.status = 0
        self.response = ResponsePhase.PENDING
        self.close_after = not keep_alive
        self.rechunk = False
        # The upstream attempt.
        self.service: UpstreamService | None = None
        self.target: Target | None = None
        self.upstream: UpstreamConnection | None = None
        self.upstream_head = b""
        self.expected_peer: str | None = None  # outbound: the SPIFFE ID the server must present
        self.attempts = 0
        # When the upstream last had something to do for us (the body went on, or it stopped
        # draining it): its read timeout runs from here while the body is still flowing.
        self.sent_at = 0.0

    def target_bytes(self, path: bytes) -> bytes:
        return path if self.query is None else b"%s?%s" % (path, self.query)

    def upstream_request(self, path: bytes, host: bytes, extra: bytes) -> bytes:
        """The head sent upstream: normalised target, our framing and trace (the body follows).

        A Content-Length body keeps its length; a chunked one stays chunked (re-chunked by us as
        it streams, so no chunk extension or trailer of the client's is passed on)."""
        headers = self.headers
        if headers.chunked:
            framing = b"transfer-encoding: chunked\r\n"
        elif headers.content_length or self.method in (b"POST", b"PUT", b"PATCH"):
            framing = b"content-length: %d\r\n" % (headers.content_length or 0)
        else:
            framing = b""
        return b"".join(
            (
                b"%s %s HTTP/1.1\r\nhost: %s\r\n" % (self.method, self.target_bytes(path), host),
                *headers.kept,
                extra,
                self.trace,
                framing,
                b"\r\n",
            )
        )
