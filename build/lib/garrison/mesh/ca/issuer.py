"""What the CA decides: who gets a certificate, for which identity, and what is recorded.

Three ways in, each answered with the workload's certificate chain and the current trust bundle:

- ``join``: a one-time join token (``join_tokens.py``) names the SPIFFE ID; the CSR's key gets it;
- ``renew``: the caller already holds a certificate of this CA (its mTLS handshake verified the chain);
  the new certificate carries the same SPIFFE ID, never another. An expired certificate cannot renew
  (the handshake refuses it), which is why a lapsed workload needs a new join token;
- neither for a revoked identity: ``revoke`` records it, refuses its renewals and joins, and tells
  every sidecar (through the revocation list the CA serves) to refuse its handshakes.

Every issuance, refusal and revocation is one structured event (``mesh.ca.issued``, ``mesh.ca.refused``,
``mesh.ca.revoked``) with the SPIFFE ID, serial and validity: the audit trail of who holds what. Tokens
and keys never appear in them.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from cryptography import x509
from sqlalchemy import delete, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from garrison.mesh.ca.attestors import AttestationRefused, Attestor, JoinTokenAttestor
from garrison.mesh.ca.join_tokens import JoinTokens
from garrison.mesh.ca.tables import certificates, revocations
from garrison.pki.authority import (
    WORKLOAD_LIFETIME,
    CsrRefused,
    check_request,
    pem,
    sign_workload,
    spiffe_id_of_certificate,
)
from garrison.pki.authority_files import AuthorityFiles
from garrison.telemetry import logging as log

__all__ = ["Issued", "Issuer", "Refused"]

MAX_REVOKED = 100_000
REASON_LENGTH = 200


class Refused(Exception):
    """The CA will not issue; the message is safe to show the caller. ``reason`` is one word for
    metrics: token, revoked, csr, certificate (the presented one names no workload), cap."""

    def __init__(self, message: str, reason: str = "other") -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Issued:
    certificate: x509.Certificate
    chain_pem: bytes  # the certificate, then the intermediates: what the workload presents
    bundle_pem: bytes  # the roots: what the workload verifies its peers against

    @property
    def spiffe_id(self) -> str:
        found = spiffe_id_of_certificate(self.certificate)
        assert found is not None
        return found


class Issuer:
    def __init__(
        self,
        files: AuthorityFiles,
        tokens: JoinTokens,
        engine: AsyncEngine,
        clock: Callable[[], dt.datetime],
        lifetime: dt.timedelta = WORKLOAD_LIFETIME,
        attestors: Sequence[Attestor] = (),
    ) -> None:
        """``tokens`` backs the ``join_token`` attestor; ``attestors`` adds others (attestors.py)."""
        self._files = files
        self.attestors: dict[str, Attestor] = {
            attestor.name: attestor for attestor in (JoinTokenAttestor(tokens), *attestors)
        }
        self._engine = engine
        self._clock = clock
        self._lifetime = lifetime

    async def join(self, token: str, csr: x509.CertificateSigningRequest) -> Issued:
        """A join with a one-time join token (the ``join_token`` attestor)."""
        return await self.attest("join_token", {"token": token}, csr)

    async def attest(
        self, attestor_name: str, evidence: Mapping[str, str], csr: x509.CertificateSigningRequest
    ) -> Issued:
        """A first certificate for the SPIFFE ID ``evidence`` proves to the named attestor."""
        attestor = self.attestors.get(attestor_name)
        if attestor is None:
            raise Refused(f"unknown attestor; this CA knows {', '.join(sorted(self.attestors))}", "attestor")
        self._check(csr, "join")  # before evidence is spent: a bad CSR must not cost the workload its token
        try:
            spiffe_id = await attestor.attest(evidence)
        except AttestationRefused as exc:
            log.warn("mesh.ca.refused", how="join", attestor=attestor.name, reason="token")
            raise Refused(str(exc), "token") from None
        return await self._issue(spiffe_id, csr, "join")

    async def renew(self, presented: x509.Certificate, csr: x509.CertificateSigningRequest) -> Issued:
        """``presented`` is the client certificate the mTLS handshake verified against the bundle."""
        spiffe_id = spiffe_id_of_certificate(presented)
        if spiffe_id is None:
            log.warn("mesh.ca.refused", how="renewal", reason="no SPIFFE ID")
            raise Refused("the client certificate names no workload (one spiffe:// URI SAN)", "certificate")
        return await self._issue(spiffe_id, csr, "renewal")

    async def revoke(self, spiffe_id: str, reason: str) -> None:
        """Cut ``spiffe_id`` off: no more certificates, and peers refuse the ones it holds."""
        now = self._clock()
        async with self._engine.begin() as connection:
            if not await self._is_revoked(spiffe_id, connection):
                beyond_cap = select(revocations.c.spiffe_id).limit(1).offset(MAX_REVOKED - 1)
                if await connection.scalar(beyond_cap) is not None:
                    raise Refused(
                        f"{MAX_REVOKED} identities are revoked (the cap): reinstate old ones first", "cap"
                    )
            await connection.execute(delete(revocations).where(revocations.c.spiffe_id == spiffe_id))
            await connection.execute(
                insert(revocations).values(spiffe_id=spiffe_id, revoked_at=now, reason=reason[:REASON_LENGTH])
            )
        log.log("mesh.ca.revoked", spiffe_id=spiffe_id, reason=reason[:REASON_LENGTH])

    async def reinstate(self, spiffe_id: str) -> bool:
        async with self._engine.begin() as connection:
            gone = await connection.execute(delete(revocations).where(revocations.c.spiffe_id == spiffe_id))
        if gone.rowcount:
            log.log("mesh.ca.reinstated", spiffe_id=spiffe_id)
        return bool(gone.rowcount)

    async def revoked(self) -> list[str]:
        """Every revoked SPIFFE ID: what sidecars refuse in handshakes."""
        async with self._engine.connect() as connection:
            rows = await connection.execute(select(revocations.c.spiffe_id).order_by(revocations.c.spiffe_id))
        return [row.spiffe_id for row in rows]

    def _check(self, csr: x509.CertificateSigningRequest, how: str) -> None:
        try:
            check_request(csr)
        except CsrRefused as exc:
            log.warn("mesh.ca.refused", how=how, reason=str(exc))
            raise Refused(str(exc), "csr") from None

    async def _issue(self, spiffe_id: str, csr: x509.CertificateSigningRequest, how: str) -> Issued:
        if await self._is_revoked(spiffe_id):
            log.warn("mesh.ca.refused", how=how, reason="revoked", spiffe_id=spiffe_id)
            raise Refused(f"{spiffe_id} is revoked", "revoked")
        authority = self._files.issuing()
        now = self._clock()
        try:
            certificate = sign_workload(authority, csr, spiffe_id, now=now, lifetime=self._lifetime)
        except CsrRefused as exc:
            log.warn("mesh.ca.refused", how=how, reason=str(exc), spiffe_id=spiffe_id)
            raise Refused(str(exc), "csr") from None
        async with self._engine.begin() as connection:
            await connection.execute(
                insert(certificates).values(
                    serial=f"{certificate.serial_number:x}",
                    spiffe_id=spiffe_id,
                    not_before=certificate.not_valid_before_utc,
                    not_after=certificate.not_valid_after_utc,
                    obtained_by=how,
                )
            )
        log.log(
            "mesh.ca.issued",
            how=how,
            spiffe_id=spiffe_id,
            serial=f"{certificate.serial_number:x}",
            not_after=certificate.not_valid_after_utc.isoformat(),
        )
        return Issued(certificate, pem(certificate, *authority.chain()), pem(*self._files.bundle()))

    async def _is_revoked(self, spiffe_id: str, connection: AsyncConnection | None = None) -> bool:
        query = select(revocations.c.spiffe_id).where(revocations.c.spiffe_id == spiffe_id)
        if connection is not None:
            return await connection.scalar(query) is not None
        async with self._engine.connect() as own:
            return await own.scalar(query) is not None
