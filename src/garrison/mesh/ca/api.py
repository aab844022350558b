"""The CA's workload API (HTTPS, client certificates optional and verified against the trust bundle).

- ``POST /v1/join`` ``{"token", "csr"}``: a one-time join token and a CSR (PEM) -> the certificate;
  ``"attestor"`` names another attestor (mesh/ca/attestors.py), whose evidence fields replace ``token``;
- ``POST /v1/renew`` ``{"csr"}`` with the current certificate as TLS client certificate -> the next one,
  same SPIFFE ID (401 without a client certificate, 403 when revoked);
- ``GET /v1/bundle``: the trust bundle (PEM);
- ``GET /v1/state?after=N`` with a workload certificate as TLS client certificate (401 without: which
  services are quarantined or revoked is incident-response state, not for whoever reaches the port):
  long-poll, answered as soon as the version passes N, or after ``LONG_POLL`` seconds with the same
  version: ``{"version", "trust_bundle", "revoked", "quarantined"}``.

Join and renew answer ``{"spiffe_id", "certificate_chain", "trust_bundle", "not_after"}``; every error is
``{"error", "message"}`` JSON. Bodies are at most 16 KiB (``web/simplehttp.py`` reads them bounded).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs

from cryptography import x509

from garrison.events.emitter import Emitter, NullEmitter
from garrison.events.schema import Actor, Event
from garrison.mesh.ca.attestors import DEFAULT_ATTESTOR
from garrison.mesh.ca.issuer import Issued, Issuer, Refused
from garrison.mesh.ca.state import CaState
from garrison.pki.authority import CsrRefused, check_request, spiffe_id_of_certificate
from garrison.telemetry.mesh_metrics import CaMetrics
from garrison.web.simplehttp import SimpleRequest, SimpleResponse

__all__ = ["LONG_POLL", "MAX_BODY", "CaApi"]

MAX_BODY = 16 * 1024
LONG_POLL = 25.0  # under the 30 s idle timeouts of common proxies and load balancers
JSON = b"application/json"


def json_response(status: int, payload: Any) -> SimpleResponse:
    return SimpleResponse(status, json.dumps(payload, separators=(",", ":")).encode() + b"\n", JSON)


def error(status: int, code: str, message: str) -> SimpleResponse:
    return json_response(status, {"error": code, "message": message})


class BadRequest(ValueError):
    def __init__(self, message: str, reason: str = "malformed") -> None:
        super().__init__(message)
        self.reason = reason


class CaApi:
    """The handler behind the CA's TLS listener."""

    def __init__(
        self,
        issuer: Issuer,
        state: CaState,
        metrics: CaMetrics,
        long_poll: float = LONG_POLL,
        emitter: Emitter | None = None,
    ) -> None:
        """``emitter``: where ``ca.join`` (issued or refused) and ``ca.renew`` (refused) events go."""
        self._emitter = emitter or NullEmitter()
        self._issuer = issuer
        self._state = state
        self._metrics = metrics
        self._long_poll = long_poll
        self._routes: dict[tuple[bytes, str], Callable[[SimpleRequest], Awaitable[SimpleResponse]]] = {
            (b"POST", "/v1/join"): self._join,
            (b"POST", "/v1/renew"): self._renew,
            (b"GET", "/v1/bundle"): self._bundle,
            (b"GET", "/v1/state"): self._state_poll,
        }
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    async def idle(self) -> None:
        """Return once no request is being answered (the CA drains before closing its database)."""
        await self._idle.wait()

    async def __call__(self, request: SimpleRequest) -> SimpleResponse:
        self._in_flight += 1
        self._idle.clear()
        try:
            return await self._answer(request)
        finally:
            self._in_flight -= 1
            if not self._in_flight:
                self._idle.set()

    async def _answer(self, request: SimpleRequest) -> SimpleResponse:
        path = request.target.partition(b"?")[0]
        route = self._routes.get((request.method, path.decode("latin-1")))
        if route is None:
            if any(known == path.decode("latin-1") for _, known in self._routes):
                return error(405, "method_not_allowed", "see the CA API in docs/mesh.md")
            return error(404, "not_found", "no such endpoint")
        return await route(request)

    async def _join(self, request: SimpleRequest) -> SimpleResponse:
        try:
            payload = _payload(request)
            name = _attestor_name(payload)
            attestor = self._issuer.attestors.get(name)
            if attestor is None:
                known = ", ".join(sorted(self._issuer.attestors))
                raise BadRequest(f"unknown attestor; this CA knows {known}", "attestor")
            body = _strings(payload, (*attestor.fields, "csr"))
            csr = _csr(body["csr"])
        except BadRequest as exc:
            self._metrics.refuse("join", exc.reason)
            self._event("ca.join", "failure", None, reason=exc.reason)
            return error(400, "bad_request", str(exc))
        try:
            issued = await self._issuer.attest(name, body, csr)
        except Refused as exc:
            self._metrics.refuse("join", exc.reason)
            self._event("ca.join", "failure", None, reason=exc.reason, attestor=name)
            return error(403, "forbidden", str(exc))
        self._metrics.issue("join")
        self._event("ca.join", "success", issued.spiffe_id, attestor=name)
        return json_response(200, _issued(issued))

    def _event(self, type_: str, outcome: str, spiffe_id: str | None, **details: str) -> None:
        self._emitter.emit(
            Event(
                component="ca",
                type=type_,
                outcome=outcome,  # type: ignore[arg-type]
                actor=Actor(service=spiffe_id),
                target=spiffe_id,
                details=details,
            )
        )

    async def _renew(self, request: SimpleRequest) -> SimpleResponse:
        if request.peer_der is None:
            self._metrics.refuse("renewal", "certificate")
            return error(
                401, "unauthorized", "renewal needs the current certificate as TLS client certificate"
            )
        try:
            csr = _csr(_body(request, ("csr",))["csr"])
        except BadRequest as exc:
            self._metrics.refuse("renewal", exc.reason)
            return error(400, "bad_request", str(exc))
        presented = x509.load_der_x509_certificate(request.peer_der)
        try:
            issued = await self._issuer.renew(presented, csr)
        except Refused as exc:
            self._metrics.refuse("renewal", exc.reason)
            self._event("ca.renew", "failure", spiffe_id_of_certificate(presented), reason=exc.reason)
            return error(403, "forbidden", str(exc))
        self._metrics.issue("renewal")
        return json_response(200, _issued(issued))

    async def _bundle(self, request: SimpleRequest) -> SimpleResponse:
        return SimpleResponse(200, self._state.snapshot.trust_bundle, b"application/x-pem-file")

    async def _state_poll(self, request: SimpleRequest) -> SimpleResponse:
        if request.peer_der is None:
            return error(
                401, "unauthorized", "the state is published to workloads: present a workload certificate"
            )
        query = parse_qs(request.target.partition(b"?")[2].decode("latin-1"), max_num_fields=5)
        raw = query.get("after", ["-1"])[-1]
        if not raw.lstrip("-").isdigit() or len(raw) > 19:
            return error(400, "bad_request", "`after` is the last version seen (an integer)")
        snapshot = await self._state.wait_after(int(raw), self._long_poll)
        return json_response(200, snapshot.to_json())


