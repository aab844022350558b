"""A route's authentication step: a bearer token (JWT), a Garrison API key or a client certificate.

``RouteAuth.authenticate`` runs synchronously on the hot path: a cached token is a dictionary
lookup, a new one a signature check with a key already in the JWKS cache. Only a token naming a
``kid`` the cache does not know needs the network (a rate-limited JWKS refetch); that case raises
``NeedsRefetch`` and the proxy finishes it asynchronously with ``authenticate_async``.

A client certificate was verified by the TLS handshake (the server context asks for one and checks
it against ``gateway.mtls.ca``); ``ClientCertificates`` maps the verified certificate's SAN or CN to
a configured client (through pki's ``CertificateMap``, shared with the mesh), once per connection,
and ``MtlsRouteAuth`` checks the route's scopes.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast
from urllib.parse import parse_qs

from garrison.gateway.auth.apikeys import ApiKeyCache, extract_api_key
from garrison.gateway.auth.authz import InsufficientScope, Requirement, www_authenticate
from garrison.pki.identity import CertificateMap, CertificateName, NameKind, NoCertificate, UnknownCertificate
from garrison.tokens.bearer import extract_bearer
from garrison.tokens.jwt import AuthError, JwtVerifier, KeysUnavailable, TokenRejected, VerifiedToken

# What may go into a gateway-owned header: visible ASCII and spaces, so a claim can never inject a
# header line (CR/LF) or smuggle bytes an upstream would read differently.
_HEADER_SAFE = re.compile(r"[\x20-\x7e]{1,512}")


class MissingCredentials(AuthError):
    def __init__(self) -> None:
        super().__init__("unauthorized", "An access token is required.", 401)


class NeedsRefetch(Exception):
    """The token names a key the JWKS cache does not hold yet."""


@dataclass(frozen=True, slots=True)
class Identity:
    """What the upstream and the access log learn about an authenticated caller."""

    subject: str
    client: str  # what `rate_limit: {key: client}` counts: the client id, else the subject
    headers: bytes  # X-Garrison-Subject / -Client / -Scopes lines
    log_subject: bytes  # JSON-encoded, for the access log


@dataclass(frozen=True, slots=True)
class ApiKeyRouteAuth:
    """`require: api_key`: the key is looked up in the gateway's in-memory snapshot (no I/O)."""

    keys: ApiKeyCache
    requirement: Requirement

    def authenticate(self, authorization: list[bytes], api_key: list[bytes], query: bytes) -> Identity:
        try:
            presented = extract_api_key(authorization, api_key)
        except ValueError:
            raise TokenRejected("two_tokens") from None
        if presented is None:
            raise MissingCredentials
        record = self.keys.lookup(presented)
        if record is None:
            raise AuthError("invalid_token", "The API key is not valid.", 401)
        as_token = VerifiedToken(
            subject=f"apikey:{record.name}",
            client_id=record.prefix,
            scopes=frozenset(record.scopes),
            roles=frozenset(),
            claims={},
            jti=None,
            exp=math.inf,
        )
        self.requirement.check(as_token)
        return identity_of(as_token)


@dataclass(frozen=True, slots=True)
class JwtRouteAuth:
    verifier: JwtVerifier
    requirement: Requirement
    allow_query: bool
    # The token cache hands back the same VerifiedToken object for a hot token, so its identity
    # lines are built once and reused while that object keeps coming back (an `is` check, which
    # also keeps the object alive: no id() reuse).
    _last: list[tuple[VerifiedToken, Identity]] = field(default_factory=list)
    # The Authorization values of the last request that passed, with its result: a keep-alive
    # client repeating the same header skips extraction and hashing (exp and revocation are still
    # checked on every request).
    _memo: list[tuple[list[bytes], VerifiedToken, Identity]] = field(default_factory=list)

    def bearer(self, authorization: list[bytes], query: bytes) -> str:
        query_token: bytes | None = None
        if b"access_token=" in query:
            values = parse_qs(query.decode("ascii", "replace")).get("access_token", [])
            if len(values) > 1:
                raise TokenRejected("two_tokens")
            query_token = values[0].encode("ascii", "replace") if values else None
        token = extract_bearer(authorization, query_token, self.allow_query)
        if token is None:
            raise MissingCredentials
        return token

    def authenticate(self, authorization: list[bytes], api_key: list[bytes], query: bytes) -> Identity:
        """The caller's identity, or AuthError (401/400/403), or NeedsRefetch."""
        memo, cache = self._memo, self.verifier.cache
        if memo and cache is not None and memo[0][0] == authorization and b"access_token=" not in query:
            _, verified, identity = memo[0]
            now = time.time()
            if now < verified.exp and not (
                verified.jti is not None and cache.revocations.is_revoked(verified.jti, now)
            ):
                return identity
            memo.clear()  # expired or revoked: the full path below says which
        token = self.bearer(authorization, query)
        try:
            verified = self.verifier.verify(token, time.time())
        except TokenRejected as exc:
            if exc.reason == "kid_unknown":
                raise NeedsRefetch(token) from None
            raise
        identity = self._authorize(verified)
        if authorization and cache is not None:
            memo[:] = [(authorization, verified, identity)]
        return identity

    async def authenticate_async(self, token: str) -> Identity:
        return self._authorize(await self.verifier.verify_async(token, time.time()))

    def _authorize(self, verified: VerifiedToken) -> Identity:
        last = self._last
        if last and last[0][0] is verified:
            return last[0][1]  # already checked against this route's requirement
        self.requirement.check(verified)
        identity = identity_of(verified)
        last[:] = [(verified, identity)]
        return identity


