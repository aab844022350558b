"""Attestors: how a workload proves, once, which SPIFFE ID its first certificate may name.

A join (``POST /v1/join``) carries a CSR, the name of an attestor (``"attestor"``, by default
``join_token``) and that attestor's evidence as string fields of the same JSON body. The attestor
answers one question, "which SPIFFE ID does this evidence name?", or refuses; the issuer does the
rest (revocation, the CSR's checks, signing, audit) the same way for every attestor. That is SPIRE's
split between node/workload attestation and issuance, and it is where a Kubernetes service-account
token attestor (a projected token checked against the cluster's issuer) plugs in later without
touching the issuer or the API.

The one attestor today is ``join_token`` (join_tokens.py): a one-time token minted by
``garrison ca join-token``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from garrison.mesh.ca.join_tokens import JoinTokenRefused, JoinTokens

__all__ = ["DEFAULT_ATTESTOR", "AttestationRefused", "Attestor", "JoinTokenAttestor"]

DEFAULT_ATTESTOR = "join_token"


class AttestationRefused(Exception):
    """The evidence proves nothing; the message is safe to show the presenter (it names no secret)."""


class Attestor(Protocol):
    @property
    def name(self) -> str: ...  # what a join names in its "attestor" field

    @property
    def fields(self) -> tuple[str, ...]: ...  # the string fields of the join body it reads

    async def attest(self, evidence: Mapping[str, str]) -> str:
        """The SPIFFE ID ``evidence`` proves, or AttestationRefused. Single-use evidence is spent here."""
        ...


class JoinTokenAttestor:
    """A one-time join token (``{"token": "gjt_..."}``), spent on the first presentation."""

    name = DEFAULT_ATTESTOR
    fields = ("token",)

    def __init__(self, tokens: JoinTokens) -> None:
        self._tokens = tokens

    def __repr__(self) -> str:
        return "JoinTokenAttestor()"

    async def attest(self, evidence: Mapping[str, str]) -> str:
        try:
            return await self._tokens.redeem(evidence["token"])
        except JoinTokenRefused as exc:
            raise AttestationRefused(str(exc)) from None
