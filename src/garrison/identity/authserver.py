"""The OAuth 2.0 authorization server: Authlib's grants and endpoints, bound to Garrison's stores.

Authlib does the protocol (RFC 6749 grants, RFC 7009 revocation, RFC 7662 introspection, RFC 7523
``private_key_jwt``, RFC 9068 JWT access tokens); this module supplies what Authlib leaves to the
framework: finding clients (``ClientDirectory``, in memory), signing keys (``SigningKeys``), the
request/response adapters, and what a token endpoint must remember.

Authlib is synchronous; the web adapter runs each call inside SQLAlchemy's ``greenlet_spawn`` so the
few callbacks that need the database (``private_key_jwt`` replay checks, refresh tokens, codes) use
the async engine through ``await_only`` without blocking the event loop or needing threads. The
client_credentials path touches no database at all: the client comes from memory and the access
token is a signed JWT that is not stored. The user-facing grants (authorization code, refresh token,
OpenID Connect) live in grants.py and oidc.py and are added to this server by ``grants.install``.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol, cast

from authlib.oauth2 import AuthorizationServer, OAuth2Request
from authlib.oauth2.rfc6749 import ClientMixin, InvalidScopeError, TokenMixin, grants
from authlib.oauth2.rfc6749.requests import BasicOAuth2Payload
from authlib.oauth2.rfc6749.util import scope_to_list
from authlib.oauth2.rfc7009 import RevocationEndpoint
from authlib.oauth2.rfc7523 import JWTBearerClientAssertion
from authlib.oauth2.rfc7662 import IntrospectionEndpoint
from authlib.oauth2.rfc9068 import JWTBearerTokenGenerator
from joserfc.jwk import KeySet
from sqlalchemy import insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.util import await_only

from garrison.gateway.auth.jwt import JwtVerifier, TokenRejected, VerifiedToken
from garrison.identity.clients import ClientDirectory, ClientRecord
from garrison.identity.tables import assertion_jtis
from garrison.telemetry import logging as log

if TYPE_CHECKING:
    from garrison.identity.grants import EndUser, UserGrants

TOKEN_ENDPOINT_AUTH_METHODS = ("client_secret_basic", "client_secret_post", "private_key_jwt")


# -- the framework side: requests and responses ------------------------------------------------------


class Headers(dict[str, str]):
    """Request headers with case-insensitive ``get`` (Authlib reads ``Authorization``)."""

    def get(self, key: str, default: Any = None) -> Any:
        return super().get(key.lower(), default)

    def __getitem__(self, key: str) -> str:
        return super().__getitem__(key.lower())

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and super().__contains__(key.lower())


class IdentityRequest(OAuth2Request):  # type: ignore[misc]
    """One HTTP request as Authlib sees it. Token-endpoint parameters come from the form body only."""

    def __init__(
        self, method: str, url: str, headers: Headers, form: Mapping[str, str], args: Mapping[str, str]
    ) -> None:
        super().__init__(method=method, uri=url, headers=headers)
        self._form = dict(form)
        self._args = dict(args)
        self.payload = BasicOAuth2Payload(self._form if method == "POST" else self._args)

    @property
    def args(self) -> dict[str, str]:
        return self._args

    @property
    def form(self) -> dict[str, str]:
        return self._form


@dataclass(slots=True)
class EndpointResponse:
    status: int
    body: Any  # dict (JSON) or str
    headers: list[tuple[str, str]]

    @property
    def location(self) -> str | None:
        """The redirect target; Authlib's RFC 9207 extension reads and rewrites it to add ``iss``."""
        return next((value for name, value in self.headers if name.lower() == "location"), None)

    @location.setter
    def location(self, value: str) -> None:
        self.headers = [(n, v) for n, v in self.headers if n.lower() != "location"] + [("Location", value)]


# -- clients ---------------------------------------------------------------------------------------------


