"""JWT access tokens (RFC 9068, checked per RFC 8725): verification. Extraction from a request is
tokens/bearer.py; the verified-token cache and its revocation check are tokens/token_cache.py.

The order of checks is the defence. The header is decoded here, strictly, before anything else touches
the token: ``alg`` must be one of the asymmetric algorithms (``none`` in any case and every HS* are
refused by name), key-source headers (``jwk``, ``jku``, ``x5u``, ``x5c``) and any ``crit`` are refused
outright, ``typ`` must say access token, and ``kid`` must name a key of the issuer's JWKS. Only then is
PyJWT asked to check the signature with that key and ``algorithms=[the key's pinned alg]``, so a token
can never choose how its own signature is checked. Time claims are checked against the caller's ``now``.

A rejection carries a fixed description chosen from ``DESCRIPTIONS``: nothing from the token (not the
kid, not a claim) is ever echoed into a response or a log line.

A well-formed token that arrives before the issuer's key set ever could be loaded is not rejected:
``KeysUnavailable`` (503, retry later) tells the client its token may be fine, where a 401 would make it
throw a good token away.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import jwt
from jwt.exceptions import InvalidJTIError, InvalidSubjectError
from jwt.types import Options

from garrison.tokens.jwks import ALLOWED_ALGORITHMS, MAX_KID_LENGTH, JwksCache, PinnedKey

if TYPE_CHECKING:
    from garrison.tokens.token_cache import TokenCache  # it imports this module at run time

DESCRIPTIONS: dict[str, str] = {
    "malformed": "The access token is malformed.",
    "too_large": "The access token is too large.",
    "alg_none": "Unsigned tokens are not accepted.",
    "alg_not_allowed": "The token's signing algorithm is not accepted.",
    "alg_mismatch": "The token's algorithm does not match its signing key.",
    "forbidden_header": "The token header names a key source, which is never trusted.",
    "crit": "The token requires a header extension that is not supported.",
    "typ": "The token is not an access token.",
    "kid_missing": "The token does not name its signing key.",
    "kid_unknown": "The token's signing key is not known.",
    "bad_signature": "The token's signature is invalid.",
    "missing_claim": "The access token lacks a required claim.",
    "bad_claim": "The access token has an invalid claim.",
    "expired": "The access token has expired.",
    "not_yet_valid": "The access token is not valid yet.",
    "issued_in_future": "The access token was issued in the future.",
    "issuer": "The access token was issued by an untrusted issuer.",
    "audience": "The access token is not intended for this service.",
    "revoked": "The access token has been revoked.",
    "two_tokens": "The request carries more than one access token.",
    "query_token": "Access tokens are not accepted in the query string.",
    "bad_authorization": "The Authorization header is malformed.",
}
_INVALID_REQUEST = frozenset({"two_tokens", "query_token", "bad_authorization"})
FORBIDDEN_HEADERS = ("jwk", "jku", "x5u", "x5c")


class AuthError(Exception):
    """An authentication or authorization refusal: an RFC 6750 error code, a fixed description, a status."""

    def __init__(self, error: str, description: str, status: int, scope: str | None = None) -> None:
        super().__init__(description)
        self.error = error
        self.description = description
        self.status = status
        self.scope = scope


class TokenRejected(AuthError):
    """The token (or the way it was sent) is refused; ``reason`` is a short code for logs and metrics."""

    def __init__(self, reason: str) -> None:
        bad_request = reason in _INVALID_REQUEST
        super().__init__(
            "invalid_request" if bad_request else "invalid_token",
            DESCRIPTIONS[reason],
            400 if bad_request else 401,
        )
        self.reason = reason


class KeysUnavailable(AuthError):
    """503: no key set has been loaded yet, so no token can be judged; ``retry_after`` in seconds."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(
            "authentication_unavailable", "The gateway cannot verify access tokens yet; retry later.", 503
        )
        self.retry_after = retry_after


@dataclass(frozen=True, slots=True)
class VerifiedToken:
    subject: str
    client_id: str | None
    scopes: frozenset[str]
    roles: frozenset[str]
    claims: Mapping[str, Any] = field(repr=False)
    jti: str | None
    exp: float


