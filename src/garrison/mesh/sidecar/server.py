"""One side of a sidecar (inbound or outbound): its connections, its tasks, its log and metrics.

Both sides share the ``Gate`` (decisions), the identity (TLS contexts, asked for each new connection,
never copied) and the metrics. A sweeper per side enforces the connections' timeouts and closes idle
pooled upstream connections.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import Callable, Coroutine
from functools import lru_cache
from time import perf_counter
from typing import TYPE_CHECKING, Any

from garrison.events.emitter import NullEmitter
from garrison.mesh.sidecar.audit import SidecarAudit
from garrison.mesh.sidecar.gate import Gate, service_of
from garrison.mesh.sidecar.identity import SidecarIdentity
from garrison.pki.identity import spiffe_id
from garrison.telemetry import logging as log
from garrison.telemetry.accesslog import AccessLog
from garrison.telemetry.sidecar_metrics import SidecarMetrics

if TYPE_CHECKING:
    from garrison.mesh.sidecar.relay import RelayConnection
    from garrison.mesh.sidecar.request import Request
    from garrison.proxy.upstream.pool import UpstreamConnection
    from garrison.proxy.upstream.service import UpstreamService

__all__ = ["Side", "caller_label"]

SWEEP_INTERVAL = 0.5
DRAIN_GRACE, DRAIN_POLL = 10.0, 0.05
# The `mesh.call` line, in the shape telemetry/logging.py gives every event, built by hand and written
# in batches (telemetry/accesslog.py says why). Every %s is JSON-safe by construction: method (an llhttp
# token), path (normalised: RFC 3986 pchar and "/" only), decision and trace id (fixed words, hex);
# caller and callee go through json.dumps (`_quoted`).
ACCESS_LINE = (
    b'{"time":"%s.%03dZ","level":"info","component":"%s","event":"mesh.call","direction":"%s",'
    b'"caller":%s,"callee":%s,"method":"%s","path":"%s","status":%d,"decision":"%s",'
    b'"duration_ms":%.3f,"trace_id":"%s"}\n'
)
QUOTED_CAP = 4096  # distinct callers and callees whose JSON form is kept


@lru_cache(maxsize=4096)  # once per identity, not once per call; bounded
def caller_label(caller: str, gateway_id: str) -> str:
    """A bounded metrics label for a caller's SPIFFE ID."""
    if caller == gateway_id:
        return "gateway"
    return service_of(caller) or "unknown"


class Side:
    """See the module docstring; ``direction`` is ``inbound`` or ``outbound``."""

    def __init__(
        self,
        direction: str,
        loop: asyncio.AbstractEventLoop,
        gate: Gate,
        identity: SidecarIdentity,
        metrics: SidecarMetrics,
        gateway_id: str,
    ) -> None:
        self.direction = direction
        self.loop = loop
        self.gate = gate
        self.identity = identity
        self.metrics = metrics
        self.gateway_id = gateway_id
        self.connections: set[RelayConnection] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self.services: list[UpstreamService] = []
        self.draining = False
        self.server: asyncio.Server | None = None
        self.access_log = AccessLog(None, sink=log.write_lines)
        self.audit = SidecarAudit(NullEmitter())  # the component gives both sides its own
        self._component = log.component().encode()
        self._quoted: dict[str, bytes] = {}

    # -- what the connections ask ------------------------------------------------------------------------
    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = self.loop.create_task(coro)
        self.tasks.add(task)  # held: the loop keeps only a weak reference
        task.add_done_callback(self.tasks.discard)

    def client_context(self) -> ssl.SSLContext:
        return self.identity.client_context()

    def verify_peer(self, request: Request, conn: UpstreamConnection) -> bool:
        """Whether the server we reached is exactly the peer we meant (its SPIFFE ID)."""
        transport = conn.transport
        ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
        presented = spiffe_id(ssl_object.getpeercert()) if ssl_object is not None else None
        if presented == request.expected_peer:
            return True
        self.metrics.upstream_error(request.peer, "identity_mismatch")
        log.warn(
            "mesh.peer.mismatch",
            callee=request.peer,
            expected=request.expected_peer,
            presented=presented,
            trace_id=request.trace_id.decode(),
        )
        return False

    def upstream_error(self, request: Request, reason: str) -> None:
        self.metrics.upstream_error(request.peer or "app", reason)

    # -- records ----------------------------------------------------------------------------------------
    def record(self, request: Request) -> None:
        """The access-log line and the edge's metrics, once per answered request."""
        seconds = perf_counter() - request.start
        decision = (
            "allowed" if request.service is not None else ("denied" if request.status == 403 else "refused")
        )
        caller = caller_label(request.caller, self.gateway_id) if request.caller else "unknown"
        callee = request.peer or "unknown"
        self.metrics.edge(self.direction, caller, callee).observe(request.status, decision, seconds)
        prefix, milliseconds = self.access_log.now()
        self.access_log.write(
            ACCESS_LINE
            % (
                prefix,
                milliseconds,
                self._component,
                self.direction.encode(),
                self._quote(request.caller) if request.caller else b"null",
                self._quote(callee),
                request.method,
                request.path,
                request.status,
                decision.encode(),
                seconds * 1000,
                request.trace_id,
            )
        )

    def _quote(self, text: str) -> bytes:
        """``text`` as a JSON string, remembered: callers and callees repeat on every call."""
        quoted = self._quoted.get(text)
        if quoted is None:
            quoted = json.dumps(text).encode()
            if len(self._quoted) < QUOTED_CAP:
                self._quoted[text] = quoted
        return quoted

    def denied(self, request: Request, reason: str) -> None:
        """The audit line and event of a refused call (the access line follows from ``record``)."""
        self.audit.denied(self.direction, request, reason)
        self.access_log.flush()  # the lines before it stay before it
        log.warn(
            "mesh.call.denied",
            direction=self.direction,
            caller=request.caller or None,
            callee=request.peer,
            method=request.method.decode("latin-1"),
            path=request.path.decode("latin-1"),
            reason=reason,
            trace_id=request.trace_id.decode(),
        )

    def refused(self, request: Request, error: str) -> None:
        """A malformed request (framing, target): no policy was asked."""
        request.peer = request.peer or (self.gate.service if self.direction == "inbound" else "")

    # -- life -------------------------------------------------------------------------------------------
    async def serve(
        self, factory: Callable[[], asyncio.Protocol], sock: Any, ssl_context: ssl.SSLContext | None
    ) -> None:
        self.server = await self.loop.create_server(factory, sock=sock, ssl=ssl_context)
        self.spawn(self._sweep())

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_INTERVAL)
            now = self.loop.time()
            for conn in list(self.connections):
                conn.check_deadlines(now)
            for service in self.services:
                service.sweep(now)
            self.access_log.flush()

    async def drain(self, grace: float = DRAIN_GRACE) -> None:
        """Stop accepting; let requests in flight finish (within ``grace``), then close the rest."""
        self.draining = True
        if self.server is not None:
            self.server.close()
        deadline = self.loop.time() + grace
        while self.connections and self.loop.time() < deadline:
            for conn in list(self.connections):
                conn.close_if_idle()  # a connection finishing its request closes itself (draining)
            await asyncio.sleep(DRAIN_POLL)
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.abort()
        for task in list(self.tasks):
            task.cancel()
        for service in self.services:
            await service.close()
        self.access_log.flush()