class OAuthClient(ClientMixin):  # type: ignore[misc]
    """A registered client, as Authlib's ``ClientMixin``."""

    def __init__(self, record: ClientRecord, directory: ClientDirectory) -> None:
        self.record = record
        self.directory = directory

    def __repr__(self) -> str:
        return f"OAuthClient({self.record.client_id!r})"

    def get_client_id(self) -> str:
        return self.record.client_id

    @property
    def client_id(self) -> str:
        return self.record.client_id

    @property
    def client_metadata(self) -> dict[str, Any]:
        """The registered metadata Authlib's OIDC endpoints read (RP-initiated logout)."""
        return {"post_logout_redirect_uris": list(self.record.post_logout_redirect_uris)}

    def get_default_redirect_uri(self) -> str | None:
        # Only an unambiguous default: with several registered, the request must name one (RFC 6749 §3.1.2.3).
        uris = self.record.redirect_uris
        return uris[0] if len(uris) == 1 else None

    def allowed_scopes(self) -> frozenset[str]:
        return self.directory.allowed_scopes(self.record.roles)

    def get_allowed_scope(self, scope: str | None) -> str:
        """Least privilege: what was asked for and the client's roles allow; all it may have if
        nothing was asked for."""
        allowed = self.allowed_scopes()
        if not scope:
            return " ".join(sorted(allowed))
        return " ".join(s for s in dict.fromkeys(scope_to_list(scope)) if s in allowed)

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return redirect_uri in self.record.redirect_uris  # exact match, nothing else

    def check_client_secret(self, client_secret: str) -> bool:
        return self.directory.check_secret(self.record, client_secret)

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return method == self.record.auth_method

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code" and "authorization_code" in self.record.grant_types

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type in self.record.grant_types


# -- tokens ----------------------------------------------------------------------------------------------


class SigningKeySource(Protocol):
    """What the server needs from the signing keys (identity/keys.py): the key that signs now, and the
    public JWKS."""

    def signing_jwk(self, now: float | None = None) -> KeySet: ...

    def public_jwks(self, now: float | None = None) -> dict[str, Any]: ...


REFRESH_TOKEN_PREFIX = "grt_"  # noqa: S105 - a prefix that makes leaked refresh tokens easy to scan for


def new_refresh_token(**_: Any) -> str:
    """256 random bits; only ``kek.digest(token, "refresh-token")`` is stored (families.py)."""
    return REFRESH_TOKEN_PREFIX + secrets.token_urlsafe(32)


class AccessTokenGenerator(JWTBearerTokenGenerator):  # type: ignore[misc]
    """RFC 9068 access tokens (``typ: at+jwt``), ES256, signed by the current key (its kid in the header),
    and opaque refresh tokens for the grants that ask for one."""

    def __init__(self, issuer: str, audience: str, ttl: float, keys: SigningKeySource) -> None:
        super().__init__(
            issuer,
            alg="ES256",
            refresh_token_generator=new_refresh_token,
            expires_generator=lambda client, grant_type: int(ttl),
        )
        self.audience = audience
        self.keys = keys

    def generate(
        self,
        grant_type: str,
        client: OAuthClient,
        user: EndUser | None = None,
        scope: str | None = None,
        expires_in: int | None = None,
        include_refresh_token: bool = True,
    ) -> dict[str, Any]:
        # Authlib reads an empty scope as "everything the client may have". Right for client_credentials;
        # for a user's token it would hand out scopes the user never had, so an empty one is refused.
        if user is not None and not (scope and client.get_allowed_scope(scope)):
            raise InvalidScopeError()
        token: dict[str, Any] = super().generate(
            grant_type, client, user, scope, expires_in, include_refresh_token
        )
        return token

    def get_jti(self, client: Any, grant_type: str, user: Any, scope: str) -> str:
        # 128 random bits in one os.urandom call; Authlib's default draws each character from
        # SystemRandom separately, which was a tenth of the token endpoint's time.
        return secrets.token_urlsafe(16)

    def get_jwks(self) -> KeySet:
        return self.keys.signing_jwk()

    def get_audiences(self, client: Any, user: Any, scope: Any) -> str:
        return self.audience

    def get_auth_time(self, user: EndUser | None) -> int | None:
        return int(user.auth_time.timestamp()) if user is not None and user.auth_time else None

    def get_amr(self, user: EndUser | None) -> list[str] | None:
        return list(user.amr) if user is not None and user.amr else None


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


# -- endpoints -------------------------------------------------------------------------------------------


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
        if isinstance(token, AccessTokenInfo):
            if token.verified.jti is not None and not token.revoked:
                self.revoke(token.verified.jti, token.verified.exp)
            return
        stores = self.server.user_grants
        assert stores is not None  # a refresh token was found through them
        await_only(stores.families.revoke_family(token.family_id, "revoked_by_client"))


