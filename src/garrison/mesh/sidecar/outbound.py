"""The outbound side: the app's plain-HTTP calls to its peers, on over mutual TLS.

The app calls ``http://127.0.0.1:<outbound>/<peer>/<path>`` (the listener is loopback only: whoever
reaches it calls with this service's identity). The first segment of the normalised path names the
peer; the rest is the path the peer sees. The sidecar dials the peer sidecar's ``address`` with the
identity's current client context and, before sending anything, checks that the server's verified
certificate is exactly ``spiffe://<td>/svc/<peer>``: anything else (another service's certificate,
a man in the middle with a certificate of the same CA) is a 502 and a ``mesh.peer.mismatch`` line.
Per peer: an ``UpstreamService`` built from the peer's ``services`` entry (timeouts, retries of
idempotent requests, circuit breaker).
"""

from __future__ import annotations

from dataclasses import dataclass

from mypy_extensions import mypyc_attr

from garrison.mesh.sidecar.relay import RelayConnection
from garrison.mesh.sidecar.request import Request
from garrison.mesh.sidecar.server import Side
from garrison.proxy.upstream.service import UpstreamService

__all__ = ["OutboundConnection", "OutboundSide", "Peer"]


@dataclass(frozen=True)
class Peer:
    service: UpstreamService
    spiffe_id: str  # what its sidecar must present
    host: bytes  # the Host header it is sent


# Not a mypyc native class: its base (server.Side) is not compiled.
@mypyc_attr(native_class=False)
class OutboundSide(Side):
    def __init__(self, *args: object, peers: dict[str, Peer], **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.peers = peers
        self.services.extend(peer.service for peer in peers.values())


class OutboundConnection(RelayConnection):
    def __init__(self, side: OutboundSide) -> None:
        super().__init__(side)
        # Not a narrowed ``side: OutboundSide``: mypyc refuses an attribute retyped in a subclass.
        self.outbound = side

    def handle(self, request: Request) -> None:
        side = self.outbound
        request.caller = side.identity.spiffe_id
        name, _, rest = request.path[1:].partition(b"/")
        peer_name = name.decode("latin-1")
        peer = side.peers.get(peer_name)
        if peer is None:
            request.peer = ""
            self.answer_json(request, 404, "unknown_peer", "no sidecar is configured for that service")
            return
        request.peer = peer_name
        reason = side.gate.outbound(peer_name)
        if reason is not None:
            side.denied(request, reason)
            self.answer_json(request, 403, "forbidden", f"calls to {peer_name} are refused ({reason})")
            return
        request.service = peer.service
        request.expected_peer = peer.spiffe_id
        self.forward(request, request.upstream_request(b"/" + rest, peer.host, b""))
