"""`JwtRouteAuth` remembers the last Authorization header that passed; revocation and expiry still apply."""

from __future__ import annotations

import time

import pytest
from gateway_harness import wait_until
from token_signers import AUDIENCE, ISSUER, jwks_of, make_signer, mint

from garrison.gateway.auth.authz import InsufficientScope, Requirement
from garrison.gateway.authn import JwtRouteAuth
from garrison.tokens.jwt import JwtVerifier, TokenRejected
from garrison.tokens.token_cache import TokenCache


def route_auth(
    lifetime: int = 300, scopes: tuple[str, ...] = ()
) -> tuple[JwtRouteAuth, TokenCache, list[bytes]]:
    signer = make_signer("ES256")
    cache = TokenCache()
    verifier = JwtVerifier(jwks_of(signer), ISSUER, [AUDIENCE], leeway=0, cache=cache)
    now = int(time.time())
    token = mint(signer, iat=now, exp=now + lifetime, jti="jti-1")
    return JwtRouteAuth(verifier, Requirement(scopes), allow_query=False), cache, [f"Bearer {token}".encode()]


def test_a_repeated_header_gets_the_same_identity_until_the_token_is_revoked() -> None:
    auth, cache, header = route_auth()
    first = auth.authenticate(header, [], b"")
    assert auth.authenticate(list(header), [], b"") is first  # an equal header: remembered
    cache.revoke_jti("jti-1", time.time() + 300)
    with pytest.raises(TokenRejected) as info:
        auth.authenticate(list(header), [], b"")
    assert info.value.reason == "revoked"


def test_a_remembered_token_stops_at_its_exp() -> None:
    auth, _, header = route_auth(lifetime=1)
    auth.authenticate(header, [], b"")
    # Polled, not timed: within a couple of seconds the token expires and must be refused.
    assert wait_until(lambda: _refused(auth, header), timeout=4.0, interval=0.1)


def _refused(auth: JwtRouteAuth, header: list[bytes]) -> bool:
    try:
        auth.authenticate(header, [], b"")
    except TokenRejected as exc:
        assert exc.reason == "expired"
        return True
    return False


def test_a_refused_token_is_never_remembered() -> None:
    auth, _, header = route_auth(scopes=("admin",))
    for _ in range(2):
        with pytest.raises(InsufficientScope):
            auth.authenticate(header, [], b"")
    assert auth._memo == []


def test_a_query_token_is_never_answered_from_memory() -> None:
    auth, _, header = route_auth()
    auth.authenticate(header, [], b"")
    with pytest.raises(TokenRejected) as info:
        auth.authenticate(header, [], b"access_token=other")  # query tokens are refused on this route
    assert info.value.reason in ("query_token", "two_tokens")
