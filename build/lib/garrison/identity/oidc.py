"""OpenID Connect on Authlib: ID tokens (Core §3.1), UserInfo (Core §5.3), RP-initiated logout,
the RFC 9207 ``iss`` authorization response parameter, and the discovery document.

- ID tokens are ES256, signed by the same key as access tokens (keys.py), with ``aud`` = the client
  (a string, so logout can find the client from an ``id_token_hint``), ``nonce``, ``auth_time``,
  ``amr`` and ``at_hash``, and live ``identity.id_token_ttl``. They are no access tokens: their
  ``aud`` is never ``identity.access_token_audience``, so the gateway refuses them.
- UserInfo takes a bearer access token checked by the same ``TokenInspector`` as introspection
  (signature, audience, expiry, revocation) and answers only for user tokens with ``openid``.
- Logout validates ``id_token_hint`` against our JWKS and our issuer, and redirects only to a
  ``post_logout_redirect_uri`` registered for the hint's client, exactly (Authlib's rule).
"""

from __future__ import annotations

import contextvars
import time
from typing import Any

from authlib.oauth2.rfc6749 import InvalidRequestError, ResourceProtector
from authlib.oauth2.rfc6750 import BearerTokenValidator, InvalidTokenError
from authlib.oauth2.rfc9207 import IssuerParameter
from authlib.oidc.core import OpenIDCode, UserInfo, UserInfoEndpoint
from authlib.oidc.rpinitiated import EndSessionEndpoint, EndSessionRequest
from joserfc.jwk import KeySet
from sqlalchemy.util import await_only

from garrison.config.model import IdentityConfig
from garrison.identity.authserver import IdentityServer, SigningKeySource
from garrison.identity.endpoints import AccessTokenInfo, TokenInspector
from garrison.identity.families import TokenFamilies
from garrison.identity.grants import IDENTITY_SCOPES, EndUser, UserGrants

ALG = "ES256"
_current_request: contextvars.ContextVar[Any] = contextvars.ContextVar("identity_userinfo_request")


def user_claims(user: EndUser, scope: str) -> UserInfo:
    """What the ID token and UserInfo say about the user: ``sub``, ``preferred_username``, and the
    email address with the ``email`` scope (never verified by Garrison, so ``email_verified`` is false)."""
    claims = UserInfo(sub=user.user_id, preferred_username=user.username)
    if "email" in scope.split() and user.email:
        claims.update(email=user.email, email_verified=False)
    return claims


class OpenIdCode(OpenIDCode):  # type: ignore[misc]
    """Adds the ID token to code exchanges with ``openid`` (Authlib computes nonce, auth_time, at_hash)."""

    def __init__(self, issuer: str, ttl: float, keys: SigningKeySource, families: TokenFamilies) -> None:
        super().__init__(require_nonce=False)
        self.issuer, self.ttl, self.keys, self.families = issuer, ttl, keys, families

    def exists_nonce(self, nonce: str, request: Any) -> bool:
        return bool(await_only(self.families.nonce_used(request.payload.client_id, nonce)))

    def resolve_client_private_key(self, client: Any) -> KeySet:
        return self.keys.signing_jwk()  # joserfc puts its kid in the header

    def get_client_algorithm(self, client: Any) -> str:
        return ALG

    def get_encode_header(self, client: Any) -> dict[str, str]:
        return {"alg": ALG, "typ": "JWT"}

    def get_client_claims(self, client: Any) -> dict[str, Any]:
        now = int(time.time())
        return {"iss": self.issuer, "aud": client.get_client_id(), "iat": now, "exp": now + int(self.ttl)}

    def generate_user_info(self, user: EndUser, scope: str) -> UserInfo:
        return user_claims(user, scope)


class Issuer(IssuerParameter):  # type: ignore[misc]
    """RFC 9207: ``iss`` on every authorization response that redirects, errors included."""

    def __init__(self, issuer: str) -> None:
        self.issuer = issuer

    def get_issuer(self) -> str:
        return self.issuer


class _BearerToken:
    """A verified access token as Authlib's UserInfo endpoint reads one."""

    def __init__(self, info: AccessTokenInfo, server: IdentityServer, grants: UserGrants) -> None:
        self.info, self.server, self.grants = info, server, grants
        self.scope = info.get_scope()

    def get_scope(self) -> str:
        return self.scope

    def is_expired(self) -> bool:
        return bool(self.info.is_expired())

    def is_revoked(self) -> bool:
        return bool(self.info.is_revoked())

    def get_client(self) -> Any:
        client_id = self.info.verified.client_id
        client = self.server.query_client(client_id) if client_id else None
        if client is None:  # deleted since: its tokens answer nothing
            raise InvalidTokenError()
        return client

    def get_user(self) -> EndUser:
        verified = self.info.verified
        user = None
        if verified.subject and verified.subject != verified.client_id:  # client_credentials: no user
            user = await_only(self.grants.end_user(verified.subject))
        if user is None:
            raise InvalidTokenError()
        return user


