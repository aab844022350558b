"""The upstream half of a sidecar connection: an exchange taken to an ``UpstreamService`` and back.

``forward`` hands a request to its service (proxy/upstream/service.py) as soon as its head is
decided: pick (counted in flight), an idle pooled connection or a new one, and exactly one of
responded / failed / abandoned; retries of idempotent bodiless requests within the service's
budget (a request with a body is never retried: its body has gone). Outbound (``expected_peer``
set), a new connection uses the identity's current client context and is used only if the server's
verified SPIFFE ID is the peer's.

The request body streams: each piece goes to the upstream connection as llhttp delivers it
(``forward_body``), held only while no connection is ready yet. Flow control both ways: the
upstream's write buffer full pauses reading the client (PAUSE_UPSTREAM), the client's full pauses
reading the upstream. ``Expect: 100-continue`` is answered once the call is allowed and a connection
is ready. The response streams back as the upstream's parser produces it (this is the pool's
``UpstreamListener``), even before the request body is all sent (an upstream's early 413).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from garrison.mesh.sidecar.answers import AnsweringRelay
from garrison.mesh.sidecar.request import Request
from garrison.proxy.connection import MAX_BUFFERED_BODY, PAUSE_BUFFER, PAUSE_UPSTREAM
from garrison.proxy.http1 import CONTINUE_LINE, HOP_BY_HOP, LAST_CHUNK, chunk, status_line
from garrison.proxy.state import CLOSING
from garrison.proxy.state import ResponsePhase as Phase

if TYPE_CHECKING:
    from garrison.proxy.upstream.pool import TargetPool, UpstreamConnection

__all__ = ["ForwardingRelay"]

_RESPONSE_DROPPED = HOP_BY_HOP | {b"content-length"}


class ForwardingRelay(AnsweringRelay):
    def pause_writing(self) -> None:
        if self.active is not None and self.active.upstream is not None:
            self.active.upstream.pause_reading()

    def resume_writing(self) -> None:
        if self.active is not None and self.active.upstream is not None:
            self.active.upstream.resume_reading()

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
        now = self.loop.time()
        target = service.pick(now, request.target)
        if target is None:  # every breaker open: refused at once, with when to come back
            retry = b"retry-after: %d\r\n" % max(1, service.retry_after(now))
            message = f"{request.peer or 'the app'} is unavailable"
            self.answer_json(request, 503, "unavailable", message, extra=retry)
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
        request.sent_at = self.loop.time()
        head = request.upstream_head
        if request.body:  # what arrived while no connection was ready
            head = b"".join((head, *request.body))
            request.body.clear()
            request.buffered = 0
            self._resume(PAUSE_BUFFER)
        elif request.expect_continue and not request.request_done and not request.body_size:
            # Allowed, and a connection is ready: now the client may send its body.
            self.write(CONTINUE_LINE)
        conn.start(self, head, head_only=request.method == b"HEAD")

    def forward_body(self, request: Request, data: bytes) -> None:
        """A piece of ``request``'s body, framed as it goes upstream: on, held, or dropped."""
        if request.upstream is not None and request is self.active:
            request.upstream.write(data)
            request.sent_at = self.loop.time()
        elif request.response is not Phase.DONE:
            request.body.append(data)  # no connection yet (or an earlier request is answered)
            request.buffered += len(data)
            if request.buffered > MAX_BUFFERED_BODY:
                self._pause(PAUSE_BUFFER)
        # else: answered already; the rest of the body is read and dropped (the connection closes)

    def _drop_upstream(self, request: Request) -> None:
        conn, request.upstream = request.upstream, None
        if conn is not None:
            conn.abort()
            self._upstream_detached()
        if request.target is not None and request.service is not None and conn is not None:
            request.service.abandoned(request.target, request.response is not Phase.PENDING)

    # -- from the upstream (proxy/upstream/pool.UpstreamListener) ---------------------------------------
    def on_upstream_head(self, status: int, headers: list[tuple[bytes, bytes]], chunked: bool) -> None:
        request = self.active
        assert request is not None and request.target is not None and request.service is not None
        request.service.response_head(request.target, status, self.loop.time())
        request.status = status
        request.response = Phase.STARTED
        lines = [status_line(status)]
        length = None
        for name, value in headers:  # one pass: this runs for every answer
            lower = name.lower()
            if lower not in _RESPONSE_DROPPED:
                lines.append(b"%s: %s\r\n" % (name, value))
            elif lower == b"content-length" and length is None:
                length = value
        bodiless = request.method == b"HEAD" or status in (204, 304)
        request.rechunk = not bodiless and (chunked or length is None)
        if request.rechunk:
            lines.append(b"transfer-encoding: chunked\r\n")
        elif length is not None:
            lines.append(b"content-length: %s\r\n" % length)
        if request.close_after or self.side.draining or not request.request_done:
            # An answer before the request body was all read (an early 413): the connection
            # closes after it, the rest of the body unread.
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
            if keep_alive and request.request_done:
                conn.pool.release(conn)
            else:
                conn.abort()  # the request was not all sent: the connection is mid-message
        self._upstream_detached()
        request.response = Phase.DONE
        self.finish(request)

    def on_upstream_failed(self, reason: str) -> None:
        request = self.active
        if request is not None:
            request.upstream = None
            self._upstream_detached()
            self.upstream_failed(request, reason)

    def on_upstream_writable(self, writable: bool) -> None:
        if self.active is not None:
            self.active.sent_at = self.loop.time()  # a stall is timed from here (check_deadlines)
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
        if service.may_retry(request.method, request.has_body, request.attempts, reason, now):
            self.dispatch(request)
        elif reason == "timeout":
            self.answer_json(request, 504, "gateway_timeout", f"{request.peer or 'the app'} timed out")
        else:
            self.answer_json(request, 502, "bad_gateway", f"{request.peer or 'the app'} is unreachable")
