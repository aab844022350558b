"""The sidecar's audit events: ``mesh.call`` for every refused call, ``mesh.edge`` for the call graph.

``mesh.call`` (outcome denied): actor.service is the caller's SPIFFE ID, target the callee service,
details the method, the normalised path, the reason and the side that refused it. Refusals are
rare and each one matters (lateral movement), so each is an event.

``mesh.edge`` (outcome success): the first allowed call of a caller -> callee pair in this process,
and again once an hour while the pair keeps calling: the audit collector learns the baseline of the
call graph from these, without an event per request. Only the inbound side reports edges (it holds
the caller's verified identity; the caller's own sidecar would report the same edge again). The
pairs are remembered in a bounded dict (``EDGE_CAP``): past it, the pair seen longest ago is
forgotten, so a new caller costs at most an extra event, never unbounded memory.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from garrison.events.emitter import Emitter
from garrison.events.schema import Actor, Event

if TYPE_CHECKING:
    from garrison.mesh.sidecar.request import Request

__all__ = ["EDGE_CAP", "EDGE_REPEAT", "SidecarAudit"]

EDGE_CAP = 1024  # caller -> callee pairs remembered
EDGE_REPEAT = 3600.0  # seconds: a pair still calling is reported again after this


class SidecarAudit:
    """The events of one sidecar (component ``mesh``, instance: its service)."""

    def __init__(self, emitter: Emitter, clock: Callable[[], float] = time.monotonic) -> None:
        self.emitter = emitter
        self._clock = clock
        self._edges: dict[tuple[str, str], float] = {}  # pair -> when it was last reported

    def denied(self, direction: str, request: Request, reason: str) -> None:
        self.emitter.emit(
            Event(
                component="mesh",
                type="mesh.call",
                outcome="denied",
                actor=Actor(service=request.caller or None),
                target=request.peer or None,
                trace_id=request.trace_id.decode("latin-1") or None,
                details={
                    "direction": direction,
                    "method": request.method.decode("latin-1"),
                    "path": request.path.decode("latin-1"),
                    "reason": reason,
                },
            )
        )

    def no_identity(self, peer: str) -> None:
        """A verified certificate that is not an SVID: closed before any request."""
        self.emitter.emit(
            Event(
                component="mesh",
                type="mesh.call",
                outcome="denied",
                actor=Actor(ip=peer or None),
                details={"direction": "inbound", "reason": "no_identity"},
            )
        )

    def allowed(self, caller: str, callee: str) -> None:
        """An allowed inbound call: reports the edge when it is new or an hour old. One dict lookup
        on the hot path otherwise."""
        key = (caller, callee)
        now = self._clock()
        edges = self._edges
        last = edges.get(key)
        if last is not None and now - last < EDGE_REPEAT:
            return
        if last is None and len(edges) >= EDGE_CAP:
            del edges[next(iter(edges))]  # the pair reported longest ago
        edges.pop(key, None)
        edges[key] = now  # insertion order = report order
        self.emitter.emit(
            Event(component="mesh", type="mesh.edge", actor=Actor(service=caller), target=callee)
        )