class _Validator(BearerTokenValidator):  # type: ignore[misc]
    def __init__(self, inspector: TokenInspector, server: IdentityServer, grants: UserGrants) -> None:
        super().__init__()
        self.inspector, self.server, self.grants = inspector, server, grants

    def authenticate_token(self, token_string: str) -> _BearerToken | None:
        info = self.inspector.inspect(token_string)
        return _BearerToken(info, self.server, self.grants) if info is not None else None


class _Protector(ResourceProtector):  # type: ignore[misc]
    """Authlib's framework integrations read the request from a global; ours from a context variable."""

    def acquire_token(self, scopes: str | list[str] | None = None) -> _BearerToken:
        required = [scopes] if isinstance(scopes, str) else scopes
        token: _BearerToken = self.validate_request(scopes=required, request=_current_request.get())
        return token


class UserInfoClaims(UserInfoEndpoint):  # type: ignore[misc]
    def __init__(self, inspector: TokenInspector, server: IdentityServer, grants: UserGrants) -> None:
        protector = _Protector()
        protector.register_token_validator(_Validator(inspector, server, grants))
        super().__init__(server=server, resource_protector=protector)

    def __call__(self, request: Any) -> Any:
        reset = _current_request.set(request)
        try:
            return super().__call__(request)
        finally:
            _current_request.reset(reset)

    def generate_user_info(self, user: EndUser, scope: str) -> UserInfo:
        return user_claims(user, scope)

    def get_issuer(self) -> str:
        return str(self.server.issuer)


class EndSession(EndSessionEndpoint):  # type: ignore[misc]
    """RP-initiated logout: Authlib validates the request and decides whether to redirect; the web flow
    (logout.py), which owns the cookie, ends the session once Authlib has accepted the request."""

    def __init__(self, keys: SigningKeySource, issuer: str) -> None:
        super().__init__()
        self.keys, self.issuer = keys, issuer

    def validate_request(self, request: Any) -> EndSessionRequest:
        validated: EndSessionRequest = super().validate_request(request)
        claims = validated.id_token_claims
        if claims is not None and (
            claims.get("iss") != self.issuer or not isinstance(claims.get("aud"), str)
        ):
            raise InvalidRequestError("The id_token_hint is not an ID token of this provider.")
        return validated

    def get_server_jwks(self) -> dict[str, Any]:
        return self.keys.public_jwks()

    def get_algorithms(self) -> list[str]:
        return [ALG]

    def end_session(self, end_session_request: EndSessionRequest) -> None:
        """Nothing here: see the class docstring."""


def discovery_document(identity: IdentityConfig) -> dict[str, Any]:
    """RFC 8414 / OpenID Connect Discovery metadata: only what this provider really supports."""
    issuer = identity.issuer
    auth_methods = ["client_secret_basic", "client_secret_post", "private_key_jwt"]
    return {
        "issuer": issuer,
        "authorization_endpoint": f"{issuer}/authorize",
        "token_endpoint": f"{issuer}/token",
        "userinfo_endpoint": f"{issuer}/userinfo",
        "end_session_endpoint": f"{issuer}/logout",
        "jwks_uri": f"{issuer}/jwks",
        "introspection_endpoint": f"{issuer}/introspect",
        "revocation_endpoint": f"{issuer}/revoke",
        "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials"],
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "scopes_supported": sorted(IDENTITY_SCOPES),
        "claims_supported": [
            *("sub", "iss", "aud", "exp", "iat", "auth_time", "nonce", "amr", "at_hash"),
            *("preferred_username", "email", "email_verified"),
        ],
        "prompt_values_supported": ["none", "login", "consent"],
        "token_endpoint_auth_methods_supported": [*auth_methods, "none"],
        "token_endpoint_auth_signing_alg_values_supported": ["ES256", "RS256", "PS256", "EdDSA"],
        "introspection_endpoint_auth_methods_supported": auth_methods,
        "revocation_endpoint_auth_methods_supported": auth_methods,
        "code_challenge_methods_supported": ["S256"],
        "authorization_response_iss_parameter_supported": True,
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": [ALG],
    }
