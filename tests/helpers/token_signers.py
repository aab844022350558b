"""Signing keys and access tokens for the JWT tests: keys generated at run time, tokens minted with PyJWT."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import jwt as pyjwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import get_default_algorithms

from garrison.tokens.jwks import JwksCache

ISSUER = "https://idp.test"
AUDIENCE = "api://orders"
NOW = 1_700_000_000.0


@dataclass
class Signer:
    kid: str
    alg: str
    private: Any
    jwk: dict[str, Any]

    @property
    def public(self) -> Any:
        return self.private.public_key()


def make_signer(alg: str, kid: str | None = None) -> Signer:
    private: Any
    if alg in ("ES256", "ES384"):
        private = ec.generate_private_key(ec.SECP256R1() if alg == "ES256" else ec.SECP384R1())
    elif alg == "EdDSA":
        private = ed25519.Ed25519PrivateKey.generate()
    else:
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = get_default_algorithms()[alg].to_jwk(private.public_key(), as_dict=True)
    jwk.update(kid=kid or f"{alg.lower()}-{uuid.uuid4().hex[:8]}", alg=alg, use="sig")
    return Signer(kid=jwk["kid"], alg=alg, private=private, jwk=jwk)


def claims(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "user-42",
        "client_id": "web",
        "scope": "orders:read orders:write",
        "iat": int(NOW) - 10,
        "exp": int(NOW) + 300,
        "jti": uuid.uuid4().hex,
    }
    base.update(overrides)
    return {key: value for key, value in base.items() if value is not None}


def mint(signer: Signer, headers: dict[str, Any] | None = None, **claim_overrides: Any) -> str:
    header: dict[str, Any] = {"kid": signer.kid, "typ": "at+jwt"}
    header.update(headers or {})
    return pyjwt.encode(claims(**claim_overrides), signer.private, algorithm=signer.alg, headers=header)


def jwks_of(*keys: Signer) -> JwksCache:
    cache = JwksCache(jwks_uri="http://127.0.0.1:9/jwks")  # never started: keys come from load()
    cache.load({"keys": [key.jwk for key in keys]})
    return cache
