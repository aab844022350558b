"""The protocol-neutral part of one request/response exchange through the proxy.

What any HTTP/1.1 proxy keeps per request whatever its policy: the request as it will be sent on
(method, target, host, framing), how far the request and the response have got, and the upstream
attempt carrying it. The gateway's ``Exchange`` (gateway/exchange.py) adds the route and what its
stages decide. Fields that most requests never change are class-level defaults, shadowed per
instance only when set, so creating an exchange per request costs only what its head decided.

Subclasses set the per-request fields in their own ``__init__``, without a ``super().__init__``
call: one constructor frame per request on the hot path, not a chain of them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from garrison.proxy.state import ResponsePhase

if TYPE_CHECKING:
    from garrison.proxy.upstream.pool import UpstreamConnection
    from garrison.proxy.upstream.target import Target

# How the request body is framed: none, Content-Length, or chunked (re-chunked on the way up).
BODY_NONE, BODY_LENGTH, BODY_CHUNKED = 0, 1, 2


class ProxyExchange:
    # Set per request by the subclass's __init__.
    method: bytes
    path: bytes
    query: bytes
    request_line: bytes  # as sent upstream: normalised path and query, always HTTP/1.1
    host: bytes  # lower-cased, as routed
    http11: bool
    keep_alive: bool
    start: float  # perf_counter() at the head, for the access log's duration
    request_id: bytes
    trace_id: bytes
    body_mode: int  # BODY_NONE, BODY_LENGTH or BODY_CHUNKED
    content_length: int
    head_rest: bytes  # the upstream head after the request line and Host
    trace_lines: bytes  # x-request-id and traceparent, sent both ways
    body_buffer: list[bytes]  # request body read before an upstream connection was ready

    # Per-exchange state with defaults (instance attributes shadow these once set).
    expect_continue = False
    body_seen = 0
    buffered = 0
    request_done = False  # the whole request (body included) was read
    response = ResponsePhase.PENDING  # nothing sent yet; then STARTED (head sent), then DONE
    close_after = False  # the connection closes once this exchange is answered
    rechunk = False  # the response body is re-chunked for the client
    status = 0
    bytes_out = 0
    # The upstream attempt: its target (counted in flight by the service), its connection.
    target: Target | None = None
    upstream: UpstreamConnection | None = None
    attempts = 0
    upstream_start = 0.0
    upstream_time = 0.0

    @property
    def has_body(self) -> bool:
        return self.body_mode != BODY_NONE