# -- strict header decoding --------------------------------------------------------------------------

_SEGMENT = re.compile(r"[A-Za-z0-9_-]*")


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise ValueError("duplicate member")
    return result


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def decode_header(segment: str) -> dict[str, Any]:
    """The JOSE header of a compact JWS: canonical unpadded base64url of a JSON object, no duplicates."""
    if len(segment) % 4 == 1 or not _SEGMENT.fullmatch(segment):
        raise TokenRejected("malformed")
    try:
        raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
        if base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii") != segment:
            raise ValueError("non-canonical base64url")
        header = json.loads(raw, object_pairs_hook=_reject_duplicates, parse_constant=_reject_constant)
    except (ValueError, binascii.Error, RecursionError):
        raise TokenRejected("malformed") from None
    if not isinstance(header, dict):
        raise TokenRejected("malformed")
    return header


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise TokenRejected("bad_claim")
    return float(value)


def _strings(value: Any) -> frozenset[str]:
    if isinstance(value, str):
        return frozenset(value.split())
    if isinstance(value, list):
        return frozenset(item for item in value if isinstance(item, str))
    return frozenset()


def _roles(claims: Mapping[str, Any]) -> frozenset[str]:
    roles = claims.get("roles")
    realm = claims.get("realm_access")
    result = frozenset(r for r in roles if isinstance(r, str)) if isinstance(roles, list) else frozenset()
    if isinstance(realm, dict) and isinstance(realm.get("roles"), list):
        result |= {r for r in realm["roles"] if isinstance(r, str)}
    return result


# -- verification ------------------------------------------------------------------------------------


