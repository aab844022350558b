"""OAuth 2.0 outside the measured runs: discovery, tokens, introspection, checking a sample response.

Before anything is measured, check_provider() makes sure the provider does what the benchmark asks of
it: its discovery document names its issuer and endpoints, a client_credentials token request returns
200 with an ES256 JWT access token that verifies against the provider's JWKS, and introspecting the
tokens that wrk will send says `"active": true` (and `false` for a made-up token).
"""

from __future__ import annotations

import base64
import http.client
import json
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode, urlsplit

import jwt

if TYPE_CHECKING:
    from servers import Provider

TIMEOUT = 10.0
FORM = "application/x-www-form-urlencoded"


class OAuthError(Exception):
    """The provider answered something other than what the benchmark needs."""


def basic_authorization(client_id: str, secret: str) -> str:
    """client_secret_basic (RFC 6749 §2.3.1): both parts form-encoded, then base64 of "id:secret"."""
    pair = f"{quote(client_id, safe='')}:{quote(secret, safe='')}"
    return "Basic " + base64.b64encode(pair.encode()).decode("ascii")


class Connection:
    """One keep-alive HTTP/1.1 connection to a provider."""

    def __init__(self, address: str) -> None:
        host, port = address.rsplit(":", 1)
        self._conn = http.client.HTTPConnection(host, int(port), timeout=TIMEOUT)

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self._conn.close()

    def call(
        self, method: str, path: str, body: str | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, Any]:
        """(status, parsed JSON body) of one request; OAuthError if it fails or the body is not JSON."""
        sent = dict(headers or {})
        if body is not None:
            sent["Content-Type"] = FORM
        try:
            self._conn.request(method, path, body=body, headers=sent)
            response = self._conn.getresponse()
            raw = response.read()
        except (OSError, http.client.HTTPException) as exc:
            self._conn.close()
            raise OAuthError(f"{method} {path}: {exc}") from None
        try:
            return response.status, json.loads(raw)
        except ValueError:
            raise OAuthError(
                f"{method} {path}: {response.status} with a non-JSON body {raw[:200]!r}"
            ) from None


def _path_of(document: dict[str, Any], key: str, issuer: str) -> str:
    url = document.get(key)
    if not isinstance(url, str) or not url.startswith(issuer):
        raise OAuthError(f"discovery: {key} is {url!r}, not a URL under the issuer {issuer}")
    return urlsplit(url).path


def discover(conn: Connection, provider: Provider) -> None:
    """Read the endpoints and the JWKS from /.well-known/openid-configuration."""
    status, document = conn.call("GET", "/.well-known/openid-configuration")
    if status != 200 or not isinstance(document, dict):
        raise OAuthError(f"GET /.well-known/openid-configuration: {status} {str(document)[:200]}")
    if document.get("issuer") != provider.issuer:
        raise OAuthError(f"discovery: issuer is {document.get('issuer')!r}, expected {provider.issuer!r}")
    provider.token_path = _path_of(document, "token_endpoint", provider.issuer)
    provider.introspection_path = _path_of(document, "introspection_endpoint", provider.issuer)
    jwks_path = _path_of(document, "jwks_uri", provider.issuer)
    status, jwks = conn.call("GET", jwks_path)
    if status != 200 or not isinstance(jwks, dict) or not jwks.get("keys"):
        raise OAuthError(f"GET {jwks_path}: {status} {str(jwks)[:200]}")
    provider.jwks = jwks


def issue(conn: Connection, provider: Provider, body: str) -> dict[str, Any]:
    """One token request with the bench client: the token response, or OAuthError."""
    headers = {"Authorization": provider.authorization}
    status, response = conn.call("POST", provider.token_path, body, headers)
    if status != 200 or not isinstance(response, dict) or not isinstance(response.get("access_token"), str):
        raise OAuthError(f"POST {provider.token_path} ({body}): {status} {str(response)[:300]}")
    if str(response.get("token_type", "")).lower() != "bearer":
        raise OAuthError(f"POST {provider.token_path}: token_type is {response.get('token_type')!r}")
    return response


def introspect(
    conn: Connection, provider: Provider, token: str, authenticated: bool = True
) -> tuple[int, Any]:
    headers = {"Authorization": provider.authorization} if authenticated else {}
    body = urlencode({"token": token, "token_type_hint": "access_token"})
    return conn.call("POST", provider.introspection_path, body, headers)


def introspection_tokens(provider: Provider, count: int) -> list[str]:
    """`count` fresh access tokens to introspect (obtained with provider.introspection_token_body)."""
    with Connection(provider.address) as conn:
        return [
            issue(conn, provider, provider.introspection_token_body)["access_token"] for _ in range(count)
        ]


def token_kind(token: str) -> str:
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        return "opaque"
    return f"{header.get('alg')} JWT (typ {header.get('typ')})"


def verify_access_token(token: str, jwks: dict[str, Any], issuer: str) -> dict[str, Any]:
    """Check that `token` is an ES256 JWT signed by a key of the provider's JWKS; return its claims."""
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError as exc:
        raise OAuthError(f"the access token is not a JWT ({exc}): {token[:40]}...") from None
    if header.get("alg") != "ES256":
        raise OAuthError(f"the access token is signed with {header.get('alg')!r}, not ES256")
    keys = [k for k in jwks["keys"] if k.get("kid") == header.get("kid")]
    if not keys:
        raise OAuthError(f"no key with kid {header.get('kid')!r} in the JWKS")
    try:
        key = jwt.PyJWK(keys[0], algorithm="ES256")
        return dict(
            jwt.decode(token, key, algorithms=["ES256"], issuer=issuer, options={"verify_aud": False})
        )
    except jwt.PyJWTError as exc:
        raise OAuthError(f"the access token does not verify against the JWKS: {exc}") from None


def check_provider(provider: Provider, tokens: list[str]) -> None:
    """Check one of each request wrk will send; append what was seen to provider.checks."""
    with Connection(provider.address) as conn:
        discover(conn, provider)
        response = issue(conn, provider, provider.token_body)
        claims = verify_access_token(response["access_token"], provider.jwks, provider.issuer)
        provider.checks.append(
            f"POST {provider.token_path} ({provider.token_body}): 200, "
            f"{token_kind(response['access_token'])} verified against the JWKS, aud {claims.get('aud')!r}, "
            f"scope {response.get('scope', claims.get('scope'))!r}, expires_in {response.get('expires_in')}"
        )
        for number, token in enumerate(tokens, 1):
            status, body = introspect(conn, provider, token)
            if status != 200 or not isinstance(body, dict) or body.get("active") is not True:
                raise OAuthError(
                    f"POST {provider.introspection_path} of token {number}/{len(tokens)} "
                    f"({token_kind(token)}): {status} {str(body)[:300]}"
                )
        status, bogus = introspect(conn, provider, "not-a-token-" + "x" * 40)
        if status != 200 or not isinstance(bogus, dict) or bogus.get("active") is not False:
            raise OAuthError(f"POST {provider.introspection_path} of a made-up token: {status} {bogus}")
        try:
            anonymous: object = introspect(conn, provider, tokens[0], authenticated=False)[0]
        except OAuthError as exc:
            anonymous = f"no JSON answer ({exc})"
    provider.checks.append(
        f"POST {provider.introspection_path}: 200 active=true for all {len(tokens)} "
        f"{token_kind(tokens[0])} token(s) (from {provider.introspection_token_body}); a made-up token: "
        f"active=false; without client authentication: {anonymous}"
    )
