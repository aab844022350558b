"""The token endpoints beside ``/token``: RFC 7662 introspection and RFC 7009 revocation.

Authlib does the protocol; this module supplies what it leaves to the framework: finding the token.
Access tokens are signed JWTs that are not stored, so ``TokenInspector`` verifies them with the
gateway's strict verifier on our own JWKS; refresh tokens are found through the user grants' stores
(families.py), inside SQLAlchemy's ``greenlet_spawn`` (see authserver.py) via ``await_only``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from authlib.oauth2.rfc6749 import TokenMixin
from authlib.oauth2.rfc7009 import RevocationEndpoint
from authlib.oauth2.rfc7662 import IntrospectionEndpoint
from sqlalchemy.util import await_only

from garrison.identity.client_auth import TOKEN_ENDPOINT_AUTH_METHODS
from garrison.tokens.jwt import JwtVerifier, TokenRejected, VerifiedToken

if TYPE_CHECKING:
    from garrison.identity.authserver import IdentityServer, OAuthClient

REFRESH_TOKEN_PREFIX = "grt_"  # noqa: S105 - a prefix that makes leaked refresh tokens easy to scan for


@dataclass(frozen=True, slots=True)
class AccessTokenInfo(TokenMixin):  # type: ignore[misc]
    """A verified JWT access token, as Authlib's ``TokenMixin`` (introspection, revocation)."""

    verified: VerifiedToken
    revoked: bool

    def check_client(self, client: OAuthClient) -> bool:
        return self.verified.client_id == client.get_client_id()

    def get_scope(self) -> str:
        return " ".join(sorted(self.verified.scopes))

    def get_expires_in(self) -> int:
        return max(0, int(self.verified.exp - time.time()))

    def is_expired(self) -> bool:
        return time.time() >= self.verified.exp

    def is_revoked(self) -> bool:
        return self.revoked


class TokenInspector:
    """Verifies this provider's own access tokens (the gateway's strict verifier, on our own JWKS)."""

    def __init__(self, verifier: JwtVerifier, is_revoked: Callable[[str, float], bool]) -> None:
        self.verifier = verifier
        self.is_revoked = is_revoked

    def inspect(self, token: str) -> AccessTokenInfo | None:
        now = time.time()
        try:
            verified = self.verifier.verify(token, now)
        except TokenRejected:
            return None  # not ours, invalid, expired or revoked: inactive (RFC 7662 §2.2)
        revoked = verified.jti is not None and self.is_revoked(verified.jti, now)
        return AccessTokenInfo(verified, revoked)


class Introspection(IntrospectionEndpoint):  # type: ignore[misc]
    CLIENT_AUTH_METHODS = list(TOKEN_ENDPOINT_AUTH_METHODS)

    def __init__(self, server: IdentityServer, inspector: TokenInspector) -> None:
        super().__init__(server=server)
        self.inspector = inspector

    def query_token(self, token_string: str, token_type_hint: str | None) -> AccessTokenInfo | None:
        return self.inspector.inspect(token_string)

    def check_permission(self, token: AccessTokenInfo, client: OAuthClient, request: Any) -> bool:
        # A client may introspect its own tokens; a resource server needs the introspect scope.
        return token.check_client(client) or "garrison:introspect" in client.allowed_scopes()

    def introspect_token(self, token: AccessTokenInfo) -> dict[str, Any]:
        verified = token.verified
        payload: dict[str, Any] = {
            "active": True,
            "token_type": "Bearer",
            "client_id": verified.client_id,
            "scope": token.get_scope(),
            "sub": verified.subject,
            "exp": int(verified.exp),
            "iss": self.server.issuer,
        }
        for claim in ("aud", "iat", "jti"):
            if claim in verified.claims:
                payload[claim] = verified.claims[claim]
        return payload


class Revocation(RevocationEndpoint):  # type: ignore[misc]
    """RFC 7009. An access token is revoked by jti; a refresh token revokes its whole family (every
    refresh and access token of that grant, §2.1). Public clients revoke with their client_id alone."""

    CLIENT_AUTH_METHODS = [*TOKEN_ENDPOINT_AUTH_METHODS, "none"]

    def __init__(
        self, server: IdentityServer, inspector: TokenInspector, revoke: Callable[[str, float], None]
    ) -> None:
        super().__init__(server=server)
        self.inspector = inspector
        self.revoke = revoke

    def query_token(self, token_string: str, token_type_hint: str | None) -> Any:
        stores = self.server.user_grants
        if stores is not None and token_string.startswith(REFRESH_TOKEN_PREFIX) and len(token_string) <= 128:
            return await_only(stores.families.lookup_refresh(token_string))
        return self.inspector.inspect(token_string)

    def revoke_token(self, token: Any, request: Any) -> None:
        audit, client_id = self.server.audit, request.client.get_client_id()
        if isinstance(token, AccessTokenInfo):
            jti = token.verified.jti
            if jti is not None and not token.revoked:
                self.revoke(jti, token.verified.exp)
                audit.emit(
                    "token.revoked",
                    subject=token.verified.subject,
                    client=client_id,
                    target=audit.hint(jti),
                    kind="access_token",
                    by="client",
                )
            return
        stores = self.server.user_grants
        assert stores is not None  # a refresh token was found through them
        revoked = await_only(stores.families.revoke_family(token.family_id, "revoked_by_client"))
        audit.emit(
            "token.revoked",
            subject=token.user_id,
            client=client_id,
            target=audit.hint(token.family_id),
            kind="refresh_token",
            by="client",
            access_tokens_revoked=revoked,
        )


__all__ = ["REFRESH_TOKEN_PREFIX", "AccessTokenInfo", "Introspection", "Revocation", "TokenInspector"]
