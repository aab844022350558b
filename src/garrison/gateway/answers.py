"""The gateway's client connection, part 1: its per-request state, and every way it answers.

``AnsweringConnection`` holds what the gateway keeps per connection (the exchange being read, the
one being answered, the pipelined ones waiting, the caches of what a keep-alive client repeats)
and the ways an exchange ends: a refusal, the gateway's own preflight answer, finishing (the next
pipelined request, keep-alive or close). It is also the host the route's stages run on
(gateway/stages.py): the few methods they call are here. Upstream dispatch and the upstream's
callbacks are part 2 (gateway/forward.py); the parser callbacks are the connection itself
(gateway/proxy.py).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from garrison.gateway.errors import error_response
from garrison.gateway.exchange import Exchange, Rejected
from garrison.proxy.connection import PAUSE_PIPELINE, ProxyConnection
from garrison.proxy.state import CLOSING, IDLE, SERVING
from garrison.proxy.state import ResponsePhase as _Phase
from garrison.tokens.jwt import AuthError

if TYPE_CHECKING:
    from garrison.gateway.audit import GatewayAudit
    from garrison.gateway.authn import CertificateClient, ClientCertificates
    from garrison.gateway.head import HeaderCache
    from garrison.gateway.runtime import Runtime
    from garrison.gateway.server import GatewayServer

PENDING, DONE = _Phase.PENDING, _Phase.DONE


class AnsweringConnection(ProxyConnection):
    def __init__(self, server: GatewayServer) -> None:
        super().__init__(server.loop)
        self.server = server
        self.head_bytes = 0
        self.head_size = 0
        self.url_parts: list[bytes] = []
        self.raw_headers: list[tuple[bytes, bytes]] = []
        self.parsing: Exchange | None = None  # request whose body is being read
        self.active: Exchange | None = None  # request being served
        self.pending: deque[Exchange] = deque()
        self.reject_after: Rejected | None = None
        # Per-connection caches of work that depends only on values a keep-alive client repeats.
        self.host_seen: bytes | None = None
        self.host_lower = b""
        self.host_key = b""
        self.header_cache: HeaderCache | None = None
        # The client certificate's configured client, resolved once per connection and per config
        # (the certificate cannot change on a connection; a reload can change what it maps to).
        self.certificate_cache: tuple[ClientCertificates, CertificateClient | AuthError] | None = None

    # -- the host the stages run on ------------------------------------------------------------------
    @property
    def audit(self) -> GatewayAudit:
        return self.server.audit

    def _start(self, exchange: Exchange) -> None:
        self.active = exchange
        exchange.route.chain.run(exchange, self)  # the route's stages (gateway/stages.py)

    @property
    def runtime(self) -> Runtime:
        return self.server.runtime

    def now(self) -> float:
        return self.loop.time()

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        self.server.spawn(coro)

    def spawn_slow_path(self, coro: Coroutine[Any, Any, None]) -> None:
        self.server.spawn(coro)

    def serving(self, exchange: Exchange) -> bool:
        return exchange is self.active and self.state < CLOSING

    def certificate_client(self, clients: ClientCertificates) -> CertificateClient:
        cached = self.certificate_cache
        if cached is None or cached[0] is not clients:
            assert self.transport is not None
            peercert: dict[str, Any] | None = self.transport.get_extra_info("peercert")
            try:
                resolved: CertificateClient | AuthError = clients.client_for(peercert)
            except AuthError as refusal:
                resolved = refusal
            cached = self.certificate_cache = (clients, resolved)
        if isinstance(cached[1], AuthError):
            raise cached[1]
        return cached[1]

    # -- answering and finishing ------------------------------------------------------------------
    def answer_preflight(self, exchange: Exchange, head: bytes) -> None:
        """The gateway's own 204 to an allowed CORS preflight; the upstream never sees it."""
        exchange.status = 204
        exchange.response = DONE
        if not exchange.request_done:
            exchange.close_after = True
        runtime = self.server.runtime
        close = b"connection: close\r\n" if exchange.close_after or not exchange.keep_alive else b""
        security = runtime.security_headers + runtime.referrer_policy_line
        self.write(b"".join((head, security, exchange.trace_lines, close, b"\r\n")))
        self.finish(exchange)

    def fail(self, exchange: Exchange, status: int, code: str, extra: bytes = b"") -> None:
        # CORS and RateLimit-* headers go on refusals too, so a page can read why it was refused.
        extra += exchange.extra_response_headers
        exchange.status = status
        exchange.response = DONE
        if not exchange.request_done:
            exchange.close_after = True
        close = exchange.close_after or not exchange.keep_alive
        self._send_error(Rejected(status, code, extra), exchange, close=close)
        self.finish(exchange)

    def finish(self, exchange: Exchange) -> None:
        if self.active is not exchange:
            return
        if not exchange.request_done and not exchange.close_after:
            return  # response done, request body still arriving: finish on message complete
        self._record(exchange)
        self.active = None
        if exchange.close_after or not exchange.keep_alive:
            self._close()
            return
        if self.reject_after is not None:
            self._send_error(self.reject_after, None, close=True)
            return
        if self.pending:
            self._start(self.pending.popleft())
            if not self.pending:
                self._resume(PAUSE_PIPELINE)
        elif self.state is SERVING:
            # Nothing of the next request read yet. (A head already begun keeps its header timeout.)
            self._wait(IDLE, self.server.runtime.limits.keepalive_timeout)

    def _record(self, exchange: Exchange) -> None:
        self.server.record(exchange)

    def _refuse(self, rejection: Rejected) -> None:
        """A request that fails validation: answer it (after any response in progress) and close."""
        self.server.runtime.metrics.reject(rejection.code)
        if rejection.blocked is not None:
            self.server.audit.blocked(rejection.client_ip or self.peer, rejection.blocked)
        self._pause(PAUSE_PIPELINE)
        active = self.active
        if active is not None:
            if self.parsing is active and active.response is not DONE:
                # The body of the request being served is broken: the upstream gets no more of it.
                self._drop_upstream(active, reason="bad_request")
                if active.response is PENDING:
                    self.fail(active, rejection.status, rejection.code, rejection.extra_headers)
                else:
                    self._close()
                return
            self.reject_after = rejection
            return
        self._send_error(rejection, self.parsing, close=True)
        if self.parsing is not None:
            self.parsing.status = rejection.status
            self._record(self.parsing)
        else:
            # Refused before it became an exchange (bad framing, bad target, no route...): it is
            # still logged, with what is known safely about it.
            self.server.record_refusal(rejection.client_ip or self.peer, rejection.status, rejection.code)

    def _send_error(self, rejection: Rejected, exchange: Exchange | None, close: bool) -> None:
        runtime = self.server.runtime
        self.write(
            error_response(
                rejection.status,
                rejection.code,
                request_id=exchange.request_id if exchange is not None else None,
                security_headers=runtime.security_headers + runtime.referrer_policy_line,
                close=close,
                extra_headers=rejection.extra_headers,
                head_only=exchange is not None and exchange.method == b"HEAD",
            )
        )
        if close:
            self._close()

    def _close(self) -> None:
        if self.state < CLOSING and self.transport is not None:
            self.server.connections.discard(self)
            self._close_transport(linger=self.parsing is not None)
        active = self.active
        if active is not None and active.upstream is not None:
            self._drop_upstream(active, reason="client_closed")

    def _drop_upstream(self, exchange: Exchange, reason: str) -> None:
        conn = exchange.upstream
        exchange.upstream = None
        if conn is not None:
            conn.abort()
            if exchange.target is not None:
                exchange.route.service.abandoned(exchange.target, exchange.response is not PENDING)
