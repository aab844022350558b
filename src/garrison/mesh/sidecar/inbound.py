"""The inbound side: mutual TLS from peers, the policy, and allowed calls on to the local app.

The listener's TLS context (the identity's, not a copy) requires a client certificate verified
against the trust bundle: a certificate from another CA, or an expired one, ends in the handshake.
The caller is the SPIFFE ID of that verified certificate, read once per connection, never from a
header. Each request, after the proxy core's parsing and normalisation, asks the ``Gate``: revoked
callers, quarantine (of this service or of the caller) and the call policy, on the normalised path,
so ``/charges/../admin`` is decided as ``/admin``. Denied: 403 with a JSON body and a
``mesh.call.denied`` line. Allowed: forwarded to the app with ``garrison-caller`` (the SPIFFE ID) and
``garrison-caller-service`` (the service name, for service identities); copies of these headers
sent by the caller were dropped while parsing.
"""

from __future__ import annotations

import asyncio

from mypy_extensions import mypyc_attr

from garrison.mesh.sidecar.gate import service_of
from garrison.mesh.sidecar.relay import RelayConnection
from garrison.mesh.sidecar.request import Request
from garrison.mesh.sidecar.server import Side
from garrison.pki.identity import spiffe_id
from garrison.proxy.upstream.service import UpstreamService
from garrison.telemetry import logging as log

__all__ = ["InboundConnection", "InboundSide"]

DENIED_MESSAGE = "this call is not allowed by the mesh policy"


# Not a mypyc native class: its base (server.Side) is not compiled.
@mypyc_attr(native_class=False)
class InboundSide(Side):
    """The inbound side and the app it forwards to."""

    def __init__(self, *args: object, app: UpstreamService, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.app = app
        self.app_host = app.targets[0].host_header
        self.services.append(app)

    def caller_headers(self, caller: str) -> bytes:
        service = service_of(caller)
        line = b"garrison-caller: %s\r\n" % caller.encode()
        return line + (b"garrison-caller-service: %s\r\n" % service.encode() if service else b"")


class InboundConnection(RelayConnection):
    def __init__(self, side: InboundSide) -> None:
        super().__init__(side)
        # Not a narrowed ``side: InboundSide``: mypyc refuses an attribute retyped in a subclass.
        self.inbound = side
        self.caller: str | None = None
        self.caller_lines = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        ssl_object = transport.get_extra_info("ssl_object")
        self.caller = spiffe_id(ssl_object.getpeercert()) if ssl_object is not None else None
        if self.caller is None:
            # Verified by OpenSSL but not an SVID (no single spiffe:// URI SAN): not a workload.
            log.warn("mesh.call.denied", direction="inbound", reason="no_identity", peer=self.peer)
            self.inbound.audit.no_identity(str(self.peer))
            self._close()
            return
        self.caller_lines = self.inbound.caller_headers(self.caller)

    def handle(self, request: Request) -> None:
        side = self.inbound
        request.caller = self.caller or ""
        request.peer = side.gate.service
        reason = side.gate.inbound(
            self.caller, request.method.decode("latin-1"), request.path.decode("latin-1")
        )
        if reason is not None:
            side.denied(request, reason)
            self.answer_json(request, 403, "forbidden", DENIED_MESSAGE)
            return
        request.service = side.app
        side.audit.allowed(request.caller, request.peer)  # the call graph (mesh.edge), once an hour
        self.forward(request, request.upstream_request(request.path, side.app_host, self.caller_lines))
