"""The intake listener: ``POST /v1/events`` over HTTP/1.1 keep-alive, TLS, on llhttp (httptools).

Why a protocol of our own rather than uvicorn: the intake has one route, and what it needs from the
socket is exactly what an ASGI server hides or makes costly: the verified client certificate of the
connection (the SPIFFE ID that becomes each event's ``origin``), a body bound enforced while it
arrives, and one task per connection rather than per request. llhttp parses, as in the proxy core.

Per connection: the head is bounded (16 KiB: 431), the body too (4 MiB: 413, from ``content-length``
before it is read, or as a chunked body grows); a request must arrive within ``REQUEST_TIMEOUT``
and an idle connection is closed after ``IDLE_TIMEOUT``. Requests on one connection are answered in
order (reading pauses while one is being logged). At most ``MAX_CONNECTIONS`` connections are open;
one more is closed at once.

Credential (``authenticate``): a client certificate verified in the handshake against the mesh bundle
(pki/listener_tls.py) whose SPIFFE ID is of the trust domain, else ``Authorization: Bearer`` with the
emit token, compared in constant time. Refusals that come before the body is read close the
connection, so a refused client cannot make the collector read its 4 MiB.
"""

from __future__ import annotations

import asyncio
import hmac
import json
from collections import deque
from dataclasses import dataclass
from typing import Any, Final, cast

import httptools

from garrison.audit.collector import BatchAnswer, Collector
from garrison.audit.metrics import CollectorMetrics
from garrison.pki.identity import spiffe_id
from garrison.proxy.http1 import status_line

__all__ = ["MAX_BODY", "IntakeServer", "authenticate"]

MAX_BODY: Final = 4 * 1024 * 1024
MAX_HEAD: Final = 16 * 1024
MAX_CONNECTIONS: Final = 1024
REQUEST_TIMEOUT: Final = 30.0  # from a request's first byte to its last
IDLE_TIMEOUT: Final = 60.0  # a kept-alive connection with no request
PATH: Final = b"/v1/events"
CONTENT_TYPES: Final = (b"application/x-ndjson", b"application/jsonl")
TOKEN_ORIGIN: Final = "token"  # noqa: S105 - the origin of events sent with the emit token


def authenticate(
    peer_spiffe_id: str | None, authorization: bytes | None, trust_domain: str, token: str
) -> str | None:
    """The events' origin for this credential: the peer's SPIFFE ID, "token", or None (401)."""
    if peer_spiffe_id is not None and peer_spiffe_id.startswith(f"spiffe://{trust_domain}/"):
        return peer_spiffe_id
    if authorization is not None:
        scheme, _, presented = authorization.partition(b" ")
        if scheme.lower() == b"bearer" and hmac.compare_digest(presented.strip(), token.encode()):
            return TOKEN_ORIGIN
    return None


@dataclass(frozen=True, slots=True)
class _Request:
    answer: BatchAnswer | None  # decided while parsing (an error), else submit the body
    origin: str
    body: bytes
    keep_alive: bool


class IntakeServer:
    """The intake's shared state: the collector, the credential, the open connections."""

    def __init__(
        self, collector: Collector, metrics: CollectorMetrics, trust_domain: str, token: str
    ) -> None:
        self.collector = collector
        self.metrics = metrics
        self.trust_domain = trust_domain
        self._token = token
        self.connections: set[IntakeProtocol] = set()
        self.draining = False

    def __repr__(self) -> str:  # never the token
        return f"IntakeServer(trust_domain={self.trust_domain!r}, connections={len(self.connections)})"

    def origin_of(self, peer: str | None, authorization: bytes | None) -> str | None:
        return authenticate(peer, authorization, self.trust_domain, self._token)

    def protocol(self) -> IntakeProtocol:
        return IntakeProtocol(self)

    async def drain(self, timeout: float) -> None:
        """Close idle connections now, the others once their request is answered (``timeout`` at most)."""
        self.draining = True
        for connection in list(self.connections):
            connection.close_if_idle()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.connections and loop.time() < deadline:
            await asyncio.sleep(0.02)
        for connection in list(self.connections):
            connection.abort()


