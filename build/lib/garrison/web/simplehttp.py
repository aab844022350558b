"""A minimal HTTP/1.1 responder for side listeners (the admin listener, the gateway's HTTPS redirect).

These listeners answer a handful of fixed requests, so a full framework would be the larger risk;
the same llhttp parser as the main listener reads the request, bodies are refused, and every
connection closes after one response.

A listener that takes small JSON bodies (the mesh CA's API) passes ``max_body``: a body with a
``content-length`` up to that size is read before the handler runs (chunked bodies are refused), and
``long_responses`` lets the handler take longer than the request timeout (a long-poll). The verified
client certificate is handed over as DER (``peer_der``) for a handler that needs more than "one was sent".
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, cast

import httptools

from garrison.proxy.http1 import status_line


@dataclass(frozen=True, slots=True)
class SimpleRequest:
    method: bytes
    target: bytes
    headers: dict[bytes, bytes]  # lower-cased names; a repeated header keeps the first value
    peer_certificate: bool = False  # a TLS client certificate was sent and verified in the handshake
    body: bytes = b""  # only with max_body > 0
    peer_der: bytes | None = None  # the verified client certificate (DER), if one was sent


@dataclass(frozen=True, slots=True)
class SimpleResponse:
    status: int
    body: bytes = b""
    content_type: bytes = b"text/plain; charset=utf-8"
    headers: bytes = b""  # extra pre-rendered header lines


Handler = Callable[[SimpleRequest], SimpleResponse | Awaitable[SimpleResponse]]
MAX_HEAD = 16 * 1024
REQUEST_TIMEOUT = 10.0  # a client that has not sent its request by then is cut off


class SimpleHttpProtocol(asyncio.Protocol):
    def __init__(
        self,
        handler: Handler,
        security_headers: bytes = b"",
        max_body: int = 0,
        long_responses: bool = False,
    ) -> None:
        self.handler = handler
        self.security_headers = security_headers
        self.max_body = max_body
        self.long_responses = long_responses
        self.body = bytearray()
        self.peer_der: bytes | None = None
        # An httptools.HttpRequestParser (untyped, hence Any) while connected: it holds bound methods
        # of this object, a cycle broken in connection_lost so a closed connection is freed at once.
        self.parser: Any = None
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.headers: dict[bytes, bytes] = {}
        self.received = 0
        self.done = False
        self.task: asyncio.Future[None] | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.peer_certificate = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        self.parser = httptools.HttpRequestParser(self)
        # Only a context that asks for certificates (the admin listener's `client_ca`) gets one, and
        # OpenSSL has verified it by now: an unverifiable certificate fails the handshake.
        self.peer_certificate = bool(transport.get_extra_info("peercert"))
        if self.peer_certificate:
            ssl_object = transport.get_extra_info("ssl_object")
            self.peer_der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        self.timer = asyncio.get_running_loop().call_later(REQUEST_TIMEOUT, self._timed_out)

    def _timed_out(self) -> None:
        if not self.done:
            self._respond(SimpleResponse(408, b"request timeout\n"))

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.parser = None
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.received += len(data)
        if self.done:
            return
        if self.received > MAX_HEAD + self.max_body:
            self._respond(SimpleResponse(431, b"request too large\n"))
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self._respond(SimpleResponse(400, b"bad request\n"))

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.setdefault(name.lower(), value)

    def on_headers_complete(self) -> None:
        if self.done:
            return
        if self.max_body:
            self._check_body_headers()
            return
        if self.headers.get(b"content-length", b"0") != b"0" or b"transfer-encoding" in self.headers:
            self._respond(SimpleResponse(400, b"request bodies are not accepted here\n"))
            return
        self._dispatch()

    def _check_body_headers(self) -> None:
        length = self.headers.get(b"content-length", b"0")
        if b"transfer-encoding" in self.headers:
            self._respond(SimpleResponse(411, b"send a content-length, not a chunked body\n"))
        elif not length.isdigit() or int(length) > self.max_body:
            self._respond(SimpleResponse(413, b"request body too large\n"))

    def on_body(self, body: bytes) -> None:
        if not self.done:
            self.body += body

    def on_message_complete(self) -> None:
        if self.max_body and not self.done and self.task is None:
            self._dispatch()

    def _dispatch(self) -> None:
        if self.long_responses and self.timer is not None:
            self.timer.cancel()  # the request is in; the handler may take its time (a long-poll)
            self.timer = None
        request = SimpleRequest(
            self.parser.get_method(),
            self.url,
            self.headers,
            self.peer_certificate,
            bytes(self.body),
            self.peer_der,
        )
        try:
            response = self.handler(request)
        except Exception:  # a handler bug answers 500 rather than killing the listener
            response = SimpleResponse(500, b"internal error\n")
        if isinstance(response, SimpleResponse):
            self._respond(response, head_only=request.method == b"HEAD")
        else:
            self.task = asyncio.ensure_future(self._respond_later(response, request.method == b"HEAD"))

    async def _respond_later(self, pending: Awaitable[SimpleResponse], head_only: bool) -> None:
        try:
            response = await pending
        except Exception:
            response = SimpleResponse(500, b"internal error\n")
        self._respond(response, head_only=head_only)

    def _respond(self, response: SimpleResponse, head_only: bool = False) -> None:
        self.done = True
        if self.transport is None or self.transport.is_closing():
            return
        head = b"".join(
            (
                status_line(response.status),
                b"content-type: %s\r\ncontent-length: %d\r\n" % (response.content_type, len(response.body)),
                b"cache-control: no-store\r\n",
                self.security_headers,
                response.headers,
                b"connection: close\r\n\r\n",
            )
        )
        self.transport.write(head if head_only else head + response.body)
        self.transport.close()
