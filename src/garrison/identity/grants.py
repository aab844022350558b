"""The user-facing grants: authorization code with PKCE (RFC 6749 §4.1, RFC 7636) and refresh token
rotation (RFC 6749 §6), as Authlib grant subclasses bound to Garrison's stores.

Authlib runs the protocol; what is decided here:

- PKCE is required of every client, public or confidential, and only ``S256`` is accepted: a request
  without ``code_challenge`` or with ``plain`` (Authlib's default) is refused at the authorization
  endpoint, so no code without a challenge exists and no token request can skip the verifier;
- a code is spent, and a refresh token rotated, in the same transaction that records what it produced
  (families.py), so reuse is detected and revokes the whole family;
- users receive only the scopes both the client's and their own roles allow (``user_scope``); the
  OpenID Connect identity scopes are the user's own data, granted on consent, not permissions;
- on refresh the user is loaded again: a disabled user, or one whose roles no longer allow a scope,
  stops getting it at the next refresh.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from authlib.oauth2.rfc6749 import InvalidGrantError, InvalidRequestError, OAuth2Error, grants
from authlib.oauth2.rfc6749.util import scope_to_list
from authlib.oauth2.rfc7636 import CodeChallenge
from authlib.oauth2.rfc7636.challenge import compare_s256_code_challenge
from sqlalchemy.util import await_only

from garrison.identity.authserver import IdentityServer, OAuthClient
from garrison.identity.client_auth import TOKEN_ENDPOINT_AUTH_METHODS
from garrison.identity.clients import ClientDirectory
from garrison.identity.families import CodeRecord, RefreshRecord, TokenFamilies, access_token_id
from garrison.identity.users import UserNotFound, UserStore
from garrison.telemetry import logging as log

IDENTITY_SCOPES = frozenset({"openid", "profile", "email"})
USER_AUTH_METHODS = [*TOKEN_ENDPOINT_AUTH_METHODS, "none"]  # public clients: PKCE is their proof
CODE_PREFIX = "gac_"
MAX_NONCE = 255  # the identity_codes.nonce column


@dataclass(frozen=True, slots=True)
class EndUser:
    """A signed-in user as Authlib's grants see it: no password hash, no TOTP seed.

    ``allowed_scopes`` are the scopes the user's roles grant (the same ``identity_roles`` rows that give
    clients theirs); ``auth_time`` and ``amr`` describe the sign-in behind this grant, when there was one.
    """

    user_id: str
    username: str
    email: str | None
    roles: tuple[str, ...]
    allowed_scopes: frozenset[str]
    mfa_enrolled: bool
    auth_time: datetime | None = None
    amr: tuple[str, ...] = ()

    def get_user_id(self) -> str:
        return self.user_id


def user_scope(scope: str | None, user: EndUser) -> str:
    """Of ``scope`` (already narrowed to the client's roles), what the user's roles allow, in order."""
    kept = (
        s
        for s in dict.fromkeys(scope_to_list(scope) or [])
        if s in IDENTITY_SCOPES or s in user.allowed_scopes
    )
    return " ".join(kept)


@dataclass(frozen=True)
class UserGrants:
    """The stores the user-facing grants and pages share (``IdentityServer.user_grants``)."""

    families: TokenFamilies
    users: UserStore
    directory: ClientDirectory

    async def end_user(
        self, user_id: str, auth_time: datetime | None = None, amr: Iterable[str] = ()
    ) -> EndUser | None:
        """The user as the grants see it, or None when unknown or disabled."""
        try:
            user = await self.users.get(user_id)
        except UserNotFound:
            return None
        if user.disabled:
            return None
        return EndUser(
            user.user_id,
            user.username,
            user.email,
            user.roles,
            self.directory.allowed_scopes(user.roles),
            user.mfa_enrolled,
            auth_time,
            tuple(amr),
        )


def _context(server: IdentityServer) -> UserGrants:
    context = server.user_grants
    assert context is not None, "grants.install() has not run"
    return context


class PkceS256(CodeChallenge):  # type: ignore[misc]
    """RFC 7636, required for every client, ``S256`` only (no ``plain``, no default method)."""

    SUPPORTED_CODE_CHALLENGE_METHOD = ["S256"]
    CODE_CHALLENGE_METHODS = {"S256": compare_s256_code_challenge}
    DEFAULT_CODE_CHALLENGE_METHOD = "S256"  # never reached: every stored code names its method

    def __init__(self) -> None:
        super().__init__(required=True)

    def validate_code_challenge(self, grant: Any, redirect_uri: str) -> None:
        data = grant.request.payload.data
        if not data.get("code_challenge"):
            raise InvalidRequestError(
                "PKCE is required: send code_challenge with code_challenge_method S256."
            )
        if data.get("code_challenge_method") != "S256":
            raise InvalidRequestError("Only code_challenge_method S256 is accepted.")
        super().validate_code_challenge(grant, redirect_uri)

    def validate_code_verifier(self, grant: Any, result: Any) -> None:
        code: CodeRecord = grant.request.authorization_code
        if not code.code_challenge or code.code_challenge_method != "S256":
            raise InvalidGrantError("The code was issued without PKCE.")  # cannot happen; fail closed
        super().validate_code_verifier(grant, result)


class AuthorizationCode(grants.AuthorizationCodeGrant):  # type: ignore[misc]
    TOKEN_ENDPOINT_AUTH_METHODS = USER_AUTH_METHODS

    def validate_requested_scope(self) -> None:
        # At /authorize, once client and redirect URI check out and before any sign-in page: a request
        # for only scopes this client may not have goes back to it as invalid_scope (RFC 6749 §4.1.2.1).
        super().validate_requested_scope()
        self.request.client.check_requested_scope(self.request.payload.scope)

    def validate_authorization_request(self) -> str:
        redirect_uri: str = super().validate_authorization_request()
        data = self.request.payload.data
        problem = None
        if data.get("response_mode") not in (None, "query"):
            problem = "Only response_mode query is supported."
        elif len(data.get("nonce") or "") > MAX_NONCE:
            problem = f"The nonce is longer than {MAX_NONCE} characters."
        elif data.get("max_age") is not None and not str(data["max_age"]).isdigit():
            problem = "max_age must be a number of seconds."
        if problem:
            raise InvalidRequestError(problem, redirect_uri=redirect_uri, state=data.get("state"))
        return redirect_uri

    def generate_authorization_code(self) -> str:
        return CODE_PREFIX + secrets.token_urlsafe(32)

    def save_authorization_code(self, code: str, request: Any) -> None:
        user: EndUser = request.user
        data = request.payload.data
        await_only(
            _context(self.server).families.save_code(
                code,
                client_id=request.client.get_client_id(),
                user_id=user.user_id,
                redirect_uri=request.payload.redirect_uri or "",
                scope=user_scope(request.scope, user),
                nonce=data.get("nonce"),
                code_challenge=data["code_challenge"],
                code_challenge_method=data["code_challenge_method"],
                auth_time=user.auth_time,
                amr=user.amr,
            )
        )

    def query_authorization_code(self, code: str, client: OAuthClient) -> CodeRecord | None:
        if not isinstance(code, str) or len(code) > 128:
            return None
        return await_only(_context(self.server).families.find_code(code, client.get_client_id()))

    def delete_authorization_code(self, authorization_code: CodeRecord) -> None:
        """Nothing to do: the code was spent by ``save_token``, and its row stays to detect a replay."""

    def authenticate_user(self, authorization_code: CodeRecord) -> EndUser | None:
        context = _context(self.server)
        code = authorization_code
        return await_only(context.end_user(code.user_id, code.auth_time, code.amr))

    def save_token(self, token: dict[str, Any]) -> None:
        code: CodeRecord = self.request.authorization_code
        if not await_only(_context(self.server).families.redeem(code, token)):
            raise InvalidGrantError("The authorization code was already used.")
        log.log(
            "identity.token.issued",
            client_id=code.client_id,
            grant_type="authorization_code",
            user_id=code.user_id,
            scope=token.get("scope"),
        )
        jti, _ = access_token_id(token["access_token"])
        self.server.audit.token_issued(
            "token.issued", jti, "authorization_code", code.client_id, code.user_id, token.get("scope")
        )


class RefreshToken(grants.RefreshTokenGrant):  # type: ignore[misc]
    TOKEN_ENDPOINT_AUTH_METHODS = USER_AUTH_METHODS
    INCLUDE_NEW_REFRESH_TOKEN = True  # rotation: every use returns a new one

    def validate_token_request(self) -> None:
        """Authlib's checks, with a refused refresh audited (``token.refresh`` failure). A client that
        fails to authenticate is ``client.auth`` already (client_throttle.py)."""
        try:
            super().validate_token_request()
        except OAuth2Error as error:
            if error.error != "invalid_client":
                client = getattr(self.request, "client", None)
                self.server.audit.emit(
                    "token.refresh",
                    "failure",
                    client=client.get_client_id() if client is not None else None,
                    reason=error.error,
                )
            raise

    def authenticate_refresh_token(self, refresh_token: str) -> RefreshRecord | None:
        if not isinstance(refresh_token, str) or len(refresh_token) > 128:
            return None
        context = _context(self.server)
        client: OAuthClient = self.request.client
        record = await_only(context.families.find_refresh(refresh_token, client.get_client_id()))
        if record is None:
            return None
        user = await_only(context.end_user(record.user_id))
        if user is None:
            return None
        # The scopes the client's and the user's roles allow today; a request may only narrow them.
        scope = user_scope(client.get_allowed_scope(record.scope) if record.scope else "", user)
        return replace(record, scope=scope, user=user) if scope else None

    def authenticate_user(self, refresh_token: RefreshRecord) -> EndUser | None:
        user: EndUser | None = refresh_token.user
        return user

    def save_token(self, token: dict[str, Any]) -> None:
        old: RefreshRecord = self.request.refresh_token
        audit = self.server.audit
        if not await_only(_context(self.server).families.rotate(old, token)):
            audit.emit(
                "token.refresh",
                "failure",
                subject=old.user_id,
                client=old.client_id,
                reason="spent_or_revoked",
            )
            raise InvalidGrantError("The refresh token is no longer valid.")
        log.log(
            "identity.token.refreshed", client_id=old.client_id, user_id=old.user_id, scope=token.get("scope")
        )
        jti, _ = access_token_id(token["access_token"])
        audit.token_issued(
            "token.refresh", jti, "refresh_token", old.client_id, old.user_id, token.get("scope")
        )

    def revoke_old_credential(self, refresh_token: RefreshRecord) -> None:
        """Nothing to do: ``save_token`` spent it in the transaction that stored its successor."""


def install(server: IdentityServer, context: UserGrants, extensions: list[Any]) -> None:
    """Add the user-facing grants to ``server``; ``extensions`` go on the code grant (OIDC)."""
    server.user_grants = context
    server.register_grant(AuthorizationCode, [PkceS256(), *extensions])
    server.register_grant(RefreshToken)
