"""The last stage of every route: hand the exchange to an upstream target.

Last because everything before it may answer instead (a preflight, a limit, a refused credential, a
cache hit), and an upstream attempt is the most costly thing the gateway does. The target and its
in-flight count come from the route's ``UpstreamService`` (proxy/upstream/service.py); an idle
pooled connection is used in the same callback, and only a new connection is a task.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from garrison.proxy.stages import DONE, ChainHost, Verdict

if TYPE_CHECKING:
    from collections.abc import Coroutine
    from typing import Any

    from garrison.gateway.exchange import Exchange
    from garrison.proxy.upstream.pool import UpstreamConnection
    from garrison.proxy.upstream.target import Target

CONTINUE_LINE = b"HTTP/1.1 100 Continue\r\n\r\n"


class ForwardHost(ChainHost["Exchange"], Protocol):
    """What dispatching needs from the client connection."""

    def fail(self, exchange: Exchange, status: int, code: str, extra: bytes = b"") -> None: ...
    def write(self, data: bytes) -> None: ...
    def now(self) -> float: ...
    def spawn(self, coro: Coroutine[Any, Any, None]) -> None: ...
    def send_upstream(self, exchange: Exchange, conn: UpstreamConnection) -> None: ...
    def upstream_failed(self, exchange: Exchange, reason: str) -> None: ...


class UpstreamStage:
    name = "upstream"

    def check(self, exchange: Exchange, host: ForwardHost) -> Verdict:
        # 1xx responses are not for HTTP/1.0 clients (RFC 9110 §15.2).
        if exchange.expect_continue and exchange.has_body and exchange.http11 and not exchange.request_done:
            host.write(CONTINUE_LINE)
        exchange.route.service.record_request(host.now())
        dispatch(exchange, host)
        return DONE


def dispatch(exchange: Exchange, host: ForwardHost) -> None:
    """One attempt (the first, or a retry): pick a target and send on an idle or new connection."""
    service = exchange.route.service
    now = host.now()
    target = service.pick(now, exchange.target)
    if target is None:
        retry_after = service.retry_after(now)
        host.fail(exchange, 503, "service_unavailable", b"retry-after: %d\r\n" % retry_after)
        return
    exchange.target = target
    exchange.attempts += 1
    conn = service.pools[target].take_idle()
    if conn is not None:
        host.send_upstream(exchange, conn)
    else:
        host.spawn(_connect(exchange, host, target))


async def _connect(exchange: Exchange, host: ForwardHost, target: Target) -> None:
    service = exchange.route.service
    pool = service.pools[target]
    try:
        conn = await pool.connect()
    except (OSError, TimeoutError) as exc:
        reason = "connect_timeout" if isinstance(exc, TimeoutError) else "connect_error"
        host.upstream_failed(exchange, reason)
        host.flush()
        return
    if not host.serving(exchange):
        pool.release(conn)
        service.abandoned(target, response_started=False)
        return
    host.send_upstream(exchange, conn)
    host.flush()