class JwtVerifier:
    """Verifies access tokens of one issuer for one set of audiences (one verifier per such policy)."""

    def __init__(
        self,
        jwks: JwksCache,
        issuer: str,
        audiences: Sequence[str],
        leeway: float = 30,
        require_typ: str | None = "at+jwt",
        max_token_bytes: int = 8192,
        *,
        required_claims: Sequence[str] = ("exp", "iss", "aud", "sub"),
        cache: TokenCache | None = None,
    ) -> None:
        if not issuer or not audiences or not all(audiences):
            raise ValueError("an issuer and at least one audience are required")
        missing = {"exp", "iss", "aud"} - set(required_claims)
        if missing:
            raise ValueError(f"exp, iss and aud are always required (missing {sorted(missing)})")
        if cache is not None:
            cache.bind(self)
        self._jwks = jwks
        self.issuer = issuer
        self.audiences = list(audiences)
        self.leeway = float(leeway)
        self.require_typ = _normalize_typ(require_typ) if require_typ is not None else None
        self.max_token_bytes = max_token_bytes
        self.cache = cache
        self._options: Options = {
            "verify_signature": True,
            "require": list(required_claims),
            "verify_iss": True,
            "verify_aud": True,
            "verify_sub": True,
            "verify_jti": True,
            "strict_aud": False,
            # time is checked in _check_times against the caller's clock, not PyJWT's
            "verify_exp": False,
            "verify_nbf": False,
            "verify_iat": False,
        }

    def verify(self, token: str, now: float) -> VerifiedToken:
        """Verify with the keys already cached (the hot path); an unknown kid is rejected."""
        cached = self._cached(token, now)
        if cached is not None:
            return cached
        alg, kid = self._check_header(token)
        key = self._jwks.key_for(kid)
        if key is None:
            raise self._no_key()
        return self._check_signed(token, alg, key, now)

    async def verify_async(self, token: str, now: float) -> VerifiedToken:
        """Like ``verify``, but an unknown kid may refetch the JWKS (rate-limited by the cache)."""
        cached = self._cached(token, now)
        if cached is not None:
            return cached
        alg, kid = self._check_header(token)
        key = self._jwks.key_for(kid) or await self._jwks.key_for_unknown(kid)
        if key is None:
            raise self._no_key()
        return self._check_signed(token, alg, key, now)

    def _no_key(self) -> AuthError:
        """An unknown kid is the token's fault only if there are keys it could have named."""
        if not self._jwks.has_keys:
            return KeysUnavailable(self._jwks.retry_after())
        return TokenRejected("kid_unknown")

    def _cached(self, token: str, now: float) -> VerifiedToken | None:
        if not isinstance(token, str):
            raise TokenRejected("malformed")
        if len(token) > self.max_token_bytes:
            raise TokenRejected("too_large")
        return self.cache.get(token, now) if self.cache is not None else None

    def _check_header(self, token: str) -> tuple[str, str]:
        """The token's (alg, kid) after every header rule passed; raises TokenRejected otherwise."""
        parts = token.split(".")
        if len(parts) != 3:
            raise TokenRejected("malformed")
        header = decode_header(parts[0])
        alg = header.get("alg")
        if not isinstance(alg, str) or not alg:
            raise TokenRejected("malformed")
        if alg.lower() == "none":
            raise TokenRejected("alg_none")
        if alg not in ALLOWED_ALGORITHMS:
            raise TokenRejected("alg_not_allowed")
        if any(name in header for name in FORBIDDEN_HEADERS):
            raise TokenRejected("forbidden_header")
        if "crit" in header:  # we implement no extension, so any critical one must be refused
            raise TokenRejected("crit")
        if self.require_typ is not None:
            typ = header.get("typ")
            if not isinstance(typ, str) or _normalize_typ(typ) != self.require_typ:
                raise TokenRejected("typ")
        kid = header.get("kid")
        if kid is None:
            raise TokenRejected("kid_missing")
        if not isinstance(kid, str) or not 0 < len(kid) <= MAX_KID_LENGTH:
            raise TokenRejected("kid_unknown")
        if not parts[2] or not _SEGMENT.fullmatch(parts[1]) or not _SEGMENT.fullmatch(parts[2]):
            raise TokenRejected("malformed")
        return alg, kid

    def _check_signed(self, token: str, alg: str, key: PinnedKey, now: float) -> VerifiedToken:
        if alg != key.alg:
            raise TokenRejected("alg_mismatch")
        try:
            claims = jwt.decode(
                token,
                key.key,
                algorithms=[key.alg],
                options=self._options,
                audience=self.audiences,
                issuer=self.issuer,
            )
        except jwt.InvalidSignatureError:
            raise TokenRejected("bad_signature") from None
        except jwt.InvalidIssuerError:
            raise TokenRejected("issuer") from None
        except jwt.InvalidAudienceError:
            raise TokenRejected("audience") from None
        except jwt.MissingRequiredClaimError:
            raise TokenRejected("missing_claim") from None
        except (InvalidSubjectError, InvalidJTIError):
            raise TokenRejected("bad_claim") from None
        except (jwt.PyJWTError, ValueError, TypeError):
            raise TokenRejected("malformed") from None
        exp = self._check_times(claims, now)
        verified = _verified(claims, exp)
        if self.cache is not None:
            self.cache.put(token, verified, now)  # raises TokenRejected("revoked") for a revoked jti
        return verified

    def _check_times(self, claims: Mapping[str, Any], now: float) -> float:
        exp = _number(claims["exp"])
        if exp <= now - self.leeway:
            raise TokenRejected("expired")
        if "nbf" in claims and _number(claims["nbf"]) > now + self.leeway:
            raise TokenRejected("not_yet_valid")
        if "iat" in claims and _number(claims["iat"]) > now + self.leeway:
            raise TokenRejected("issued_in_future")
        return exp


def _normalize_typ(typ: str) -> str:
    typ = typ.lower()
    return typ.removeprefix("application/")


def _verified(claims: dict[str, Any], exp: float) -> VerifiedToken:
    subject = claims.get("sub")
    client_id = claims.get("client_id")
    if not isinstance(client_id, str):
        client_id = claims.get("azp")
    scope = claims.get("scope")
    scopes = _strings(scope) if isinstance(scope, str) else _strings(claims.get("scp"))
    jti = claims.get("jti")
    return VerifiedToken(
        subject=subject if isinstance(subject, str) else "",
        client_id=client_id if isinstance(client_id, str) else None,
        scopes=scopes,
        roles=_roles(claims),
        claims=MappingProxyType(claims),
        jti=jti if isinstance(jti, str) else None,
        exp=exp,
    )
