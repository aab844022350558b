"""The identity provider as a real process, on SQLite and on PostgreSQL: client credentials, private_key_jwt,
RFC 9068 tokens the gateway's verifier accepts, introspection and revocation."""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt as pyjwt
import pytest
from authlib.integrations.base_client import OAuthError
from authlib.integrations.httpx_client import OAuth2Client
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from identity_harness import IdentityProcess, identity_config, postgres_database
from waiting import wait_until

from garrison.tokens.jwks import JwksCache
from garrison.tokens.jwt import JwtVerifier

pytestmark = pytest.mark.process  # every test here starts real processes or listeners


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def idp(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[IdentityProcess]:
    directory = tmp_path_factory.mktemp(f"idp-{request.param}")
    if request.param == "sqlite":
        process = IdentityProcess(directory, identity_config(directory)).start()
        yield process
        process.stop()
        return
    with postgres_database(request.getfixturevalue("postgres_url")) as database:
        process = IdentityProcess(directory, identity_config(directory, database)).start()
        yield process
        process.stop()


@pytest.fixture(scope="module")
def service(idp: IdentityProcess) -> dict[str, Any]:
    return idp.create_client("orders-svc", "--scope", "orders:read", "--scope", "orders:write")


def claims_of(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    head, body, _ = token.split(".")
    decode = lambda part: json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))  # noqa: E731
    return decode(head), decode(body)


def test_discovery_and_jwks(idp: IdentityProcess) -> None:
    document = httpx.get(idp.issuer + "/.well-known/openid-configuration").json()
    assert document["issuer"] == idp.issuer
    assert document["token_endpoint"] == idp.issuer + "/token"
    assert "private_key_jwt" in document["token_endpoint_auth_methods_supported"]
    assert document["code_challenge_methods_supported"] == ["S256"]
    assert httpx.get(idp.issuer + "/.well-known/oauth-authorization-server").json() == document
    keys = httpx.get(document["jwks_uri"]).json()["keys"]
    assert keys and all(key["kty"] == "EC" and key["alg"] == "ES256" and "d" not in key for key in keys)


def test_client_credentials_token_is_an_rfc9068_jwt_the_gateway_accepts(
    idp: IdentityProcess, service: dict[str, Any]
) -> None:
    response = idp.token(service)
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert body["token_type"] == "Bearer" and body["expires_in"] == 300
    assert body["scope"] == "orders:read orders:write"
    header, claims = claims_of(body["access_token"])
    assert header["typ"] == "at+jwt" and header["alg"] == "ES256" and header["kid"]
    assert claims["iss"] == idp.issuer and claims["aud"] == "garrison"
    assert claims["sub"] == claims["client_id"] == service["client_id"]
    assert claims["exp"] - claims["iat"] == 300 and claims["jti"]
    # The gateway's own strict verifier, fed the provider's JWKS, accepts it.
    jwks = JwksCache(jwks_uri=idp.issuer + "/jwks")
    jwks.load(httpx.get(idp.issuer + "/jwks").json())
    verified = JwtVerifier(jwks, idp.issuer, ["garrison"]).verify(body["access_token"], time.time())
    assert verified.scopes == frozenset({"orders:read", "orders:write"})


def test_least_privilege_scopes(idp: IdentityProcess, service: dict[str, Any]) -> None:
    body = idp.token(service, scope="orders:read admin").json()
    assert body["scope"] == "orders:read"  # `admin` is not in the client's roles: not granted


@pytest.mark.parametrize("scope", ["admin:all", "admin:all billing:write"])
def test_asking_only_for_scopes_the_client_may_not_have_is_invalid_scope(
    idp: IdentityProcess, service: dict[str, Any], scope: str
) -> None:
    """RFC 6749 §5.2: nothing asked for is allowed, so nothing is issued (no token with an empty scope)."""
    response = idp.token(service, scope=scope)
    assert response.status_code == 400, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.headers["cache-control"] == "no-store"
    assert response.json()["error"] == "invalid_scope"
    assert "access_token" not in response.json()
    # Authlib's own client sees the same error.
    credentials = (service["client_id"], service["client_secret"])
    with OAuth2Client(*credentials, scope=scope) as client, pytest.raises(OAuthError) as raised:
        client.fetch_token(idp.issuer + "/token", grant_type="client_credentials")
    assert raised.value.error == "invalid_scope"


