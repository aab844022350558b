"""Route requirements on verified tokens, and the RFC 6750 WWW-Authenticate challenge."""

from __future__ import annotations

import re
from typing import Any

import pytest

from garrison.gateway.auth.authz import InsufficientScope, Requirement, www_authenticate
from garrison.tokens.jwt import TokenRejected, VerifiedToken


def token(scopes: str = "", roles: tuple[str, ...] = (), **claims: Any) -> VerifiedToken:
    return VerifiedToken(
        subject="u1",
        client_id="web",
        scopes=frozenset(scopes.split()),
        roles=frozenset(roles),
        claims={"sub": "u1", **claims},
        jti=None,
        exp=2e9,
    )


def refused(requirement: Requirement, verified: VerifiedToken, reason: str) -> InsufficientScope:
    with pytest.raises(InsufficientScope) as info:
        requirement.check(verified)
    exc = info.value
    assert (exc.error, exc.status, exc.reason) == ("insufficient_scope", 403, reason)
    return exc


def test_empty_requirement_allows_any_verified_token() -> None:
    Requirement().check(token())


def test_scopes_all_of() -> None:
    requirement = Requirement(scopes_all=["orders:read", "orders:write"])
    requirement.check(token("orders:read orders:write extra"))
    exc = refused(requirement, token("orders:read"), "scope")
    assert exc.scope == "orders:read orders:write"
    refused(requirement, token(), "scope")


def test_scopes_any_of() -> None:
    requirement = Requirement(scopes_any=["orders:read", "orders:admin"])
    requirement.check(token("orders:admin"))
    exc = refused(requirement, token("payments:read"), "scope")
    assert exc.scope == "orders:read orders:admin"


def test_scopes_all_and_any_together() -> None:
    requirement = Requirement(scopes_all=["a"], scopes_any=["b", "c", "a"])
    requirement.check(token("a c"))
    requirement.check(token("a"))  # "a" satisfies both
    refused(requirement, token("b c"), "scope")
    assert refused(requirement, token(""), "scope").scope == "a b c"


def test_roles_any_of() -> None:
    requirement = Requirement(roles_any=["admin", "auditor"])
    requirement.check(token(roles=("auditor",)))
    exc = refused(requirement, token("admin", roles=("user",)), "role")
    assert exc.scope is None


@pytest.mark.parametrize(
    ("matcher", "value", "ok"),
    [
        ("acme", "acme", True),
        ("acme", "ACME", False),
        ("acme", ["other", "acme"], True),
        ("acme", None, False),
        (["acme", "globex"], "globex", True),
        (["acme", "globex"], ["initech", "globex"], True),
        (["acme", "globex"], "initech", False),
        ("1", 1, False),  # no coercion across types
        ("true", True, False),
        ("acme", {"name": "acme"}, False),
        ("acme", [["acme"]], False),
    ],
)
def test_claim_matchers(matcher: str | list[str], value: Any, ok: bool) -> None:
    requirement = Requirement(claims={"tenant": matcher})
    claims = {} if value is None else {"tenant": value}
    if ok:
        requirement.check(token(**claims))
    else:
        exc = refused(requirement, token(**claims), "claim")
        assert "acme" not in exc.description and "tenant" not in exc.description


def test_every_claim_matcher_must_hold() -> None:
    requirement = Requirement(scopes_all=["s"], claims={"tenant": "acme", "tier": ["gold", "silver"]})
    requirement.check(token("s", tenant="acme", tier="gold"))
    refused(requirement, token("s", tenant="acme", tier="bronze"), "claim")
    refused(requirement, token("", tenant="acme", tier="gold"), "scope")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"scopes_all": "orders:read"},  # a string is not a list of scopes
        {"scopes_any": [""]},
        {"roles_any": [1]},
        {"claims": {"tenant": []}},
        {"claims": {"tenant": [1]}},
    ],
)
def test_requirement_validation(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        Requirement(**kwargs)


# -- WWW-Authenticate ----------------------------------------------------------------------------------

_ALLOWED = re.compile(
    rb'Bearer realm="[\x20\x21\x23-\x5b\x5d-\x7e]*"(, [a-z_]+="[\x20\x21\x23-\x5b\x5d-\x7e]*")*'
)


def test_www_authenticate_no_credentials() -> None:
    assert www_authenticate(None) == b'Bearer realm="garrison"'


def test_www_authenticate_token_and_scope_errors() -> None:
    rejected = TokenRejected("expired")
    value = www_authenticate(rejected.error, rejected.description)
    assert value == (
        b'Bearer realm="garrison", error="invalid_token", error_description="The access token has expired."'
    )
    refused = InsufficientScope("scope", "orders:read orders:write")
    value = www_authenticate(refused.error, refused.description, refused.scope, realm="shop")
    assert value == (
        b'Bearer realm="shop", error="insufficient_scope", '
        b'error_description="The access token lacks a scope this route requires.", '
        b'scope="orders:read orders:write"'
    )


@pytest.mark.parametrize(
    "hostile",
    [
        'x", error="invalid_request',
        "line\r\nSet-Cookie: a=b",
        "back\\slash\\",
        "caf\u00e9 \u202e \x00 \x7f",
        "x" * 5000,
    ],
)
def test_www_authenticate_cannot_be_injected(hostile: str) -> None:
    value = www_authenticate("invalid_token", hostile, scope=hostile + ' a"b', realm=hostile)
    assert _ALLOWED.fullmatch(value), value
    assert b"\r" not in value and b"\n" not in value and b"\\" not in value
    assert value.count(b'"') == 8  # realm, error, error_description, scope: no quote got through
    assert len(value) < 1000


def test_www_authenticate_refuses_unknown_error_codes() -> None:
    with pytest.raises(ValueError):
        www_authenticate('invalid_token", x="y', "d")
