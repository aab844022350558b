"""Default-deny call policy in front of an ASGI app served over mTLS with a Garrison identity.

``GarrisonMiddleware(app, identity, policy, service="payments")`` decides every HTTP request the way
the sidecar's inbound side does (docs/mesh.md, "Inbound"):

- the caller is the SPIFFE ID of the client certificate the server verified, read from the ASGI
  ``tls`` extension (``scope["extensions"]["tls"]["client_cert_chain"][0]``). uvicorn does not fill
  that extension itself; ``garrison.mesh.python.serving`` gives it protocol classes that do, and
  serves with the identity's server context, which requires a client certificate under the trust
  bundle. The middleware trusts the extension only as far as the server verified the certificate:
  serve it with ``serving`` (or any server that requires and verifies client certificates);
- the path is normalised with the proxy's rules (``garrison.uri``): a path that does not normalise is
  400 before any policy; the decision is on the normalised path (``/charges/../admin`` is ``/admin``);
- the caller must not be revoked, neither it nor this service quarantined (the CA's state, pushed
  through the identity), and ``policy.allows(caller, service, method, path)``. Anything else is 403
  ``{"error": "forbidden", "message": ...}`` and a ``mesh.call.denied`` log line;
- allowed: the app gets the caller in ``scope["state"]["garrison_caller"]`` (and
  ``garrison_caller_service``) and in the headers ``garrison-caller``/``garrison-caller-service``;
  any incoming header named ``garrison-*`` or ``x-garrison-*`` (or with ``_``) is removed first.

Lifespan and other scope types pass through; websockets are refused (not supported yet).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from cryptography import x509

from garrison.mesh.policy import CallPolicy
from garrison.pki.authority import spiffe_id_of_certificate
from garrison.pki.workload import WorkloadIdentity
from garrison.telemetry import logging as log
from garrison.uri.normalize import TargetRejected, normalize_path

__all__ = ["ASGIApp", "GarrisonMiddleware", "Message", "Receive", "Scope", "Send", "caller_of"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

FORBIDDEN = "this call is not allowed by the mesh policy"


class GarrisonMiddleware:
    """See the module docstring."""

    def __init__(self, app: ASGIApp, identity: WorkloadIdentity, policy: CallPolicy, *, service: str) -> None:
        self.app = app
        self.identity = identity
        self.policy = policy
        self.service = service
        self._service_prefix = identity.trust_domain_id + "/svc/"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, receive, send)
            return
        if scope["type"] != "http":
            await _answer(send, 403, "forbidden", "only HTTP is served here", websocket=True)
            return
        caller = caller_of(scope)
        try:
            path = normalize_path(scope.get("raw_path") or scope["path"].encode())
        except TargetRejected as exc:
            await _answer(send, exc.status, "bad_request", exc.reason)
            return
        reason = self._refusal(caller, scope["method"], path.decode("ascii", "replace"))
        if reason is not None:
            log.warn(
                "mesh.call.denied",
                caller=caller,
                callee=self.service,
                method=scope["method"],
                path=path.decode("ascii", "replace"),
                reason=reason,
            )
            await _answer(send, 403, "forbidden", FORBIDDEN)
            return
        assert caller is not None
        await self.app(self._with_caller(scope, caller), receive, send)

    def _refusal(self, caller: str | None, method: str, path: str) -> str | None:
        if caller is None:
            return "no client certificate"
        state = self.identity.state
        if state is not None:
            if caller in state.revoked:
                return "caller revoked"
            if self.service in state.quarantined or self._service_of(caller) in state.quarantined:
                return "quarantined"
        if not self.policy.allows(caller, self.service, method, path):
            return "policy"
        return None

    def _service_of(self, caller: str) -> str | None:
        return caller[len(self._service_prefix) :] if caller.startswith(self._service_prefix) else None

    def _with_caller(self, scope: Scope, caller: str) -> Scope:
        service = self._service_of(caller)
        headers = [(name, value) for name, value in scope["headers"] if not _garrison_owned(name)]
        headers.append((b"garrison-caller", caller.encode()))
        state = dict(scope.get("state") or {})
        state["garrison_caller"] = caller
        state["garrison_caller_service"] = service
        if service is not None:
            headers.append((b"garrison-caller-service", service.encode()))
        return {**scope, "headers": headers, "state": state}


def caller_of(scope: Scope) -> str | None:
    """The SPIFFE ID of the verified client certificate (the ``tls`` extension), or None."""
    tls = (scope.get("extensions") or {}).get("tls") or {}
    chain = tls.get("client_cert_chain") or ()
    return _spiffe_id_of_pem(chain[0]) if chain else None


@functools.lru_cache(maxsize=1024)
def _spiffe_id_of_pem(pem: str) -> str | None:
    """Parsed once per certificate, not per request (a connection carries the same leaf)."""
    try:
        return spiffe_id_of_certificate(x509.load_pem_x509_certificate(pem.encode("ascii")))
    except ValueError:
        return None


def _garrison_owned(name: bytes) -> bool:
    lowered = name.lower().replace(b"_", b"-")
    return lowered.startswith((b"garrison-", b"x-garrison-"))


async def _answer(send: Send, status: int, error: str, message: str, *, websocket: bool = False) -> None:
    if websocket:
        await send({"type": "websocket.close", "code": 1008})
        return
    body = json.dumps({"error": error, "message": message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
