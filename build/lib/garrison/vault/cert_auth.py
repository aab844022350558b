"""``auth/cert/login`` with a Garrison workload certificate: a service in the mesh logs in with the
certificate it already has, so it needs no bootstrap secret.

The TLS handshake has verified the certificate against the mesh trust bundle (listener_tls.py); what
is left is the mapping: the certificate's SPIFFE ID (its single ``spiffe://`` URI SAN,
``pki.identity``) must be ``spiffe://<td>/svc/<name>`` of a service configured in garrison.yaml, and
the token gets ``default`` plus ``svc-<name>`` (service_policies.py). Anything else is Vault's 400
``invalid certificate or no client certificate supplied``.

With the mesh configured, the vault follows the CA's published state (mesh_state.py): a revoked
SPIFFE ID or a quarantined service is refused, and nothing is let in before the first state arrives.

The token lives at most as long as the certificate (``vault.cert_login.token_ttl``, cut to the
certificate's ``not_after``, and not renewable past it): a workload whose certificate the CA stops
renewing (revoked, quarantined) loses its vault access with it. Expiry is checked again here with the
vault's clock, since a keep-alive connection can outlive the certificate it was opened with.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field

from cryptography import x509

from garrison.pki.authority import spiffe_id_of_certificate
from garrison.pki.workload_types import MeshState
from garrison.telemetry import logging as log
from garrison.vault.answers import Answer, Call, VaultError, envelope
from garrison.vault.service_policies import ServicePolicies
from garrison.vault.tokens import TokenStore

__all__ = ["INVALID_CERTIFICATE", "CertLogin"]

INVALID_CERTIFICATE = "invalid certificate or no client certificate supplied"


@dataclass
class CertLogin:
    services: ServicePolicies  # replaced on reload
    token_ttl: float
    clock: Callable[[], float]
    # With the mesh configured, the CA's published state (mesh_state.py); None: not known yet.
    follows_mesh: bool = False
    state: MeshState | None = field(default=None, repr=False)

    def apply_state(self, state: MeshState) -> None:
        self.state = state
        log.log(
            "vault.cert.mesh_state",
            version=state.version,
            revoked=len(state.revoked),
            quarantined=len(state.quarantined),
        )

    async def login(self, tokens: TokenStore, call: Call) -> Answer:
        if call.operation != "create-or-update":
            raise VaultError(405, "unsupported operation")
        if not call.client_certificate:
            raise VaultError(400, INVALID_CERTIFICATE)
        certificate = x509.load_pem_x509_certificate(call.client_certificate.encode("ascii"))
        now = self.clock()
        not_after = certificate.not_valid_after_utc.timestamp()
        if not_after <= now or certificate.not_valid_before_utc.timestamp() > now:
            raise VaultError(400, INVALID_CERTIFICATE)
        spiffe_id = spiffe_id_of_certificate(certificate)
        service = self.services.services.get(spiffe_id) if spiffe_id else None
        if spiffe_id is None or service is None:
            raise VaultError(400, INVALID_CERTIFICATE)
        if self.follows_mesh:
            if self.state is None:
                raise VaultError(
                    503, "the mesh CA's revocation state is not known: cert login is refused until it is"
                )
            if spiffe_id in self.state.revoked or service in self.state.quarantined:
                log.warn("vault.cert.refused", spiffe_id=spiffe_id, reason="revoked or quarantined")
                raise VaultError(400, INVALID_CERTIFICATE)
        name = call.body.get("name")
        if name not in (None, "", service):  # Vault's optional cert role name; ours are the services
            raise VaultError(400, INVALID_CERTIFICATE)
        lifetime = max(1.0, min(self.token_ttl, tokens.max_ttl, not_after - now))
        metadata = {
            "cert_name": service,
            "spiffe_id": spiffe_id,
            "serial_number": str(certificate.serial_number),
            "not_after": dt.datetime.fromtimestamp(not_after, dt.UTC).isoformat(),
        }
        token, entry = await tokens.create_login(
            self.services.policies_for(service),
            lifetime,
            lifetime,
            f"cert-{service}",
            metadata,
            "auth/cert/login",
        )
        auth = tokens.auth_block(token, entry)
        payload = envelope(call.request_id, None, auth)
        return Answer(200, payload, payload)