def _issued(issued: Issued) -> dict[str, str]:
    return {
        "spiffe_id": issued.spiffe_id,
        "certificate_chain": issued.chain_pem.decode("ascii"),
        "trust_bundle": issued.bundle_pem.decode("ascii"),
        "not_after": issued.certificate.not_valid_after_utc.isoformat(),
    }


def _payload(request: SimpleRequest) -> dict[str, Any]:
    try:
        payload = json.loads(request.body)
    except ValueError:
        raise BadRequest("the body is not JSON") from None
    if not isinstance(payload, dict):
        raise BadRequest("the body is a JSON object")
    return payload


def _strings(payload: dict[str, Any], fields: tuple[str, ...]) -> dict[str, str]:
    if not all(isinstance(payload.get(name), str) for name in fields):
        raise BadRequest(f"the body is a JSON object with string fields {', '.join(fields)}")
    return {name: payload[name] for name in fields}


def _body(request: SimpleRequest, fields: tuple[str, ...]) -> dict[str, str]:
    return _strings(_payload(request), fields)


def _attestor_name(payload: dict[str, Any]) -> str:
    """The join's ``attestor`` field (``join_token`` when absent)."""
    name = payload.get("attestor", DEFAULT_ATTESTOR)
    if not isinstance(name, str):
        raise BadRequest("`attestor` is the name of an attestor (a string)")
    return name


def _csr(text: str) -> x509.CertificateSigningRequest:
    try:
        csr = x509.load_pem_x509_csr(text.encode("ascii"))
    except (ValueError, UnicodeEncodeError):
        raise BadRequest("`csr` is not a PEM certificate signing request") from None
    try:
        check_request(csr)
    except CsrRefused as exc:
        raise BadRequest(f"CSR refused: {exc}", "csr") from None
    return csr