def test_client_secret_post_and_wrong_methods(idp: IdentityProcess) -> None:
    poster = idp.create_client("poster", "--scope", "a", "--auth-method", "client_secret_post")
    form = {"grant_type": "client_credentials", **poster}
    assert idp.post("/token", form).status_code == 200
    # Registered for client_secret_post: HTTP Basic is not accepted for it.
    assert idp.token(poster).status_code == 401


@pytest.mark.parametrize("secret", ["wrong", "", "gcs_" + "A" * 43])
def test_wrong_secret_or_unknown_client_is_invalid_client(
    idp: IdentityProcess, service: dict[str, Any], secret: str
) -> None:
    response = idp.token({"client_id": service["client_id"], "client_secret": secret})
    assert response.status_code == 401 and response.json()["error"] == "invalid_client"
    unknown = idp.token({"client_id": "gc_nobody", "client_secret": service["client_secret"]})
    assert unknown.status_code == 401


def test_repeated_parameters_and_wrong_content_type_are_refused(
    idp: IdentityProcess, service: dict[str, Any]
) -> None:
    credentials = (service["client_id"], service["client_secret"])
    repeated = httpx.post(
        idp.issuer + "/token",
        content=b"grant_type=client_credentials&grant_type=client_credentials",
        headers={"content-type": "application/x-www-form-urlencoded"},
        auth=credentials,
    )
    assert repeated.status_code == 400 and repeated.json()["error"] == "invalid_request"
    as_json = httpx.post(idp.issuer + "/token", json={"grant_type": "client_credentials"}, auth=credentials)
    assert as_json.status_code == 415


def test_introspection_and_revocation(idp: IdentityProcess, service: dict[str, Any]) -> None:
    token = idp.token(service).json()["access_token"]
    mine = (service["client_id"], service["client_secret"])
    active = idp.post("/introspect", {"token": token}, mine).json()
    assert active["active"] is True and active["client_id"] == service["client_id"]
    # Another client, without the introspect scope, learns nothing about it.
    other = idp.create_client(f"other-{uuid.uuid4().hex[:6]}", "--scope", "x")
    peer = (other["client_id"], other["client_secret"])
    assert idp.post("/introspect", {"token": token}, peer).json() == {"active": False}
    # ... and cannot revoke it.
    assert idp.post("/revoke", {"token": token}, peer).status_code == 400
    assert idp.post("/introspect", {"token": token}, mine).json()["active"] is True
    # A resource server with garrison:introspect may introspect any token.
    rs = idp.create_client(f"rs-{uuid.uuid4().hex[:6]}", "--scope", "garrison:introspect")
    assert idp.post("/introspect", {"token": token}, (rs["client_id"], rs["client_secret"])).json()["active"]
    # Revoked by its own client: inactive from then on.
    assert idp.post("/revoke", {"token": token}, mine).status_code == 200
    assert idp.post("/introspect", {"token": token}, mine).json() == {"active": False}
    assert idp.post("/introspect", {"token": "garbage"}, mine).json() == {"active": False}
    # Unauthenticated introspection is refused outright.
    assert idp.post("/introspect", {"token": token}).status_code == 401


def test_authlib_httpx_client_gets_a_token(idp: IdentityProcess, service: dict[str, Any]) -> None:
    with OAuth2Client(service["client_id"], service["client_secret"], scope="orders:read") as client:
        token = client.fetch_token(idp.issuer + "/token", grant_type="client_credentials")
    assert token["token_type"] == "Bearer" and token["scope"] == "orders:read"


