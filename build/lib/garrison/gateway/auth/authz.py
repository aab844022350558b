"""Per-route authorization on a verified token, and the RFC 6750 ``WWW-Authenticate`` challenge.

A ``Requirement`` is compiled once per route (frozensets, no parsing on the hot path) and checks: all
of ``scopes_all``, at least one of ``scopes_any``, at least one of ``roles_any``, and every claim
matcher. Any failure is ``insufficient_scope`` (403). Claim matchers compare strings only: a claim of
another type (number, bool, object) never matches, so no coercion can widen a rule.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from garrison.tokens.jwt import AuthError, VerifiedToken

_DESCRIPTIONS = {
    "scope": "The access token lacks a scope this route requires.",
    "role": "The access token lacks a role this route requires.",
    "claim": "The access token's claims do not satisfy this route's requirements.",
}


class InsufficientScope(AuthError):
    """403 ``insufficient_scope``; ``scope`` is the space-separated scope list for the challenge."""

    def __init__(self, reason: str, scope: str | None) -> None:
        super().__init__("insufficient_scope", _DESCRIPTIONS[reason], 403, scope)
        self.reason = reason


def _claim_matches(value: Any, expected: frozenset[str]) -> bool:
    if isinstance(value, str):
        return value in expected
    if isinstance(value, list):
        return any(isinstance(item, str) and item in expected for item in value)
    return False


class Requirement:
    """What a route requires of a verified token. Empty fields require nothing."""

    __slots__ = ("_challenge", "claims", "roles_any", "scopes_all", "scopes_any")

    def __init__(
        self,
        scopes_all: Sequence[str] = (),
        scopes_any: Sequence[str] = (),
        roles_any: Sequence[str] = (),
        claims: Mapping[str, str | Sequence[str]] | None = None,
    ) -> None:
        for name, group in (("scopes_all", scopes_all), ("scopes_any", scopes_any), ("roles_any", roles_any)):
            if isinstance(group, str) or not all(isinstance(item, str) and item for item in group):
                raise ValueError(f"{name} must be a list of non-empty strings")
        self.scopes_all = frozenset(scopes_all)
        self.scopes_any = frozenset(scopes_any)
        self.roles_any = frozenset(roles_any)
        compiled: dict[str, frozenset[str]] = {}
        for name, expected in (claims or {}).items():
            values = (expected,) if isinstance(expected, str) else tuple(expected)
            if not values or not all(isinstance(value, str) for value in values):
                raise ValueError("a claim matcher is a string or a non-empty list of strings")
            compiled[name] = frozenset(values)
        self.claims: Mapping[str, frozenset[str]] = compiled
        ordered = list(dict.fromkeys([*scopes_all, *scopes_any]))
        self._challenge = " ".join(ordered) or None

    def check(self, token: VerifiedToken) -> None:
        """Return if ``token`` satisfies the requirement, else raise InsufficientScope."""
        if not self.scopes_all <= token.scopes:
            raise InsufficientScope("scope", self._challenge)
        if self.scopes_any and self.scopes_any.isdisjoint(token.scopes):
            raise InsufficientScope("scope", self._challenge)
        if self.roles_any and self.roles_any.isdisjoint(token.roles):
            raise InsufficientScope("role", self._challenge)
        for name, expected in self.claims.items():
            if not _claim_matches(token.claims.get(name), expected):
                raise InsufficientScope("claim", self._challenge)


# RFC 6750 §3: error, error_description and scope values use only %x20-21 / %x23-5B / %x5D-7E (no
# quote, no backslash, no control characters), so they are filtered, never escaped.
_NOT_QDTEXT = re.compile(r"[^\x20\x21\x23-\x5b\x5d-\x7e]")
_NOT_SCOPE_CHAR = re.compile(r"[^\x21\x23-\x5b\x5d-\x7e]")
_ERROR_CODE = re.compile(r"[a-z_]{1,64}")
MAX_ATTRIBUTE = 256


def _quoted(value: str) -> str:
    return '"' + _NOT_QDTEXT.sub("", value)[:MAX_ATTRIBUTE] + '"'


def www_authenticate(
    error: str | None,
    description: str | None = None,
    scope: str | None = None,
    realm: str = "garrison",
) -> bytes:
    """A ``WWW-Authenticate: Bearer`` value. With ``error=None`` (no credentials sent) only the realm."""
    parts = [f"realm={_quoted(realm)}"]
    if error is not None:
        if not _ERROR_CODE.fullmatch(error):
            raise ValueError("error must be an RFC 6750 error code")
        parts.append(f'error="{error}"')
        if description:
            parts.append(f"error_description={_quoted(description)}")
        if scope:
            tokens = [_NOT_SCOPE_CHAR.sub("", item) for item in scope.split(" ")]
            joined = " ".join(token for token in tokens if token)
            if joined:
                parts.append(f"scope={_quoted(joined)}")
    return ("Bearer " + ", ".join(parts)).encode("ascii")
