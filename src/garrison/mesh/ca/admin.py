"""The CA's admin API: the shared AdminApi (/live, /ready, /metrics) and the CA's own sub-APIs.

- ``POST /join-tokens?service=S&ttl=10m`` -> ``{"token", "spiffe_id", "expires_in"}`` (the token is shown
  this once); ``spiffe_id=`` instead of ``service=`` names a non-service identity of the trust domain
  (the gateway's ``spiffe://<td>/gateway``);
- ``GET /revocations``; ``POST /revocations?service=S&reason=R`` (or ``spiffe_id=``);
  ``DELETE /revocations?service=S`` reinstates;
- ``GET /quarantine``; ``POST /quarantine?service=S&reason=R``; ``DELETE /quarantine?service=S``.

Parameters travel in the query string, as on the gateway's admin API, because the admin listener
accepts no request bodies. Who may call is decided before these run (admin/auth.py: the admin token
for every change; Host and Origin checks for every request).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable

from garrison.admin.api import AdminApi, Readiness, json_answer, query_params
from garrison.config.units import parse_duration
from garrison.events.emitter import Emitter, NullEmitter
from garrison.events.schema import Actor, Event
from garrison.mesh.ca.issuer import Refused
from garrison.mesh.ca.join_tokens import JoinTokens, TooManyJoinTokens
from garrison.mesh.ca.state import CaState
from garrison.pki.authority import trust_domain_id, workload_id
from garrison.telemetry.mesh_metrics import CaMetrics
from garrison.web.simplehttp import SimpleRequest, SimpleResponse

__all__ = ["ca_admin_api", "identity_of"]

SubHandler = Callable[[bytes, dict[str, str]], Awaitable[SimpleResponse | None]]


def identity_of(trust_domain: str, params: dict[str, str]) -> str:
    """The SPIFFE ID that ``service=`` or ``spiffe_id=`` (exactly one) names in this trust domain."""
    if ("service" in params) == ("spiffe_id" in params):
        raise ValueError("give exactly one of `service` or `spiffe_id`")
    if "service" in params:
        return workload_id(trust_domain, params["service"])
    spiffe_id, domain = params["spiffe_id"], trust_domain_id(trust_domain)
    if not spiffe_id.startswith(domain + "/") or len(spiffe_id) > 255 or not spiffe_id.isprintable():
        raise ValueError(f"`spiffe_id` must be in this trust domain ({domain}/...)")
    return spiffe_id


def ca_admin_api(
    readiness: Readiness,
    metrics: CaMetrics,
    state: CaState,
    tokens: JoinTokens,
    trust_domain: str,
    emitter: Emitter | None = None,
) -> AdminApi:
    """``emitter``: where ``ca.revoke`` and ``ca.quarantine`` events go (each change, with its action)."""
    api = AdminApi(readiness, metrics.registry)
    events = emitter or NullEmitter()

    def changed(type_: str, target: str, action: str, reason: str) -> None:
        details = {"action": action, "reason": reason[:200]} if reason else {"action": action}
        # The admin API's caller is whoever holds the admin token (admin/auth.py): "admin".
        events.emit(
            Event(component="ca", type=type_, actor=Actor(subject="admin"), target=target, details=details)
        )

    async def join_tokens(method: bytes, params: dict[str, str]) -> SimpleResponse | None:
        if method != b"POST":
            return None
        spiffe_id = identity_of(trust_domain, params)
        ttl = parse_duration(params.get("ttl", "10m"))
        try:
            token = await tokens.mint(spiffe_id, dt.timedelta(seconds=ttl))
        except TooManyJoinTokens as exc:
            return json_answer(507, {"error": "insufficient_storage", "message": str(exc)})
        return json_answer(200, {"token": token, "spiffe_id": spiffe_id, "expires_in": ttl})

    async def revocations(method: bytes, params: dict[str, str]) -> SimpleResponse | None:
        if method in (b"GET", b"HEAD"):
            return json_answer(200, {"revoked": list(state.snapshot.revoked)})
        spiffe_id = identity_of(trust_domain, params)
        if method == b"POST":
            try:
                await state.revoke(spiffe_id, params.get("reason", ""))
            except Refused as exc:
                return json_answer(507, {"error": "insufficient_storage", "message": str(exc)})
            changed("ca.revoke", spiffe_id, "revoke", params.get("reason", ""))
            return json_answer(200, {"revoked": spiffe_id, "version": state.snapshot.version})
        if method == b"DELETE":
            reinstated = await state.reinstate(spiffe_id)
            changed("ca.revoke", spiffe_id, "reinstate", "")
            return json_answer(200, {"reinstated": reinstated})
        return None

    async def quarantine(method: bytes, params: dict[str, str]) -> SimpleResponse | None:
        if method in (b"GET", b"HEAD"):
            return json_answer(200, {"quarantined": list(state.snapshot.quarantined)})
        service = params.get("service", "")
        workload_id(trust_domain, service)  # a valid service name, or ValueError
        if method == b"POST":
            await state.quarantine(service, params.get("reason", ""))
            changed("ca.quarantine", service, "quarantine", params.get("reason", ""))
            return json_answer(200, {"quarantined": service, "version": state.snapshot.version})
        if method == b"DELETE":
            released = await state.unquarantine(service)
            changed("ca.quarantine", service, "release", "")
            return json_answer(200, {"released": released})
        return None

    api.register("/join-tokens", _sub_api(join_tokens, b"POST"))
    api.register("/revocations", _sub_api(revocations, b"GET, POST, DELETE"))
    api.register("/quarantine", _sub_api(quarantine, b"GET, POST, DELETE"))
    return api


def _sub_api(handle: SubHandler, allow: bytes) -> Callable[[SimpleRequest], Awaitable[SimpleResponse]]:
    async def answer(request: SimpleRequest) -> SimpleResponse:
        try:
            response = await handle(request.method, query_params(request.target.partition(b"?")[2]))
        except ValueError as exc:
            return json_answer(400, {"error": "bad_request", "message": str(exc)})
        if response is None:
            return SimpleResponse(405, b"method not allowed\n", headers=b"allow: %s\r\n" % allow)
        return response

    return answer