class AssertionAuth(JWTBearerClientAssertion):  # type: ignore[misc]
    """``private_key_jwt`` (RFC 7523): the client's own JWKS, ``aud`` = issuer or token endpoint, and
    each ``jti`` accepted once (remembered in the database until the assertion expires)."""

    CLIENT_AUTH_METHOD = "private_key_jwt"

    def __init__(self, server: IdentityServer, engine: AsyncEngine) -> None:
        super().__init__(validate_jti=True, leeway=30)
        self.server = server
        self.engine = engine

    def get_audiences(self) -> list[str]:
        return [self.server.issuer, self.server.issuer + "/token"]

    def resolve_client_public_key(self, client: OAuthClient) -> KeySet:
        return KeySet.import_key_set(cast(Any, client.record.jwks or {"keys": []}))

    def validate_jti(self, claims: Mapping[str, Any], jti: str) -> bool:
        if not isinstance(jti, str) or not 0 < len(jti) <= 255:
            return False
        exp = claims.get("exp")
        expires = datetime.fromtimestamp(
            float(exp) if isinstance(exp, int | float) else time.time() + 300, UTC
        )
        return bool(await_only(self._remember(str(claims["sub"]), jti, expires)))

    async def _remember(self, client_id: str, jti: str, expires: datetime) -> bool:
        try:
            async with self.engine.begin() as conn:
                await conn.execute(
                    insert(assertion_jtis).values(client_id=client_id, jti=jti, expires_at=expires)
                )
        except IntegrityError:
            log.warn("identity.assertion.replayed", client_id=client_id)
            return False
        return True


# -- the server ------------------------------------------------------------------------------------------


class IdentityServer(AuthorizationServer):  # type: ignore[misc]
    def __init__(self, issuer: str, directory: ClientDirectory) -> None:
        super().__init__(scopes_supported=None)
        self.issuer = issuer
        self.directory = directory
        self.user_grants: UserGrants | None = None  # the stores of the user-facing grants (grants.install)

    def query_client(self, client_id: str) -> OAuthClient | None:
        if not isinstance(client_id, str):
            return None
        record = self.directory.get(client_id) or await_only(self.directory.get_fresh(client_id))
        return OAuthClient(record, self.directory) if record is not None else None

    def save_token(self, token: dict[str, Any], request: Any) -> None:
        client = request.client
        log.log(
            "identity.token.issued",
            client_id=client.get_client_id() if client is not None else None,
            grant_type=request.payload.grant_type,
            scope=token.get("scope"),
        )

    def send_signal(self, name: str, *args: Any, **kwargs: Any) -> None:
        if name == "after_revoke_token":
            log.log("identity.token.revoked", client_id=kwargs["client"].get_client_id())

    def create_oauth2_request(self, request: IdentityRequest) -> IdentityRequest:
        return request

    def create_json_request(self, request: Any) -> Any:
        return request

    def handle_response(self, status: int, body: Any, headers: list[tuple[str, str]]) -> EndpointResponse:
        return EndpointResponse(status, body, list(headers))


def build_server(
    issuer: str,
    directory: ClientDirectory,
    engine: AsyncEngine,
    token_generator: AccessTokenGenerator,
    inspector: TokenInspector,
    revoke: Callable[[str, float], None],
) -> IdentityServer:
    server = IdentityServer(issuer, directory)
    server.register_token_generator("default", token_generator)
    server.register_client_auth_method(AssertionAuth.CLIENT_AUTH_METHOD, AssertionAuth(server, engine))
    server.register_grant(ClientCredentials)
    server.register_endpoint(Introspection(server, inspector))
    server.register_endpoint(Revocation(server, inspector, revoke))
    return server


class ClientCredentials(grants.ClientCredentialsGrant):  # type: ignore[misc]
    TOKEN_ENDPOINT_AUTH_METHODS = list(TOKEN_ENDPOINT_AUTH_METHODS)


__all__ = [
    "AccessTokenGenerator",
    "EndpointResponse",
    "Headers",
    "IdentityRequest",
    "IdentityServer",
    "OAuthClient",
    "SigningKeySource",
    "TokenInspector",
    "build_server",
]
