"""Keep-alive connections to one upstream target, and the protocol that reads their responses.

The connection is a bare asyncio Protocol whose parser callbacks hand each response event straight
to the client side (an ``UpstreamListener``): no coroutine, queue or extra copy on the hot path.
Idle connections wait in a LIFO stack (the most recently used is the least likely to have been
closed by the upstream), and an idle sweep closes those past ``idle_timeout``. As on the client
side (gateway/proxy.py), the parser lives only while the connection is open, so a closed
connection is not kept alive by a reference cycle.

A pool may take its TLS client context from a function (``tls_source``), asked once per new
connection, so a workload identity renewed in place or rebuilt after a trust-bundle change is used
by the next connection; with ``expected_peer`` the server's verified SPIFFE ID must be exactly that
(a mesh sidecar): otherwise the connection is dropped before a byte is sent and ``connect`` raises
``PeerIdentityMismatch`` (an ``ssl.SSLError``, so an ``OSError``).
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol, cast

import httptools

from garrison.pki.workload_tls import require_spiffe_id
from garrison.proxy.upstream.target import Target


class UpstreamListener(Protocol):
    """What the client side of an exchange implements to receive an upstream response."""

    def on_upstream_head(self, status: int, headers: list[tuple[bytes, bytes]], chunked: bool) -> None: ...
    def on_upstream_body(self, data: bytes) -> None: ...
    def on_upstream_complete(self, keep_alive: bool) -> None: ...
    def on_upstream_failed(self, reason: str) -> None: ...
    def on_upstream_writable(self, writable: bool) -> None: ...
    def flush(self) -> None: ...


class UpstreamConnection:
    """One HTTP/1.1 connection to a target, serving one exchange at a time.

    An asyncio protocol by its methods, not by subclassing ``asyncio.Protocol`` (as
    proxy/connection.py's ``ProxyConnection``, and for the same reason: mypyc compiles a plain class
    to a native one)."""

    def __init__(self, pool: TargetPool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        # An httptools.HttpResponseParser (untyped, hence Any) from connection_made to connection_lost
        # only: it holds bound methods of this object, a cycle that would keep a closed connection
        # and its transport for the cyclic GC's next full collection (see proxy.ClientConnection).
        self.parser: Any = None
        self.listener: UpstreamListener | None = None
        self.headers: list[tuple[bytes, bytes]] = []
        self.chunked = False  # the response head so far said Transfer-Encoding / Content-Length
        self.has_length = False
        self.close_delimited = False
        self.head_only = False  # a response to HEAD: headers and no body, whatever they say
        self.informational = False
        self.closed = False
        self.idle_since = 0.0
        self.last_read = 0.0
        self.counted = False  # whether pool.open includes this connection

    # -- driven by the client side --------------------------------------------------------------
    def start(self, listener: UpstreamListener, head: bytes, head_only: bool) -> None:
        self.listener = listener
        self.head_only = head_only
        self.headers = []
        self.chunked = False
        self.has_length = False
        self.close_delimited = False
        self.last_read = self.pool.loop.time()
        assert self.transport is not None
        self.transport.write(head)

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    def pause_reading(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()

    def abort(self) -> None:
        """Drop the connection (response cut short, protocol error, client gone)."""
        self.listener = None
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.abort()
        self.pool.forget(self)

    # -- asyncio.Protocol -----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        self.parser = httptools.HttpResponseParser(self)

    def data_received(self, data: bytes) -> None:
        if self.listener is None:
            # Bytes while idle: the upstream broke framing or is closing; never reuse it.
            self.abort()
            return
        listener = self.listener
        self.last_read = self.pool.loop.time()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.abort()
            listener.on_upstream_failed("invalid_response")
        listener.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        listener = self.listener
        self.listener = None
        self.parser = None
        self.transport = None
        self.pool.forget(self)
        if listener is None:
            return
        if self.close_delimited and exc is None:
            listener.on_upstream_complete(False)  # the close is how this body ends
        else:
            listener.on_upstream_failed("connection_lost")
        listener.flush()

    def eof_received(self) -> bool | None:
        return None  # the transport closes; connection_lost says what that means

    def pause_writing(self) -> None:
        if self.listener is not None:
            self.listener.on_upstream_writable(False)

    def resume_writing(self) -> None:
        if self.listener is not None:
            self.listener.on_upstream_writable(True)

    # -- httptools callbacks --------------------------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))
        size = len(name)
        # Only the two framing headers matter here; their lengths rule out every other name at the
        # cost of one len() (the framing is read as the headers arrive, not in a second pass).
        if size == 17 and name.lower() == b"transfer-encoding":
            self.chunked = True
        elif size == 14 and name.lower() == b"content-length":
            self.has_length = True

    def on_headers_complete(self) -> None:
        status: int = self.parser.get_status_code()
        if status < 200:
            # 1xx (e.g. 103 Early Hints): not forwarded; the final response follows.
            self.informational = True
            self.headers = []
            self.chunked = self.has_length = False
            return
        chunked = self.chunked
        self.close_delimited = not chunked and not self.has_length
        listener = self.listener
        if listener is None:
            return
        listener.on_upstream_head(status, self.headers, chunked)
        if self.head_only or status in (204, 304):
            # llhttp cannot be told a response has no body; finish here and reset the parser.
            self.parser = httptools.HttpResponseParser(self)
            self._complete(keep_alive=True)

    def on_body(self, body: bytes) -> None:
        if self.listener is not None:
            self.listener.on_upstream_body(body)

    def on_message_complete(self) -> None:
        if self.informational:
            self.informational = False
            return
        if self.listener is not None:
            self._complete(keep_alive=bool(self.parser.should_keep_alive()))

    def _complete(self, keep_alive: bool) -> None:
        listener = self.listener
        self.listener = None
        if listener is not None:
            listener.on_upstream_complete(keep_alive)


class TargetPool:
    """Idle keep-alive connections to one target."""

    def __init__(
        self,
        target: Target,
        loop: asyncio.AbstractEventLoop,
        *,
        max_idle: int,
        idle_timeout: float,
        connect_timeout: float,
        ssl_context: ssl.SSLContext | None,
        tls_source: Callable[[], ssl.SSLContext] | None = None,
        expected_peer: str | None = None,
    ) -> None:
        self.target = target
        self.loop = loop
        self.max_idle = max_idle
        self.idle_timeout = idle_timeout
        self.connect_timeout = connect_timeout
        self.ssl_context = ssl_context
        self.tls_source = tls_source  # asked per new connection: the identity's current context
        self.expected_peer = expected_peer  # the SPIFFE ID the server must present
        self.idle: deque[UpstreamConnection] = deque()
        self.open = 0
        self.retired = False

    def take_idle(self) -> UpstreamConnection | None:
        while self.idle:
            conn = self.idle.pop()
            if not conn.closed:
                return conn
        return None

    async def connect(self) -> UpstreamConnection:
        """Open a new connection; raises OSError (``PeerIdentityMismatch`` for the wrong SPIFFE ID)
        or TimeoutError."""
        target = self.target
        context = self.tls_source() if self.tls_source is not None else self.ssl_context
        protocol = UpstreamConnection(self)
        async with asyncio.timeout(self.connect_timeout):
            transport, _ = await self.loop.create_connection(
                lambda: cast(asyncio.Protocol, protocol),
                target.host,
                target.port,
                ssl=context,
                server_hostname=target.host if context is not None else None,
            )
        if self.expected_peer is not None:
            try:
                require_spiffe_id(transport.get_extra_info("ssl_object"), self.expected_peer)
            except ssl.SSLError:
                protocol.closed = True
                transport.abort()
                raise
        self.open += 1
        protocol.counted = True
        return protocol

    def release(self, conn: UpstreamConnection) -> None:
        if conn.closed:
            return
        if self.retired or len(self.idle) >= self.max_idle:
            conn.abort()
            return
        conn.idle_since = self.loop.time()
        self.idle.append(conn)

    def forget(self, conn: UpstreamConnection) -> None:
        if conn.counted:
            conn.counted = False
            self.open -= 1

    def sweep(self, now: float) -> None:
        """Close idle connections older than idle_timeout (oldest sit at the left)."""
        while self.idle and (self.idle[0].closed or now - self.idle[0].idle_since > self.idle_timeout):
            self.idle.popleft().abort()

    def close(self) -> None:
        """Retire the pool (config reload): idle connections close now, busy ones when released."""
        self.retired = True
        while self.idle:
            self.idle.pop().abort()