class IntakeProtocol(asyncio.Protocol):
    def __init__(self, server: IntakeServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.parser: Any = None  # httptools.HttpRequestParser; dropped at close (it holds our methods)
        self.peer: str | None = None
        self.queue: deque[_Request] = deque()
        self.worker: asyncio.Task[None] | None = None
        self.timer: asyncio.TimerHandle | None = None
        self._reset()

    def _reset(self) -> None:
        self.url = b""
        self.headers: dict[bytes, bytes] = {}
        self.head_bytes = 0
        self.body = bytearray()
        self.refusal: BatchAnswer | None = None
        self.in_request = False

    # -- connection ----------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass it
        if len(self.server.connections) >= MAX_CONNECTIONS or self.server.draining:
            self.transport.abort()
            return
        self.server.connections.add(self)
        ssl_object = transport.get_extra_info("ssl_object")
        self.peer = spiffe_id(ssl_object.getpeercert()) if ssl_object is not None else None
        self.parser = httptools.HttpRequestParser(self)
        self._arm(IDLE_TIMEOUT)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        if self.timer is not None:
            self.timer.cancel()
        self.parser = None
        self.transport = None

    def _arm(self, seconds: float) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.timer = asyncio.get_running_loop().call_later(seconds, self.abort)

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def close_if_idle(self) -> None:
        if not self.in_request and not self.queue and self.worker is None:
            self.abort()

    def data_received(self, data: bytes) -> None:
        if self.parser is None:
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._refuse_now(400, "no protocol upgrade here", "bad_request")
        except httptools.HttpParserError:
            if self.refusal is None:  # a refusal already answered stops the parser on purpose
                self._refuse_now(400, "malformed HTTP/1.1 request", "bad_request")

    # -- parser callbacks ----------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._reset()
        self.in_request = True
        self._arm(REQUEST_TIMEOUT)

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)
        self.headers.setdefault(name.lower(), value)

    def _count(self, size: int) -> None:
        self.head_bytes += size
        if self.head_bytes > MAX_HEAD:
            self._refuse_now(431, "the request head is over 16 KiB", "too_large")
            raise httptools.HttpParserError("refused")

    def on_headers_complete(self) -> None:
        refusal = self._check_head()
        if refusal is not None:
            status, message, reason = refusal
            self._refuse_now(status, message, reason)
            raise httptools.HttpParserError("refused")  # stop parsing this connection

    def _check_head(self) -> tuple[int, str, str] | None:
        if self.url.partition(b"?")[0] != PATH:
            return 404, "the intake serves POST /v1/events only", "bad_request"
        if self.parser.get_method() != b"POST":
            return 405, "POST /v1/events", "bad_request"
        length = self.headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > MAX_BODY):
            return 413, f"a batch is at most {MAX_BODY} bytes", "too_large"
        content_type = self.headers.get(b"content-type", b"").partition(b";")[0].strip().lower()
        if content_type not in CONTENT_TYPES:
            return 400, "Content-Type: application/x-ndjson, one event per line", "bad_request"
        if self.server.origin_of(self.peer, self.headers.get(b"authorization")) is None:
            return (
                401,
                "a workload certificate of the trust domain or the emit token is required",
                "unauthenticated",
            )
        return None

    def on_body(self, body: bytes) -> None:
        self.body += body
        if len(self.body) > MAX_BODY:
            self._refuse_now(413, f"a batch is at most {MAX_BODY} bytes", "too_large")
            raise httptools.HttpParserError("refused")

    def on_message_complete(self) -> None:
        origin = self.server.origin_of(self.peer, self.headers.get(b"authorization")) or ""
        keep_alive = bool(self.parser.should_keep_alive()) and not self.server.draining
        self.queue.append(_Request(None, origin, bytes(self.body), keep_alive))
        self.in_request = False
        self.body = bytearray()
        if self.timer is not None:  # being answered: no timeout while the log makes it durable
            self.timer.cancel()
            self.timer = None
        if self.transport is not None:
            self.transport.pause_reading()  # answered in order; the next request waits in the socket
        if self.worker is None:
            self.worker = asyncio.ensure_future(self._work())

    # -- answering -----------------------------------------------------------------------------------

    def _refuse_now(self, status: int, message: str, reason: str) -> None:
        """An answer decided while parsing: queued behind the requests in flight, then the connection
        closes (the rest of what the client sent is not read)."""
        self.refusal = BatchAnswer(status, {"error": message})
        self.server.metrics.reject(reason)
        self.queue.append(_Request(self.refusal, "", b"", keep_alive=False))
        self.in_request = False
        if self.worker is None:
            self.worker = asyncio.ensure_future(self._work())

    async def _work(self) -> None:
        try:
            while self.queue:
                request = self.queue[0]
                answer = request.answer or await self.server.collector.submit(request.origin, request.body)
                self.queue.popleft()
                self._write(answer, request.keep_alive)
                if not request.keep_alive:
                    return
        finally:
            self.worker = None
        if self.transport is not None and not self.transport.is_closing():
            if self.server.draining:
                self.abort()
                return
            self._arm(IDLE_TIMEOUT)
            self.transport.resume_reading()

    def _write(self, answer: BatchAnswer, keep_alive: bool) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        body = json.dumps(answer.payload, separators=(",", ":")).encode() + b"\n"
        head = (
            b"%scontent-type: application/json\r\ncontent-length: %d\r\ncache-control: no-store\r\n%s\r\n"
            % (
                status_line(answer.status),
                len(body),
                b"" if keep_alive else b"connection: close\r\n",
            )
        )
        transport.write(head + body)
        if not keep_alive:
            transport.close()
