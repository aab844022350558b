"""The OAuth 2.0 authorization server: Authlib's grants and endpoints, bound to Garrison's stores.

Authlib does the protocol (RFC 6749 grants, RFC 7009 revocation, RFC 7662 introspection, RFC 7523
``private_key_jwt``, RFC 9068 JWT access tokens); this module supplies what Authlib leaves to the
framework: finding clients (``ClientDirectory``, in memory), signing keys (``SigningKeys``), and what
a token endpoint must remember. Its neighbours hold the rest: the request/response adapters
(adapter.py), introspection and revocation (endpoints.py) and ``private_key_jwt`` (client_auth.py).

Authlib is synchronous; the web adapter runs each call inside SQLAlchemy's ``greenlet_spawn`` so the
few callbacks that need the database (``private_key_jwt`` replay checks, refresh tokens, codes) use
the async engine through ``await_only`` without blocking the event loop or needing threads. The
client_credentials path touches no database: the client comes from memory and the access token is a
signed JWT that is not stored (client_throttle.py counts a client or address in the database only
once it has failed). The user-facing grants (authorization code, refresh token,
OpenID Connect) live in grants.py and oidc.py and are added to this server by ``grants.install``.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from authlib.oauth2 import AuthorizationServer
from authlib.oauth2.rfc6749 import ClientMixin, InvalidScopeError, grants
from authlib.oauth2.rfc6749.util import scope_to_list
from authlib.oauth2.rfc9068 import JWTBearerTokenGenerator
from joserfc.jwk import KeySet
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.util import await_only

from garrison.identity.adapter import EndpointResponse, IdentityRequest
from garrison.identity.auditing import IdentityAudit
from garrison.identity.client_auth import TOKEN_ENDPOINT_AUTH_METHODS, AssertionAuth
from garrison.identity.client_throttle import ClientAuthGuard
from garrison.identity.clients import ClientDirectory, ClientRecord
from garrison.identity.endpoints import REFRESH_TOKEN_PREFIX, Introspection, Revocation, TokenInspector
from garrison.identity.families import access_token_id
from garrison.telemetry import logging as log

if TYPE_CHECKING:
    from garrison.identity.grants import EndUser, UserGrants


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

    def check_requested_scope(self, scope: str | None) -> None:
        """Refuse a request whose scopes the client's roles all deny (RFC 6749 §5.2 ``invalid_scope``).

        Narrowing a request to nothing would issue a token that grants nothing, and tell a client
        asking for ``admin:all`` "200" when the answer is no. A request for some allowed scopes is
        narrowed instead (``get_allowed_scope``); one for none at all gets the client's default.
        """
        if scope and not self.get_allowed_scope(scope):
            raise InvalidScopeError("None of the requested scopes is allowed for this client.")

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


# -- the server ------------------------------------------------------------------------------------------


class IdentityServer(AuthorizationServer):  # type: ignore[misc]
    def __init__(self, issuer: str, directory: ClientDirectory) -> None:
        super().__init__(scopes_supported=None)
        self.issuer = issuer
        self.directory = directory
        self.user_grants: UserGrants | None = None  # the stores of the user-facing grants (grants.install)
        self.client_guard: ClientAuthGuard | None = None  # the throttle on client authentication
        self.audit = IdentityAudit()  # the provider's audit events (service.py sets the real one)

    def authenticate_client(
        self, request: IdentityRequest, methods: list[str], endpoint: str = "token"
    ) -> OAuthClient:
        """Every client authentication (/token, /introspect, /revoke) passes here: behind the throttle."""

        def check() -> OAuthClient:
            client: OAuthClient = super(IdentityServer, self).authenticate_client(request, methods, endpoint)
            return client

        if self.client_guard is None:
            return check()
        return self.client_guard.authenticate(request, check, endpoint, methods)

    def query_client(self, client_id: str) -> OAuthClient | None:
        if not isinstance(client_id, str):
            return None
        record = self.directory.get(client_id) or await_only(self.directory.get_fresh(client_id))
        return OAuthClient(record, self.directory) if record is not None else None

    def save_token(self, token: dict[str, Any], request: Any) -> None:
        """client_credentials (the user grants save their own tokens, grants.py)."""
        client = request.client
        client_id = client.get_client_id() if client is not None else None
        grant_type = request.payload.grant_type
        log.log("identity.token.issued", client_id=client_id, grant_type=grant_type, scope=token.get("scope"))
        jti, _ = access_token_id(token["access_token"])
        self.audit.token_issued("token.issued", jti, grant_type, client_id, None, token.get("scope"))

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
    client_guard: ClientAuthGuard | None = None,
) -> IdentityServer:
    server = IdentityServer(issuer, directory)
    server.client_guard = client_guard
    server.register_token_generator("default", token_generator)
    server.register_client_auth_method(AssertionAuth.CLIENT_AUTH_METHOD, AssertionAuth(server, engine))
    server.register_grant(ClientCredentials)
    server.register_endpoint(Introspection(server, inspector))
    server.register_endpoint(Revocation(server, inspector, revoke))
    return server


class ClientCredentials(grants.ClientCredentialsGrant):  # type: ignore[misc]
    TOKEN_ENDPOINT_AUTH_METHODS = list(TOKEN_ENDPOINT_AUTH_METHODS)

    def validate_requested_scope(self) -> None:
        # Authlib calls this once the client is authenticated, before a token is generated.
        super().validate_requested_scope()
        self.request.client.check_requested_scope(self.request.payload.scope)


__all__ = [
    "AccessTokenGenerator",
    "IdentityServer",
    "OAuthClient",
    "SigningKeySource",
    "build_server",
]