# -- private_key_jwt (RFC 7523) --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def keyed(
    idp: IdentityProcess, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    jwk = json.loads(pyjwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
    path = tmp_path_factory.mktemp("jwks") / "client.jwks"
    path.write_text(json.dumps({"keys": [{**jwk, "kid": "c1", "alg": "ES256", "use": "sig"}]}))
    created = idp.create_client(
        "keyed", "--scope", "reports", "--auth-method", "private_key_jwt", "--jwks-file", str(path)
    )
    assert created["client_secret"] is None
    return created["client_id"], key


def assertion(client_id: str, key: Any, audience: str, algorithm: str = "ES256", **claims: Any) -> str:
    now = int(time.time())
    payload = {
        "iss": client_id,
        "sub": client_id,
        "aud": audience,
        "iat": now,
        "exp": now + 60,
        "jti": uuid.uuid4().hex,
        **claims,
    }
    return pyjwt.encode(payload, key, algorithm, headers={"kid": "c1"})


def assertion_form(signed: str) -> dict[str, str]:
    return {
        "grant_type": "client_credentials",
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        "client_assertion": signed,
    }


def test_private_key_jwt_and_replay(idp: IdentityProcess, keyed: tuple[str, Any]) -> None:
    client_id, key = keyed
    signed = assertion(client_id, key, idp.issuer + "/token")
    first = idp.post("/token", assertion_form(signed))
    assert first.status_code == 200, first.text
    assert claims_of(first.json()["access_token"])[1]["client_id"] == client_id
    replay = idp.post("/token", assertion_form(signed))
    assert refused_client(replay)


def test_private_key_jwt_tricks_are_refused(idp: IdentityProcess, keyed: tuple[str, Any]) -> None:
    client_id, key = keyed
    public_pem = key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    token_url = idp.issuer + "/token"
    now = int(time.time())
    base = {"iss": client_id, "sub": client_id, "aud": token_url, "iat": now, "exp": now + 60}
    forged = [
        assertion(client_id, ec.generate_private_key(ec.SECP256R1()), token_url),  # someone else's key
        assertion(client_id, key, "https://elsewhere.example/token"),  # wrong audience
        assertion(client_id, key, token_url, exp=now - 600),  # expired
        _unsigned({**base, "jti": uuid.uuid4().hex}),  # alg: none
        _hmac_with(public_pem, {**base, "jti": uuid.uuid4().hex}),  # HS256 keyed with the public key
    ]
    for signed in forged:
        assert refused_client(idp.post("/token", assertion_form(signed))), signed[:40]
    for kid in ("nope", "../../etc/passwd", "c1' OR '1'='1"):
        tricked = pyjwt.encode({**base, "jti": uuid.uuid4().hex}, key, "ES256", headers={"kid": kid})
        assert refused_client(idp.post("/token", assertion_form(tricked))), kid
    missing_jti = pyjwt.encode(base, key, "ES256", headers={"kid": "c1"})
    assert refused_client(idp.post("/token", assertion_form(missing_jti)))


def refused_client(response: httpx.Response) -> bool:
    """RFC 6749 §5.2: invalid_client, 401 when HTTP authentication was tried, else 400 or 401."""
    return response.status_code in (400, 401) and response.json()["error"] == "invalid_client"


def _unsigned(payload: dict[str, Any]) -> str:
    encode = lambda data: base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()  # noqa: E731
    return f"{encode({'alg': 'none', 'typ': 'JWT'})}.{encode(payload)}."


def _hmac_with(secret: bytes, payload: dict[str, Any]) -> str:
    import hashlib
    import hmac

    encode = lambda data: base64.urlsafe_b64encode(data).rstrip(b"=").decode()  # noqa: E731
    signing_input = (
        f"{encode(json.dumps({'alg': 'HS256', 'kid': 'c1'}).encode())}.{encode(json.dumps(payload).encode())}"
    )
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{encode(signature)}"


def test_cli_lists_and_deletes_clients(idp: IdentityProcess, tmp_path: Path) -> None:
    created = idp.create_client("short-lived", "--scope", "tmp")
    listing = idp.cli("client", "list")
    assert "short-lived" in listing.stdout and created["client_secret"] not in listing.stdout
    assert idp.cli("client", "delete", "short-lived").returncode == 0
    # Deleted: refused within about a second (the provider reloads its client directory).
    refused = lambda: idp.token(created).status_code == 401  # noqa: E731
    wait_until(refused, timeout=10, interval=0.1, what="a deleted client to be refused tokens")
    assert "gcs_" not in idp.stderr_text()  # no secret ever reaches the log
