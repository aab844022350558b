"""A second, independent OAuth client library against the provider: requests-oauth2client (its own JOSE
stack, jwskate), for discovery, client_credentials with a secret and with private_key_jwt, introspection
and revocation."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt as pyjwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from identity_harness import IdentityProcess, identity_config
from requests_oauth2client import ClientSecretBasic, InvalidScope, OAuth2Client, PrivateKeyJwt

pytestmark = pytest.mark.process  # every test here starts real processes or listeners


@pytest.fixture(scope="module")
def idp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[IdentityProcess]:
    directory = tmp_path_factory.mktemp("idp-interop")
    process = IdentityProcess(directory, identity_config(directory)).start()
    yield process
    process.stop()


def discovered(idp: IdentityProcess, **auth: Any) -> OAuth2Client:
    # testing=True: the library otherwise insists on https, and this provider runs plain on loopback.
    return OAuth2Client.from_discovery_endpoint(issuer=idp.issuer, testing=True, **auth)


def test_client_secret_flow_with_introspection_and_revocation(idp: IdentityProcess) -> None:
    created = idp.create_client("interop", "--scope", "orders:read", "--scope", "garrison:introspect")
    # The client was registered for client_secret_basic, the only method it may use.
    client = discovered(idp, auth=ClientSecretBasic(created["client_id"], created["client_secret"]))
    token = client.client_credentials(scope="orders:read")
    assert token.scope == "orders:read" and token.expires_in is not None and token.expires_in <= 300
    assert client.introspect_token(token.access_token)["active"] is True
    client.revoke_access_token(token.access_token)
    assert client.introspect_token(token.access_token) == {"active": False}
    # Only scopes the client's roles do not allow: refused as invalid_scope (RFC 6749 §5.2), no token.
    with pytest.raises(InvalidScope):
        client.client_credentials(scope="admin:all")


def test_private_key_jwt(idp: IdentityProcess, tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    private_jwk = {**json.loads(pyjwt.algorithms.ECAlgorithm.to_jwk(key)), "kid": "k1", "alg": "ES256"}
    public_jwk = {k: v for k, v in private_jwk.items() if k != "d"}
    jwks_file = tmp_path / "client.jwks"
    jwks_file.write_text(json.dumps({"keys": [public_jwk]}))
    created = idp.create_client(
        "interop-keyed",
        "--scope",
        "reports",
        "--auth-method",
        "private_key_jwt",
        "--jwks-file",
        str(jwks_file),
    )
    discovery = discovered(idp, client_id=created["client_id"], client_secret="unused")
    client = OAuth2Client(
        discovery.token_endpoint,
        auth=PrivateKeyJwt(created["client_id"], private_jwk, alg="ES256"),
        testing=True,
    )
    token = client.client_credentials(scope="reports")
    assert token.scope == "reports"
    claims = pyjwt.decode(token.access_token, options={"verify_signature": False})
    assert claims["client_id"] == created["client_id"] and claims["sub"] == created["client_id"]
