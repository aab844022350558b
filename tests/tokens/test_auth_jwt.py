"""JWT access-token verification: every rejection case, claim extraction, the token cache, extraction.

Keys are generated at run time; tokens are minted with PyJWT (helpers/token_signers.py) or, where a test
needs a header or signature PyJWT would refuse to produce, assembled by hand (``compact``).
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import json
from collections.abc import Callable
from typing import Any

import jwt as pyjwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import get_default_algorithms
from token_signers import AUDIENCE, ISSUER, NOW, Signer, claims, jwks_of, make_signer, mint

from garrison.gateway.authn import challenge
from garrison.gateway.errors import MESSAGES
from garrison.tokens.bearer import extract_bearer
from garrison.tokens.jwks import JwksCache
from garrison.tokens.jwt import DESCRIPTIONS, JwtVerifier, KeysUnavailable, TokenRejected, VerifiedToken
from garrison.tokens.token_cache import RevocationList, TokenCache

# -- keys and minting ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def signers() -> dict[str, Signer]:
    return {alg: make_signer(alg) for alg in ("ES256", "ES384", "EdDSA", "RS256", "PS256")}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def compact(
    header: dict[str, Any] | bytes, payload: dict[str, Any] | bytes, sign: Callable[[bytes], bytes]
) -> str:
    """A compact JWS with exactly this header and payload (raw bytes are taken as the JSON text)."""
    head = header if isinstance(header, bytes) else json.dumps(header).encode()
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    signing_input = f"{b64(head)}.{b64(body)}".encode()
    return f"{signing_input.decode()}.{b64(sign(signing_input))}"


def signed_by(signer: Signer, alg: str | None = None) -> Callable[[bytes], bytes]:
    algorithm = get_default_algorithms()[alg or signer.alg]
    return lambda message: algorithm.sign(message, algorithm.prepare_key(signer.private))


def hmac_with(secret: bytes, digest: str) -> Callable[[bytes], bytes]:
    return lambda message: hmac.new(secret, message, digest).digest()


@pytest.fixture
def verifier(signers: dict[str, Signer]) -> JwtVerifier:
    return JwtVerifier(jwks_of(*signers.values()), ISSUER, [AUDIENCE, "api://other"])


def rejected(verifier: JwtVerifier, token: Any, reason: str, now: float = NOW) -> TokenRejected:
    with pytest.raises(TokenRejected) as info:
        verifier.verify(token, now)
    exc = info.value
    assert exc.reason == reason, exc.reason
    assert exc.description == DESCRIPTIONS[reason] == str(exc)
    assert (exc.error, exc.status) == ("invalid_token", 401)
    return exc


# -- acceptance --------------------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ["ES256", "ES384", "EdDSA", "RS256", "PS256"])
def test_accepts_each_algorithm(verifier: JwtVerifier, signers: dict[str, Signer], alg: str) -> None:
    token = mint(signers[alg], jti="j-1")
    verified = verifier.verify(token, NOW)
    assert verified.subject == "user-42"
    assert verified.client_id == "web"
    assert verified.scopes == {"orders:read", "orders:write"}
    assert verified.jti == "j-1"
    assert verified.exp == NOW + 300
    assert verified.claims["iss"] == ISSUER


def test_verify_async_with_known_keys(verifier: JwtVerifier, signers: dict[str, Signer]) -> None:
    token = mint(signers["ES256"])
    assert asyncio.run(verifier.verify_async(token, NOW)).subject == "user-42"


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"scope": None, "scp": ["a", "b", 3]}, {"a", "b"}),
        ({"scope": None, "scp": "a b"}, {"a", "b"}),
        ({"scope": None}, set()),
        ({"scope": 7}, set()),
    ],
)
def test_scopes_from_scope_or_scp(
    verifier: JwtVerifier, signers: dict[str, Signer], overrides: dict[str, Any], expected: set[str]
) -> None:
    assert verifier.verify(mint(signers["ES256"], **overrides), NOW).scopes == expected


def test_roles_client_id_and_frozen_claims(verifier: JwtVerifier, signers: dict[str, Signer]) -> None:
    token = mint(
        signers["EdDSA"],
        client_id=None,
        azp="spa",
        roles=["admin", 5],
        realm_access={"roles": ["auditor"]},
        jti=None,
    )
    verified = verifier.verify(token, NOW)
    assert verified.client_id == "spa"
    assert verified.roles == {"admin", "auditor"}
    assert verified.jti is None
    with pytest.raises(TypeError):
        verified.claims["sub"] = "root"  # type: ignore[index]


def test_audience_list_intersecting_is_accepted(verifier: JwtVerifier, signers: dict[str, Signer]) -> None:
    token = mint(signers["ES256"], aud=["api://elsewhere", "api://other"])
    assert verifier.verify(token, NOW).subject == "user-42"


@pytest.mark.parametrize("typ", ["at+jwt", "AT+JWT", "application/at+jwt", "Application/At+Jwt"])
def test_typ_variants_accepted(verifier: JwtVerifier, signers: dict[str, Signer], typ: str) -> None:
    assert verifier.verify(mint(signers["ES256"], {"typ": typ}), NOW)


def test_typ_not_required_accepts_plain_jwt(signers: dict[str, Signer]) -> None:
    relaxed = JwtVerifier(jwks_of(signers["ES256"]), ISSUER, [AUDIENCE], require_typ=None)
    assert relaxed.verify(mint(signers["ES256"], {"typ": "JWT"}), NOW)


def test_leeway_accepts_small_skew(verifier: JwtVerifier, signers: dict[str, Signer]) -> None:
    es = signers["ES256"]
    assert verifier.verify(mint(es, exp=int(NOW) - 20), NOW)
    assert verifier.verify(mint(es, nbf=int(NOW) + 20, iat=int(NOW) + 20), NOW)


# -- rejections: algorithm ---------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE"])
@pytest.mark.parametrize("signature", [b"", b"junk"])
def test_alg_none_any_case(
    verifier: JwtVerifier, signers: dict[str, Signer], alg: str, signature: bytes
) -> None:
    token = compact({"alg": alg, "kid": signers["ES256"].kid, "typ": "at+jwt"}, claims(), lambda _: signature)
    rejected(verifier, token, "alg_none")


def _public_key_forms(signer: Signer) -> dict[str, bytes]:
    public = signer.public
    forms = {
        "pem": public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
        "der": public.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
        "jwk": json.dumps(signer.jwk).encode(),
        "jwk-sorted": json.dumps(signer.jwk, sort_keys=True, separators=(",", ":")).encode(),
    }
    if isinstance(public, rsa.RSAPublicKey):
        forms["pem-pkcs1"] = public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.PKCS1)
    return forms


@pytest.mark.parametrize("key_alg", ["RS256", "ES256", "EdDSA"])
@pytest.mark.parametrize("hs", ["HS256", "HS384", "HS512"])
def test_hmac_signed_with_public_key_is_refused(
    verifier: JwtVerifier, signers: dict[str, Signer], key_alg: str, hs: str
) -> None:
    signer = signers[key_alg]
    digest = {"HS256": "sha256", "HS384": "sha384", "HS512": "sha512"}[hs]
    for form, secret in _public_key_forms(signer).items():
        token = compact({"alg": hs, "kid": signer.kid, "typ": "at+jwt"}, claims(), hmac_with(secret, digest))
        exc = rejected(verifier, token, "alg_not_allowed")
        assert signer.kid not in exc.description, form


@pytest.mark.parametrize("alg", ["ES512", "RS512", "PS384", "ES256K", "Ed25519", "es256", "HS256 "])
def test_algorithms_outside_the_allow_list(
    verifier: JwtVerifier, signers: dict[str, Signer], alg: str
) -> None:
    token = compact({"alg": alg, "kid": signers["ES256"].kid, "typ": "at+jwt"}, claims(), lambda _: b"sig")
    rejected(verifier, token, "alg_not_allowed")


@pytest.mark.parametrize(
    ("key_alg", "token_alg"),
    [("PS256", "RS256"), ("RS256", "PS256"), ("ES256", "ES384"), ("ES384", "ES256"), ("ES256", "EdDSA")],
)
def test_alg_must_equal_the_keys_pinned_alg(
    verifier: JwtVerifier, signers: dict[str, Signer], key_alg: str, token_alg: str
) -> None:
    key = signers[key_alg]
    # RS256/PS256 share the RSA key: that token even carries a valid signature, only the pin refuses it.
    rsa_pair = {key_alg, token_alg} == {"RS256", "PS256"}
    signing = signed_by(key, token_alg) if rsa_pair else signed_by(signers[token_alg])
    token = compact({"alg": token_alg, "kid": key.kid, "typ": "at+jwt"}, claims(), signing)
    rejected(verifier, token, "alg_mismatch")


def test_missing_or_non_string_alg_is_malformed(verifier: JwtVerifier, signers: dict[str, Signer]) -> None:
    kid = signers["ES256"].kid
    for header in ({"kid": kid, "typ": "at+jwt"}, {"alg": None, "kid": kid}, {"alg": ["ES256"], "kid": kid}):
        rejected(verifier, compact(header, claims(), signed_by(signers["ES256"])), "malformed")


# -- rejections: header parameters -------------------------------------------------------------------


def test_embedded_key_headers_are_refused(verifier: JwtVerifier, signers: dict[str, Signer]) -> None:
    attacker = make_signer("ES256", kid=signers["ES256"].kid)
    values: dict[str, Any] = {
        "jwk": attacker.jwk,
        "jku": "http://127.0.0.1:1/attacker-jwks",
        "x5u": "http://127.0.0.1:1/cert.pem",
        "x5c": ["MIIB"],
    }
    for name, value in values.items():
        for signer in (attacker, signers["ES256"]):  # refused whether or not the signature would verify
            header = {"alg": "ES256", "kid": signer.kid, "typ": "at+jwt", name: value}
            rejected(verifier, compact(header, claims(), signed_by(signer)), "forbidden_header")


@pytest.mark.parametrize("crit", [["exp"], ["b64"], [], "b64", ["x-custom"], None])
def test_any_crit_is_refused(verifier: JwtVerifier, signers: dict[str, Signer], crit: Any) -> None:
    header = {"alg": "ES256", "kid": signers["ES256"].kid, "typ": "at+jwt", "crit": crit, "b64": False}
    rejected(verifier, compact(header, claims(), signed_by(signers["ES256"])), "crit")


@pytest.mark.parametrize("typ", [None, "JWT", "jwt", "at+jwt ", "application/jwt", "id_token", 7])
def test_typ_must_be_access_token(verifier: JwtVerifier, signers: dict[str, Signer], typ: Any) -> None:
    header = {"alg": "ES256", "kid": signers["ES256"].kid}
    if typ is not None:
        header["typ"] = typ
    rejected(verifier, compact(header, claims(), signed_by(signers["ES256"])), "typ")


def test_id_token_is_not_an_access_token(verifier: JwtVerifier, signers: dict[str, Signer]) -> None:
    id_token = mint(
        signers["RS256"], {"typ": "JWT"}, aud=AUDIENCE, nonce="n-1", auth_time=int(NOW), scope=None
    )
    rejected(verifier, id_token, "typ")


# -- rejections: kid ---------------------------------------------------------------------------------


def test_missing_kid(verifier: JwtVerifier, signers: dict[str, Signer]) -> None:
    token = compact({"alg": "ES256", "typ": "at+jwt"}, claims(), signed_by(signers["ES256"]))
    rejected(verifier, token, "kid_missing")


@pytest.mark.parametrize(
    "kid",
    [
        "../../../../etc/passwd",
        "..\\..\\keys\\private.pem",
        "' OR '1'='1' --",
        "x; DROP TABLE keys;--",
        "kid\x00.pem",
        "",
        "k" * 257,
        "k" * 5000,
        7,
        ["a"],
        {"$ne": ""},
    ],
)
def test_unknown_or_hostile_kid(verifier: JwtVerifier, signers: dict[str, Signer], kid: Any) -> None:
    token = compact({"alg": "ES256", "kid": kid, "typ": "at+jwt"}, claims(), signed_by(signers["ES256"]))
    exc = rejected(verifier, token, "kid_unknown")
    if isinstance(kid, str) and kid:
        assert kid not in exc.description


def test_hostile_kid_async_does_not_crash(verifier: JwtVerifier, signers: dict[str, Signer]) -> None:
    token = compact(
        {"alg": "ES256", "kid": "k" * 300, "typ": "at+jwt"}, claims(), signed_by(signers["ES256"])
    )
    with pytest.raises(TokenRejected) as info:
        asyncio.run(verifier.verify_async(token, NOW))
    assert info.value.reason == "kid_unknown"


# -- rejections: signature ---------------------------------------------------------------------------


def test_tampered_payload(verifier: JwtVerifier, signers: dict[str, Signer]) -> None:
    header, _, signature = mint(signers["ES256"]).split(".")
    forged_payload = b64(json.dumps(claims(sub="admin")).encode())
    rejected(verifier, f"{header}.{forged_payload}.{signature}", "bad_signature")


@pytest.mark.parametrize("alg", ["ES256", "EdDSA", "RS256", "PS256"])
def test_signed_by_another_key_with_the_same_kid(
    verifier: JwtVerifier, signers: dict[str, Signer], alg: str
) -> None:
    impostor = make_signer(alg, kid=signers[alg].kid)
    rejected(verifier, mint(impostor), "bad_signature")


def test_truncated_or_empty_signature(verifier: JwtVerifier, signers: dict[str, Signer]) -> None:
    token = mint(signers["ES256"])
    flipped = token[:-2] + ("A" if token[-2] != "A" else "B") + token[-1]
    rejected(verifier, flipped, "bad_signature")
    with pytest.raises(TokenRejected) as info:
        verifier.verify(token[:-8], NOW)  # PyJWT refuses a short ECDSA signature before verifying
    assert info.value.reason in ("bad_signature", "malformed")
    rejected(verifier, token.rsplit(".", 1)[0] + ".", "malformed")


# -- rejections: claims ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"exp": int(NOW) - 31}, "expired"),
        ({"exp": int(NOW) - 3600}, "expired"),
        ({"exp": None}, "missing_claim"),
        ({"exp": str(int(NOW) + 300)}, "bad_claim"),
        ({"exp": True}, "bad_claim"),
        ({"nbf": int(NOW) + 31}, "not_yet_valid"),
        ({"nbf": "0"}, "bad_claim"),
        ({"iat": int(NOW) + 31}, "issued_in_future"),
        ({"iat": [1]}, "bad_claim"),
        ({"iss": "https://evil.test"}, "issuer"),
        ({"iss": ISSUER + "/"}, "issuer"),
        ({"iss": None}, "missing_claim"),
        ({"aud": "api://payments"}, "audience"),
        ({"aud": ["api://payments", "api://x"]}, "audience"),
        ({"aud": None}, "missing_claim"),
        ({"aud": 5}, "audience"),
        ({"sub": None}, "missing_claim"),
        ({"sub": 42}, "bad_claim"),
        ({"jti": 42}, "bad_claim"),
    ],
)
def test_claim_rejections(
    verifier: JwtVerifier, signers: dict[str, Signer], overrides: dict[str, Any], reason: str
) -> None:
    rejected(verifier, mint(signers["ES256"], **overrides), reason)


def test_non_finite_exp(verifier: JwtVerifier, signers: dict[str, Signer]) -> None:
    es = signers["ES256"]
    body = json.dumps(claims()).replace(f'"exp": {int(NOW) + 300}', '"exp": Infinity').encode()
    assert b"Infinity" in body
    header = {"alg": "ES256", "kid": es.kid, "typ": "at+jwt"}
    rejected(verifier, compact(header, body, signed_by(es)), "bad_claim")


# -- rejections: malformed ---------------------------------------------------------------------------


def _good_parts(signers: dict[str, Signer]) -> list[str]:
    return mint(signers["ES256"]).split(".")


def test_malformed_structure(verifier: JwtVerifier, signers: dict[str, Signer]) -> None:
    head, body, sig = _good_parts(signers)
    for token in ["", "abc", f"{head}.{body}", f"{head}.{body}.{sig}.{sig}", f"{head} .{body}.{sig}",
                  f"{head}.{body}.{sig}\n", f"{head}.{body}é.{sig}", f"{head}.{body}.{sig}=",
                  f"{head}=.{body}.{sig}", f"{head}.{body}+.{sig}", f".{body}.{sig}"]:  # fmt: skip
        rejected(verifier, token, "malformed")


def test_header_decoding_is_strict(verifier: JwtVerifier, signers: dict[str, Signer]) -> None:
    es = signers["ES256"]
    good = json.dumps({"alg": "ES256", "kid": es.kid, "typ": "at+jwt"}).encode()
    headers = [
        b"not json",
        b'["ES256"]',
        b'"ES256"',
        b'{"alg": "ES256", "kid": "%s", "typ": "at+jwt", "alg": "none"}' % es.kid.encode(),
        b'{"alg": "ES256", "kid": "%s", "typ": "at+jwt", "x": NaN}' % es.kid.encode(),
        b"\xff\xfe",
    ]
    for header in headers:
        rejected(verifier, compact(header, claims(), signed_by(es)), "malformed")
    # non-canonical base64url: same bytes, different trailing bits
    token = compact(good, claims(), signed_by(es))
    head, rest = token.split(".", 1)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    if len(head) % 4:
        tweaked = head[:-1] + alphabet[alphabet.index(head[-1]) ^ 1]
        assert base64.urlsafe_b64decode(tweaked + "=" * (-len(tweaked) % 4)) == good
        rejected(verifier, f"{tweaked}.{rest}", "malformed")
    # standard-alphabet characters in the header segment
    rejected(verifier, f"{head[:-1]}+.{rest}", "malformed")


def test_payload_must_be_a_json_object(verifier: JwtVerifier, signers: dict[str, Signer]) -> None:
    es = signers["ES256"]
    header = {"alg": "ES256", "kid": es.kid, "typ": "at+jwt"}
    for body in (b"[1, 2]", b"not json", b'"text"'):
        rejected(verifier, compact(header, body, signed_by(es)), "malformed")


def test_size_and_type(verifier: JwtVerifier, signers: dict[str, Signer]) -> None:
    rejected(verifier, mint(signers["ES256"], pad="x" * 9000), "too_large")
    rejected(verifier, mint(signers["ES256"]).encode(), "malformed")


def test_unknown_kid_sync(signers: dict[str, Signer]) -> None:
    only_es = JwtVerifier(jwks_of(signers["ES256"]), ISSUER, [AUDIENCE])
    rejected(only_es, mint(signers["RS256"]), "kid_unknown")


def test_no_key_set_yet_is_unavailable_not_invalid(signers: dict[str, Signer]) -> None:
    """Before any key set was loaded a good token cannot be told from a forged one: 503, retry later.

    A 401 here would make clients throw away tokens that are fine (the issuer is merely down)."""
    nothing_yet = JwtVerifier(JwksCache(jwks_uri="http://127.0.0.1:9/jwks"), ISSUER, [AUDIENCE])
    token = mint(signers["ES256"])
    with pytest.raises(KeysUnavailable) as info:
        nothing_yet.verify(token, NOW)
    assert (info.value.status, info.value.error, info.value.retry_after) == (
        503,
        "authentication_unavailable",
        1,
    )
    with pytest.raises(KeysUnavailable):
        asyncio.run(nothing_yet.verify_async(token, NOW))  # the cache was never started: no fetch
    # What is wrong with the token itself is still the token's fault, keys or not.
    rejected(nothing_yet, "not.a.token", "malformed")
    rejected(
        nothing_yet,
        compact({"alg": "none", "kid": "k", "typ": "at+jwt"}, claims(), lambda m: b""),
        "alg_none",
    )
    rejected(
        nothing_yet,
        compact({"alg": "ES256", "typ": "at+jwt"}, claims(), signed_by(signers["ES256"])),
        "kid_missing",
    )


def test_keys_unavailable_answers_retry_after_and_no_challenge() -> None:
    assert challenge(KeysUnavailable(7)) == b"retry-after: 7\r\n"  # no WWW-Authenticate invalid_token
    assert "authentication_unavailable" in MESSAGES


def test_verifier_configuration_is_validated(signers: dict[str, Signer]) -> None:
    keys = jwks_of(signers["ES256"])
    with pytest.raises(ValueError):
        JwtVerifier(keys, ISSUER, [])
    with pytest.raises(ValueError):
        JwtVerifier(keys, "", [AUDIENCE])
    with pytest.raises(ValueError):
        JwtVerifier(keys, ISSUER, [AUDIENCE], required_claims=("iss", "aud"))


# -- the verified-token cache ------------------------------------------------------------------------


def cached_verifier(signers: dict[str, Signer], cache: TokenCache) -> JwtVerifier:
    return JwtVerifier(jwks_of(*signers.values()), ISSUER, [AUDIENCE], cache=cache)


def test_cache_hit_is_a_lookup(signers: dict[str, Signer]) -> None:
    cache = TokenCache()
    verifier = cached_verifier(signers, cache)
    token = mint(signers["ES256"])
    first = verifier.verify(token, NOW)
    verifier._jwks.load({"keys": []})  # no key left: only the cache can answer now
    assert verifier.verify(token, NOW + 1) is first
    assert asyncio.run(verifier.verify_async(token, NOW + 2)) is first
    assert cache.get(mint(signers["ES256"]), NOW) is None


def test_cache_entry_expires_with_the_token(signers: dict[str, Signer]) -> None:
    cache = TokenCache()
    verifier = cached_verifier(signers, cache)
    token = mint(signers["ES256"], exp=int(NOW) + 60)
    verified = verifier.verify(token, NOW)
    assert cache.get(token, NOW + 59.9) is verified
    assert cache.get(token, NOW + 60) is None
    assert len(cache) == 0
    # within the leeway a full verify still accepts it, but it is not cached again
    assert verifier.verify(token, NOW + 61) is not verified
    assert len(cache) == 0
    rejected(verifier, token, "expired", now=NOW + 91)


def test_revoked_jti_fails_cached_and_future_tokens(signers: dict[str, Signer]) -> None:
    cache = TokenCache()
    verifier = cached_verifier(signers, cache)
    cached = mint(signers["ES256"], jti="family-1")
    verifier.verify(cached, NOW)
    cache.revoke_jti("family-1", until=NOW + 300)
    rejected(verifier, cached, "revoked", now=NOW + 1)
    rejected(verifier, cached, "revoked", now=NOW + 2)  # the entry is gone; the full verify refuses too
    cache.revoke_jti("future-1", until=NOW + 300)
    rejected(verifier, mint(signers["EdDSA"], jti="future-1"), "revoked")
    assert verifier.verify(mint(signers["EdDSA"], jti="other"), NOW)


def test_revocation_shared_between_caches_and_expiring() -> None:
    revocations = RevocationList()
    one, two = TokenCache(revocations=revocations), TokenCache(revocations=revocations)
    token = VerifiedToken("s", None, frozenset(), frozenset(), {}, "j", NOW + 100)
    one.put("t1", token, NOW)
    two.put("t1", token, NOW)
    revocations.revoke("j", NOW + 50)
    for cache in (one, two):
        with pytest.raises(TokenRejected):
            cache.get("t1", NOW)
    assert revocations.is_revoked("j", NOW + 49)
    assert not revocations.is_revoked("j", NOW + 50)
    assert len(revocations) == 0


def test_revocation_list_is_bounded() -> None:
    revocations = RevocationList(max_entries=3)
    revocations.revoke("old", NOW - 1, now=NOW)
    for index in range(3):
        revocations.revoke(f"j{index}", NOW + 100 + index, now=NOW)
    assert len(revocations) == 3 and revocations.dropped == 0  # the expired entry was purged first
    revocations.revoke("j9", NOW + 500, now=NOW)
    assert len(revocations) == 3 and revocations.dropped == 1
    assert not revocations.is_revoked("j0", NOW)  # the soonest-expiring went
    assert revocations.is_revoked("j9", NOW)
    revocations.revoke("j9", NOW + 10, now=NOW)  # a shorter until never shortens a revocation
    assert revocations.is_revoked("j9", NOW + 400)


def test_cache_is_lru_bounded_and_keeps_no_raw_token(signers: dict[str, Signer]) -> None:
    cache = TokenCache(max_entries=3)
    verifier = cached_verifier(signers, cache)
    tokens = [mint(signers["ES256"]) for _ in range(5)]
    for token in tokens[:3]:
        verifier.verify(token, NOW)
    assert cache.get(tokens[0], NOW) is not None  # touch: tokens[0] becomes most recent
    for token in tokens[3:]:
        verifier.verify(token, NOW)
    assert len(cache) == 3
    assert [cache.get(token, NOW) is not None for token in tokens] == [True, False, False, True, True]
    assert all(isinstance(key, bytes) and len(key) == 32 for key in cache._entries)
    state = repr(vars(cache)) + repr(list(cache._entries.values()))
    assert not any(token in state or token.split(".")[2] in state for token in tokens)


def test_cache_serves_one_verifier(signers: dict[str, Signer]) -> None:
    cache = TokenCache()
    cached_verifier(signers, cache)
    with pytest.raises(ValueError):
        cached_verifier(signers, cache)


def test_cache_hit_checks_no_signature(signers: dict[str, Signer], monkeypatch: pytest.MonkeyPatch) -> None:
    """A hot token costs a lookup, not a signature check (counted, not timed)."""

    calls = 0
    real_decode = pyjwt.decode

    def counting_decode(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        return real_decode(*args, **kwargs)

    monkeypatch.setattr(pyjwt, "decode", counting_decode)
    token = mint(signers["ES256"])
    cached = cached_verifier(signers, TokenCache())
    first = cached.verify(token, NOW)
    assert calls == 1
    for _ in range(5):
        assert cached.verify(token, NOW) == first
    assert calls == 1


# -- bearer extraction -------------------------------------------------------------------------------


def invalid_request(reason: str, *args: Any) -> None:
    with pytest.raises(TokenRejected) as info:
        extract_bearer(*args)
    assert (info.value.reason, info.value.error, info.value.status) == (reason, "invalid_request", 400)


def test_extract_bearer() -> None:
    assert extract_bearer([b"Bearer abc.def-_~+/="], None, False) == "abc.def-_~+/="
    assert extract_bearer([b"bearer   tok"], None, False) == "tok"
    assert extract_bearer([b"BEARER tok", b"BEARER tok"], None, False) == "tok"
    assert extract_bearer([], None, False) is None
    assert extract_bearer([b"Basic dXNlcjpwYXNz"], None, False) is None
    assert extract_bearer([b"ApiKey gk_123"], None, False) is None
    assert extract_bearer([], b"qtok", True) == "qtok"


def test_extract_bearer_refusals() -> None:
    invalid_request("two_tokens", [b"Bearer one", b"Bearer two"], None, False)
    invalid_request("two_tokens", [b"Bearer one", b"Basic dXNlcjpwYXNz"], None, False)
    invalid_request("two_tokens", [b"Bearer one"], b"two", True)
    invalid_request("two_tokens", [b"Bearer same"], b"same", True)
    invalid_request("query_token", [], b"qtok", False)
    invalid_request("query_token", [b"Bearer one"], b"two", False)
    for value in (
        b"Bearer",
        b"Bearer ",
        b"Bearer a b",
        b"Bearer tok\x00",
        b'Bearer "tok"',
        b"Bearer t\xc3\xa9",
    ):
        invalid_request("bad_authorization", [value], None, False)
    invalid_request("bad_authorization", [], b"", True)
    invalid_request("bad_authorization", [], b"a b", True)