def identity_of(verified: VerifiedToken) -> Identity:
    scopes = " ".join(sorted(verified.scopes))
    values = [verified.subject, verified.client_id or "", scopes]
    if not all(_HEADER_SAFE.fullmatch(value) for value in values if value):
        raise TokenRejected("malformed")  # a claim the gateway cannot pass on safely
    lines = [b"x-garrison-subject: %s\r\n" % verified.subject.encode()]
    if verified.client_id:
        lines.append(b"x-garrison-client: %s\r\n" % verified.client_id.encode())
    if scopes:
        lines.append(b"x-garrison-scopes: %s\r\n" % scopes.encode())
    return Identity(
        verified.subject,
        verified.client_id or verified.subject,
        b"".join(lines),
        json.dumps(verified.subject).encode(),
    )


class CertificateRefused(AuthError):
    """403 for a client-certificate route. No WWW-Authenticate: there is no HTTP challenge for TLS."""

    def __init__(self, error: str, description: str) -> None:
        super().__init__(error, description, 403)


@dataclass(frozen=True, slots=True)
class CertificateClient:
    id: str
    token: VerifiedToken  # the client as a token, so routes check scopes with the same Requirement
    identity: Identity


class ClientCertificates:
    """The configured client certificates, compiled once per config load: (kind, name) -> client.

    The name lookup is pki's ``CertificateMap`` (shared with the mesh); this adds the gateway's view
    of a client: a token-shaped principal for scope checks and the identity headers it forwards.
    """

    __slots__ = ("_clients", "_names")

    def __init__(self, clients: Iterable[tuple[str, str, str, Iterable[str]]]) -> None:
        """``clients``: (id, kind, name, scopes), kind one of uri, dns, email, common_name."""
        self._clients: dict[str, CertificateClient] = {}
        names: list[tuple[CertificateName, str]] = []
        for client_id, kind, name, scopes in clients:
            token = VerifiedToken(
                subject=f"mtls:{client_id}",
                client_id=client_id,
                scopes=frozenset(scopes),
                roles=frozenset(),
                claims={},
                jti=None,
                exp=math.inf,
            )
            self._clients[client_id] = CertificateClient(client_id, token, identity_of(token))
            names.append(((cast(NameKind, kind), name), client_id))
        self._names = CertificateMap(names)

    def client_for(self, peercert: Mapping[str, Any] | None) -> CertificateClient:
        """The client a verified certificate (``SSLObject.getpeercert()``) names, or CertificateRefused."""
        try:
            return self._clients[self._names.principal_for(peercert)]
        except NoCertificate:
            raise CertificateRefused(
                "client_certificate_required", "This route requires a client certificate."
            ) from None
        except UnknownCertificate:
            raise CertificateRefused(
                "unknown_client_certificate", "This client certificate is not accepted."
            ) from None


@dataclass(frozen=True, slots=True)
class MtlsRouteAuth:
    """`require: mtls`: the connection's verified client certificate, mapped to a configured client."""

    clients: ClientCertificates
    requirement: Requirement

    def authorize(self, client: CertificateClient) -> Identity:
        try:
            self.requirement.check(client.token)
        except InsufficientScope as exc:
            raise CertificateRefused(
                "insufficient_scope", "This client lacks a scope the route requires."
            ) from exc
        return client.identity


RouteAuth = JwtRouteAuth | ApiKeyRouteAuth | MtlsRouteAuth


def challenge(error: AuthError) -> bytes:
    """The header line for a refusal: a WWW-Authenticate challenge (RFC 6750 §3), or, when the
    gateway has no key set yet, Retry-After and no challenge (the token was not found wanting)."""
    if isinstance(error, KeysUnavailable):
        return b"retry-after: %d\r\n" % error.retry_after
    if isinstance(error, CertificateRefused):
        return b""
    if isinstance(error, MissingCredentials):
        value = www_authenticate(None)
    else:
        scope = error.scope if isinstance(error, InsufficientScope) else None
        value = www_authenticate(error.error, error.description, scope)
    return b"www-authenticate: %s\r\n" % value
