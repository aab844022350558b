"""The browser side of the identity provider, as a real process on SQLite and on PostgreSQL: sign-in,
consent, second factor, single sign-on and logout pages driven like a browser without JavaScript, the
authorization code flow with PKCE, refresh rotation, OpenID Connect, and the attacks on each of them."""

from __future__ import annotations

import base64
import hashlib
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import jwt as pyjwt
import pyotp
import pytest
from authlib.integrations.httpx_client import OAuth2Client
from identity_harness import (
    Browser,
    IdentityProcess,
    identity_config,
    page_form,
    page_kind,
    pkce,
    postgres_database,
    redirect_params,
)
from waiting import wait_until

pytestmark = pytest.mark.process  # every test here starts real processes or listeners

PASSWORD = "correct horse battery staple"
APP = "https://app.example.com/cb"
APP_BYE = "https://app.example.com/bye"


@contextmanager
def provider(
    request: pytest.FixtureRequest, directory: Path, backend: str, **settings: Any
) -> Iterator[IdentityProcess]:
    if backend == "sqlite":
        process = IdentityProcess(directory, identity_config(directory, **settings)).start()
        try:
            yield process
        finally:
            process.stop()
        return
    with postgres_database(request.getfixturevalue("postgres_url")) as database:
        process = IdentityProcess(directory, identity_config(directory, database, **settings)).start()
        try:
            yield process
        finally:
            process.stop()


@dataclass
class World:
    """One provider with its users and clients (created once per module and backend)."""

    idp: IdentityProcess
    users: dict[str, str] = field(default_factory=dict)  # username -> user_id
    totp: dict[str, str] = field(default_factory=dict)  # username -> base32 seed
    recovery: dict[str, list[str]] = field(default_factory=dict)
    clients: dict[str, dict[str, Any]] = field(default_factory=dict)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def world(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    directory = tmp_path_factory.mktemp(f"flows-{request.param}")
    lockout = {"ip_max_failures": 1000}  # many tests fail logins from 127.0.0.1 on purpose
    with provider(request, directory, request.param, mfa_roles=["admin"], lockout=lockout) as idp:
        world = World(idp)
        idp.create_role("staff", "orders:read")
        idp.create_role("admin", "orders:read", "orders:write")
        for name, role in [("alice", "staff"), ("bob", "staff"), ("carol", "staff"), ("root", "admin")]:
            world.users[name] = idp.create_user(name, PASSWORD, role, email=f"{name}@example.com")
        for name in ("carol", "root"):
            world.totp[name], world.recovery[name] = idp.enroll_totp(world.users[name])
        scopes = ["openid", "email", "orders:read", "orders:write"]
        world.clients["web"] = idp.create_web_client(
            "web", [APP, "https://app.example.com/alt"], scopes=scopes, post_logout_redirect_uris=[APP_BYE]
        )
        world.clients["other"] = idp.create_web_client(
            "other", ["https://other.example.com/cb"], scopes=scopes
        )
        world.clients["spa"] = idp.create_web_client(
            "spa", ["http://127.0.0.1:8765/cb"], scopes=["openid", "orders:read"], auth_method="none"
        )
        world.clients["secure"] = idp.create_web_client(
            "secure", ["https://secure.example.com/cb"], scopes=["openid", "orders:read"], require_mfa=True
        )
        yield world


# -- helpers ---------------------------------------------------------------------------------------------


@dataclass
class Grant:
    code: str
    verifier: str
    params: dict[str, str]
    response: dict[str, str]


def authorize_params(client: dict[str, Any], challenge: str, **extra: str) -> dict[str, str]:
    params = {
        "response_type": "code",
        "client_id": client["client_id"],
        "redirect_uri": client["redirect_uri"],
        "scope": "openid email orders:read orders:write",
        "state": "state-" + pkce()[0][:8],
        "nonce": "nonce-" + pkce()[0][:8],
        "code_challenge": challenge,
        "code_challenge_method": "S256",
    }
    params.update(extra)
    return {name: value for name, value in params.items() if value is not None}


def get_code(browser: Browser, client: dict[str, Any], username: str | None = None, **extra: str) -> Grant:
    """Authorize, signing in when asked and consenting when asked; ``username=None``: no sign-in expected."""
    verifier, challenge = pkce()
    params = authorize_params(client, challenge, **extra)
    page = browser.authorize(**params)
    if username is not None:
        page = browser.sign_in(page, username, PASSWORD)
    page = browser.allow(page)
    response = redirect_params(page)
    assert response["state"] == params["state"] and response["iss"] == browser.issuer
    return Grant(response["code"], verifier, params, response)


def client_auth(client: dict[str, Any]) -> tuple[tuple[str, str] | None, dict[str, str]]:
    if client["client_secret"] is None:
        return None, {"client_id": client["client_id"]}
    return (client["client_id"], client["client_secret"]), {}


def exchange(
    idp: IdentityProcess, client: dict[str, Any], grant: Grant, **form: str | None
) -> httpx.Response:
    auth, extra = client_auth(client)
    data = {
        "grant_type": "authorization_code",
        "code": grant.code,
        "redirect_uri": grant.params["redirect_uri"],
        "code_verifier": grant.verifier,
        **extra,
        **form,
    }
    return httpx.post(idp.issuer + "/token", data={k: v for k, v in data.items() if v is not None}, auth=auth)


def refresh(idp: IdentityProcess, client: dict[str, Any], token: str, **form: str) -> httpx.Response:
    auth, extra = client_auth(client)
    data = {"grant_type": "refresh_token", "refresh_token": token, **extra, **form}
    return httpx.post(idp.issuer + "/token", data=data, auth=auth)


def tokens(world: World, client_name: str = "web", username: str = "alice", **extra: str) -> dict[str, Any]:
    with Browser(world.idp.issuer) as browser:
        grant = get_code(browser, world.clients[client_name], username, **extra)
    response = exchange(world.idp, world.clients[client_name], grant)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def active(world: World, access_token: str) -> bool:
    web = world.clients["web"]
    answer = world.idp.post("/introspect", {"token": access_token}, (web["client_id"], web["client_secret"]))
    return bool(answer.json()["active"])


def oauth_error(response: httpx.Response) -> str:
    assert response.status_code in (400, 401), response.text
    error: str = response.json()["error"]
    return error


def verify_id_token(world: World, id_token: str, client_id: str) -> dict[str, Any]:
    jwks = httpx.get(world.idp.issuer + "/jwks").json()
    kid = pyjwt.get_unverified_header(id_token)["kid"]
    key = pyjwt.PyJWK(next(k for k in jwks["keys"] if k["kid"] == kid))
    claims: dict[str, Any] = pyjwt.decode(
        id_token, key, algorithms=["ES256"], audience=client_id, issuer=world.idp.issuer
    )
    return claims


def new_user(world: World, role: str = "staff") -> str:
    """A user of this test alone, so that what it consents to does not depend on other tests."""
    username = f"user-{uuid.uuid4().hex[:10]}"
    world.users[username] = world.idp.create_user(username, PASSWORD, role)
    return username


def next_totp(seed: str) -> str:
    """The code of the next time step: never the step spent at enrolment, still inside the drift window."""
    return pyotp.TOTP(seed).at(time.time() + 30)


# -- the code flow, OpenID Connect ------------------------------------------------------------------------


def test_discovery_lists_the_browser_endpoints(world: World) -> None:
    document = httpx.get(world.idp.issuer + "/.well-known/openid-configuration").json()
    issuer = world.idp.issuer
    assert document["authorization_endpoint"] == issuer + "/authorize"
    assert document["userinfo_endpoint"] == issuer + "/userinfo"
    assert document["end_session_endpoint"] == issuer + "/logout"
    assert set(document["grant_types_supported"]) == {
        "authorization_code",
        "refresh_token",
        "client_credentials",
    }
    assert document["code_challenge_methods_supported"] == ["S256"]
    assert document["response_modes_supported"] == ["query"]
    assert document["authorization_response_iss_parameter_supported"] is True
    assert {"openid", "email"} <= set(document["scopes_supported"])
    assert {"sub", "nonce", "auth_time", "amr", "at_hash", "email"} <= set(document["claims_supported"])


def test_code_flow_with_authlib_client_gives_oidc_tokens_within_the_users_roles(world: World) -> None:
    web, idp = world.clients["web"], world.idp
    with Browser(idp.issuer) as browser:
        grant = get_code(browser, web, "alice")
    with OAuth2Client(
        web["client_id"], web["client_secret"], redirect_uri=APP, code_challenge_method="S256"
    ) as client:
        token = client.fetch_token(idp.issuer + "/token", code=grant.code, code_verifier=grant.verifier)
    # alice's role allows orders:read only: orders:write is not hers to delegate (least privilege).
    assert token["scope"] == "openid email orders:read"
    assert token["refresh_token"].startswith("grt_")
    access = pyjwt.decode(token["access_token"], options={"verify_signature": False})
    assert access["sub"] == world.users["alice"] and access["client_id"] == web["client_id"]
    assert access["aud"] == "garrison" and access["amr"] == ["pwd"]
    claims = verify_id_token(world, token["id_token"], web["client_id"])
    assert claims["sub"] == world.users["alice"] and claims["aud"] == web["client_id"]
    assert claims["nonce"] == grant.params["nonce"] and claims["amr"] == ["pwd"]
    assert claims["exp"] - claims["iat"] == 300 and claims["auth_time"] <= claims["iat"]
    digest = hashlib.sha256(token["access_token"].encode()).digest()[:16]
    assert claims["at_hash"] == base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
    assert claims["preferred_username"] == "alice" and claims["email"] == "alice@example.com"
    # UserInfo, with the same access token.
    bearer = {"authorization": f"Bearer {token['access_token']}"}
    info = httpx.get(idp.issuer + "/userinfo", headers=bearer)
    assert info.status_code == 200, info.text
    assert info.json() == {
        "sub": world.users["alice"],
        "preferred_username": "alice",
        "email": "alice@example.com",
        "email_verified": False,
    }


def test_userinfo_needs_a_users_token_with_openid(world: World) -> None:
    idp = world.idp
    assert httpx.get(idp.issuer + "/userinfo").status_code == 401
    bad = httpx.get(idp.issuer + "/userinfo", headers={"authorization": "Bearer nonsense"})
    assert bad.status_code == 401 and "invalid_token" in bad.headers["www-authenticate"]
    body = tokens(world, scope="orders:read")  # no openid
    no_openid = httpx.get(
        idp.issuer + "/userinfo", headers={"authorization": f"Bearer {body['access_token']}"}
    )
    assert no_openid.status_code == 403
    no_email = tokens(world, scope="openid")
    info = httpx.get(
        idp.issuer + "/userinfo", headers={"authorization": f"Bearer {no_email['access_token']}"}
    )
    assert info.json() == {"sub": world.users["alice"], "preferred_username": "alice"}
    # An ID token is not an access token.
    as_bearer = httpx.get(
        idp.issuer + "/userinfo", headers={"authorization": f"Bearer {no_email['id_token']}"}
    )
    assert as_bearer.status_code == 401


def test_public_client_uses_pkce_alone(world: World) -> None:
    spa = world.clients["spa"]
    with Browser(world.idp.issuer) as browser:
        grant = get_code(browser, spa, "bob", scope="openid orders:read")
        no_verifier = exchange(world.idp, spa, grant, code_verifier=None)
        assert oauth_error(no_verifier) == "invalid_request"
        response = exchange(world.idp, spa, grant)
    assert response.status_code == 200, response.text
    rotated = refresh(world.idp, spa, response.json()["refresh_token"])
    assert rotated.status_code == 200 and rotated.json()["scope"] == "openid orders:read"


# -- PKCE ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "pkce_params",
    [
        {"code_challenge": None, "code_challenge_method": None},  # no PKCE at all: downgrade
        {"code_challenge_method": "plain"},
        {"code_challenge_method": None},  # a challenge without a method means plain
        {"code_challenge": "too-short"},
        {"code_challenge_method": "s256"},
    ],
)
def test_authorization_without_s256_pkce_is_refused(world: World, pkce_params: dict[str, Any]) -> None:
    with Browser(world.idp.issuer) as browser:
        params = authorize_params(world.clients["web"], pkce()[1], **pkce_params)
        answer = redirect_params(browser.authorize(**params))
    assert answer["error"] == "invalid_request" and "code" not in answer
    assert answer["state"] == params["state"] and answer["iss"] == world.idp.issuer


def test_code_exchange_needs_the_right_verifier(world: World) -> None:
    web, idp = world.clients["web"], world.idp
    with Browser(idp.issuer) as browser:
        grant = get_code(browser, web, "alice")
    assert oauth_error(exchange(idp, web, grant, code_verifier=None)) == "invalid_request"
    assert oauth_error(exchange(idp, web, grant, code_verifier=pkce()[0])) == "invalid_grant"
    assert oauth_error(exchange(idp, web, grant, code_verifier="short")) == "invalid_request"
    assert (
        oauth_error(exchange(idp, web, grant, redirect_uri="https://app.example.com/alt")) == "invalid_grant"
    )
    assert exchange(idp, web, grant).status_code == 200  # refused attempts did not spend it


# -- redirect URIs ----------------------------------------------------------------------------------------

BAD_REDIRECTS = [
    APP + "/more",  # registered one as a prefix
    APP + "x",
    "https://evil.app.example.com/cb",  # subdomain
    "https://app.example.com@evil.example/cb",  # good@evil
    "https://app.example.com.evil.example/cb",
    "https://app.example.com/%63b",  # encoded
    "https://app.example.com/cb%2F..%2Fevil",
    APP + "?next=https://evil.example",  # extra query
    APP + "/",  # trailing slash
    "https://app.example.com:8443/cb",  # another port
    "http://app.example.com/cb",  # another scheme
    "https://APP.example.com/cb",
    APP + "#fragment",
    "https://evil.example/cb",
    APP + '"',  # characters an OAuth error description may not quote: still a page, not a 500
    APP + "\u00e9",
    "https://app.example.com/c\\b",
]


def test_a_wrong_redirect_uri_gets_a_page_never_a_redirect(world: World) -> None:
    web = world.clients["web"]
    with Browser(world.idp.issuer) as fresh, Browser(world.idp.issuer) as signed_in:
        get_code(signed_in, web, "alice")
        for browser in (fresh, signed_in):
            for uri in BAD_REDIRECTS:
                for extra in ({}, {"code_challenge": None}, {"prompt": "none"}):
                    page = browser.authorize(**authorize_params(web, pkce()[1], redirect_uri=uri, **extra))
                    assert page.status_code == 400, (uri, page.status_code)
                    assert "location" not in page.headers and page.headers["content-type"].startswith(
                        "text/html"
                    )
        # The client has two redirect URIs: leaving it out is ambiguous, so refused the same way.
        page = fresh.authorize(**authorize_params(web, pkce()[1], redirect_uri=None))
        assert page.status_code == 400 and "location" not in page.headers
    unknown = fresh_page(world, client_id="gc_nobody")
    assert unknown.status_code == 400 and "location" not in unknown.headers
    odd = fresh_page(world, response_type='code"\u00e9')
    assert odd.status_code == 400 and "location" not in odd.headers


def fresh_page(world: World, **params: str) -> httpx.Response:
    with Browser(world.idp.issuer) as browser:
        return browser.authorize(**authorize_params(world.clients["web"], pkce()[1], **params))


def test_asking_only_for_scopes_the_client_may_not_have_goes_back_as_invalid_scope(world: World) -> None:
    """RFC 6749 §4.1.2.1: refused at /authorize, before any sign-in page, back to the client with its
    state; a request for some allowed scopes still gets those (and the token response names them)."""
    web = world.clients["web"]
    with Browser(world.idp.issuer) as browser:
        params = authorize_params(web, pkce()[1], scope="admin:all billing:write")
        answer = redirect_params(browser.authorize(**params))
    assert answer["error"] == "invalid_scope" and "code" not in answer
    assert answer["state"] == params["state"] and answer["iss"] == world.idp.issuer
    mixed = tokens(world, scope="openid orders:read admin:all")
    assert mixed["scope"] == "openid orders:read"


# -- codes and refresh tokens ----------------------------------------------------------------------------


def test_a_code_is_single_use_and_its_reuse_revokes_what_it_gave(world: World) -> None:
    web, idp = world.clients["web"], world.idp
    with Browser(idp.issuer) as browser:
        grant = get_code(browser, web, "alice")
    first = exchange(idp, web, grant)
    assert first.status_code == 200
    assert active(world, first.json()["access_token"])
    assert oauth_error(exchange(idp, web, grant)) == "invalid_grant"
    assert not active(world, first.json()["access_token"])
    assert oauth_error(refresh(idp, web, first.json()["refresh_token"])) == "invalid_grant"


def test_a_code_of_one_client_is_refused_to_another(world: World) -> None:
    web, other, idp = world.clients["web"], world.clients["other"], world.idp
    with Browser(idp.issuer) as browser:
        grant = get_code(browser, web, "alice")
    assert oauth_error(exchange(idp, other, grant)) == "invalid_grant"
    assert oauth_error(exchange(idp, other, grant, redirect_uri=other["redirect_uri"])) == "invalid_grant"
    assert exchange(idp, web, grant).status_code == 200  # the thief did not burn it either


def test_refresh_rotates_and_a_replayed_token_revokes_the_family(world: World) -> None:
    web, idp = world.clients["web"], world.idp
    first = tokens(world)
    second = refresh(idp, web, first["refresh_token"])
    assert second.status_code == 200, second.text
    rotated = second.json()
    assert rotated["refresh_token"] != first["refresh_token"] and rotated["scope"] == first["scope"]
    assert "id_token" not in rotated
    assert active(world, rotated["access_token"])
    # The old one again: refused, and everything of the family with it.
    assert oauth_error(refresh(idp, web, first["refresh_token"])) == "invalid_grant"
    assert oauth_error(refresh(idp, web, rotated["refresh_token"])) == "invalid_grant"
    assert not active(world, rotated["access_token"]) and not active(world, first["access_token"])


def test_rotation_does_not_extend_the_family(world: World) -> None:
    from sqlalchemy import select

    from garrison.identity.tables import refresh_tokens, token_families

    first = tokens(world)
    second = refresh(world.idp, world.clients["web"], first["refresh_token"]).json()
    third = refresh(world.idp, world.clients["web"], second["refresh_token"]).json()

    async def ends(engine: Any, kek: Any) -> set[Any]:
        digests = [kek.digest(body["refresh_token"], "refresh-token") for body in (first, second, third)]
        async with engine.connect() as conn:
            rows = await conn.execute(
                select(refresh_tokens.c.expires_at, token_families.c.expires_at)
                .select_from(refresh_tokens.join(token_families))
                .where(refresh_tokens.c.token_digest.in_(digests))
            )
            return {value for row in rows for value in row}

    assert len(world.idp.run_stores(ends)) == 1  # every token ends when the family does


def test_refresh_scope_can_only_narrow(world: World) -> None:
    web, idp = world.clients["web"], world.idp
    first = tokens(world)
    narrowed = refresh(idp, web, first["refresh_token"], scope="openid")
    assert narrowed.status_code == 200 and narrowed.json()["scope"] == "openid"
    token = narrowed.json()["refresh_token"]
    assert oauth_error(refresh(idp, web, token, scope="openid orders:read")) == "invalid_scope"
    assert oauth_error(refresh(idp, web, token, scope="orders:write")) == "invalid_scope"
    again = refresh(idp, web, token)  # a refused request did not spend it
    assert again.status_code == 200 and again.json()["scope"] == "openid"


def test_parallel_refreshes_with_one_token_let_exactly_one_through(world: World) -> None:
    web, idp = world.clients["web"], world.idp
    token = tokens(world)["refresh_token"]
    barrier = threading.Barrier(10)

    def attempt(_: int) -> int:
        barrier.wait()
        return refresh(idp, web, token).status_code

    with ThreadPoolExecutor(10) as pool:
        statuses = list(pool.map(attempt, range(10)))
    assert sorted(statuses) == [200] + [400] * 9, statuses


def test_a_refresh_token_of_one_client_is_refused_to_another(world: World) -> None:
    web, other, idp = world.clients["web"], world.clients["other"], world.idp
    token = tokens(world)["refresh_token"]
    assert oauth_error(refresh(idp, other, token)) == "invalid_grant"
    assert refresh(idp, web, token).status_code == 200


def test_revoking_a_refresh_token_ends_its_family(world: World) -> None:
    web, other, idp = world.clients["web"], world.clients["other"], world.idp
    body = tokens(world)
    form = {"token": body["refresh_token"], "token_type_hint": "refresh_token"}
    assert idp.post("/revoke", form, (other["client_id"], other["client_secret"])).status_code == 400
    assert active(world, body["access_token"])  # someone else's revocation changed nothing
    assert idp.post("/revoke", form, (web["client_id"], web["client_secret"])).status_code == 200
    assert oauth_error(refresh(idp, web, body["refresh_token"])) == "invalid_grant"
    assert not active(world, body["access_token"])
    # A public client revokes with its client_id alone.
    spa = world.clients["spa"]
    public = tokens(world, "spa", "bob", scope="openid orders:read")
    revoked = idp.post("/revoke", {"token": public["refresh_token"], "client_id": spa["client_id"]})
    assert revoked.status_code == 200
    assert oauth_error(refresh(idp, spa, public["refresh_token"])) == "invalid_grant"


def test_a_disabled_user_gets_no_more_tokens(world: World) -> None:
    idp = world.idp
    idp.create_user("dave", PASSWORD, "staff")
    body = tokens(world, username="dave")
    assert idp.cli("user", "disable", "dave").returncode == 0
    assert oauth_error(refresh(idp, world.clients["web"], body["refresh_token"])) == "invalid_grant"


# -- pages: CSRF, escaping, headers, wrong passwords ------------------------------------------------------


def test_cookies_over_https_carry_the_host_prefix() -> None:
    from garrison.identity.sessions import BrowserCookies

    cookies = BrowserCookies(secure=True, session_ttl=3600)
    assert (
        cookies.session("abc")
        == "__Host-garrison_session=abc; Path=/; HttpOnly; SameSite=Lax; Max-Age=3600; Secure"
    )
    assert cookies.csrf("xyz") == "__Host-garrison_csrf=xyz; Path=/; HttpOnly; SameSite=Strict; Secure"
    assert cookies.clear_session().endswith("Max-Age=0; Secure")


def test_the_authorization_endpoint_takes_post_too(world: World) -> None:
    with Browser(world.idp.issuer) as browser:
        get_code(browser, world.clients["web"], "alice")
        params = authorize_params(world.clients["web"], pkce()[1])
        answer = redirect_params(browser.http.post(world.idp.issuer + "/authorize", data=params))
    assert answer["state"] == params["state"] and answer["code"]


def test_pages_escape_input_and_carry_strict_headers(world: World) -> None:
    hostile = '"><script>alert(1)</script>'
    page = fresh_page(world, state=hostile)
    assert page.status_code == 200 and page_kind(page) == "login"
    assert "<script>alert" not in page.text
    assert page_form(page)[1]["authorization"].count("script") == 2  # carried intact, escaped on the page
    policy = page.headers["content-security-policy"]
    for directive in (
        "default-src 'none'",
        "frame-ancestors 'none'",
        "form-action 'self' https://app.example.com",
    ):
        assert directive in policy
    assert "script-src" not in policy and "unsafe-inline" not in policy
    assert page.headers["x-frame-options"] == "DENY" and page.headers["x-content-type-options"] == "nosniff"
    assert page.headers["cache-control"] == "no-store"
    cookie = page.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie


def test_forms_without_the_right_csrf_token_are_refused(world: World) -> None:
    idp = world.idp
    with Browser(idp.issuer) as browser, Browser(idp.issuer) as attacker:
        page = browser.authorize(**authorize_params(world.clients["web"], pkce()[1]))
        action, hidden = page_form(page)
        credentials = {"username": "alice", "password": PASSWORD}
        missing = browser.http.post(action, data={"authorization": hidden["authorization"], **credentials})
        assert missing.status_code == 400
        wrong = browser.http.post(action, data={**hidden, "csrf": "0" * 64, **credentials})
        assert wrong.status_code == 403
        # The right token from someone else's page, with the attacker's own cookie: refused.
        attacker.authorize(**authorize_params(world.clients["web"], pkce()[1]))
        assert attacker.http.post(action, data={**hidden, **credentials}).status_code == 403
        # No cookie at all (a cross-site post with SameSite=Strict carries none): refused.
        assert httpx.post(action, data={**hidden, **credentials}).status_code == 403
        for path in ("/consent", "/mfa", "/logout"):
            assert browser.http.post(idp.issuer + path, data={"decision": "allow"}).status_code == 400
        assert page_kind(browser.authorize(**authorize_params(world.clients["web"], pkce()[1]))) == "login"


def test_wrong_password_and_unknown_user_answer_alike(world: World) -> None:
    with Browser(world.idp.issuer) as browser:
        page = browser.authorize(**authorize_params(world.clients["web"], pkce()[1]))
        wrong = browser.submit(page, username="bob", password="not the password at all")
        unknown = browser.submit(page, username="nobody-here", password=PASSWORD)
    assert wrong.status_code == unknown.status_code == 401
    assert page_kind(wrong) == page_kind(unknown) == "login"
    assert "Wrong username or password." in wrong.text and "Wrong username or password." in unknown.text


# -- single sign-on, prompt, max_age, consent ------------------------------------------------------------


def test_one_sign_in_serves_every_client(world: World) -> None:
    idp, username = world.idp, new_user(world)
    with Browser(idp.issuer) as browser:
        get_code(browser, world.clients["web"], username)
        # Another client: no sign-in page, only its own consent (asked once, remembered).
        page = browser.authorize(**authorize_params(world.clients["other"], pkce()[1]))
        assert page_kind(page) == "consent"
        assert "orders:read" in page.text and "orders:write" not in page.text
        redirect_params(browser.allow(page))
        direct = browser.authorize(**authorize_params(world.clients["other"], pkce()[1]))
        assert "code" in redirect_params(direct)
        # prompt=login and max_age=0 ask for the password again; prompt=consent asks again.
        for extra in ({"prompt": "login"}, {"max_age": "0"}):
            again = browser.authorize(**authorize_params(world.clients["other"], pkce()[1], **extra))
            assert page_kind(again) == "login"
            assert "code" in redirect_params(browser.allow(browser.sign_in(again, username, PASSWORD)))
        asked = browser.authorize(**authorize_params(world.clients["other"], pkce()[1], prompt="consent"))
        assert page_kind(asked) == "consent"
        # prompt=none with a session and consent: the code, silently.
        silent = browser.authorize(**authorize_params(world.clients["other"], pkce()[1], prompt="none"))
        assert "code" in redirect_params(silent)


def test_a_double_submitted_consent_is_answered_twice(world: World) -> None:
    with Browser(world.idp.issuer) as browser:
        params = authorize_params(world.clients["other"], pkce()[1], nonce=None)
        page = browser.sign_in(browser.authorize(**params), new_user(world), PASSWORD)
        assert page_kind(page) == "consent"
        with ThreadPoolExecutor(2) as pool:
            answers = list(pool.map(lambda _: browser.submit(page, decision="allow"), range(2)))
    assert [answer.status_code for answer in answers] == [302, 302]
    assert all("code" in redirect_params(answer) for answer in answers)


def test_prompt_none_without_a_session_and_denied_consent_go_back_with_errors(world: World) -> None:
    with Browser(world.idp.issuer) as browser:
        params = authorize_params(world.clients["web"], pkce()[1], prompt="none")
        answer = redirect_params(browser.authorize(**params))
        assert answer["error"] == "login_required" and answer["state"] == params["state"]
        assert answer["iss"] == world.idp.issuer
        page = browser.sign_in(
            browser.authorize(**authorize_params(world.clients["web"], pkce()[1])), new_user(world), PASSWORD
        )
        denied = redirect_params(browser.submit(page, decision="deny"))
        assert (
            denied["error"] == "access_denied" and "code" not in denied and denied["iss"] == world.idp.issuer
        )
        forgot = browser.authorize(**authorize_params(world.clients["web"], pkce()[1], prompt="none"))
        assert redirect_params(forgot)["error"] == "consent_required"


# -- second factor ----------------------------------------------------------------------------------------


def test_a_client_that_requires_mfa_gets_a_second_factor(world: World) -> None:
    secure, idp = world.clients["secure"], world.idp
    verifier, challenge = pkce()
    params = authorize_params(secure, challenge, scope="openid orders:read")
    with Browser(idp.issuer) as browser:
        page = browser.sign_in(browser.authorize(**params), "carol", PASSWORD)
        assert page_kind(page) == "mfa"
        wrong = browser.submit(page, code="000000")
        assert wrong.status_code == 401 and page_kind(wrong) == "mfa"
        page = browser.allow(browser.submit(wrong, code=next_totp(world.totp["carol"])))
        grant = Grant(redirect_params(page)["code"], verifier, params, {})
    body = exchange(idp, secure, grant).json()
    claims = verify_id_token(world, body["id_token"], secure["client_id"])
    assert set(claims["amr"]) == {"pwd", "otp", "mfa"}


def test_mfa_by_client_by_role_and_step_up(world: World) -> None:
    idp = world.idp
    secure = world.clients["secure"]
    with Browser(idp.issuer) as browser:
        # Signed in with a password only for a client that does not need more ...
        get_code(browser, world.clients["web"], "carol")
        # ... then a client that does: a step up to the second factor, no new password.
        verifier, challenge = pkce()
        params = authorize_params(secure, challenge, scope="openid orders:read")
        page = browser.authorize(**params)
        assert page_kind(page) == "mfa"
        page = browser.allow(browser.submit(page, code=world.recovery["carol"][0]))
        grant = Grant(redirect_params(page)["code"], verifier, params, {})
        body = exchange(idp, secure, grant).json()
        claims = verify_id_token(world, body["id_token"], secure["client_id"])
        assert set(claims["amr"]) == {"pwd", "otp", "mfa"}
        # The session now carries the second factor: no new question for this client.
        assert "code" in redirect_params(
            browser.authorize(**authorize_params(secure, pkce()[1], scope="openid"))
        )
    with Browser(idp.issuer) as browser:
        # A role in identity.mfa_roles needs a second factor whatever the client; a recovery code works once.
        page = browser.sign_in(
            browser.authorize(**authorize_params(world.clients["web"], pkce()[1])), "root", PASSWORD
        )
        assert page_kind(page) == "mfa"
        assert browser.submit(page, code=world.recovery["carol"][1]).status_code == 401  # carol's, not root's
        assert page_kind(browser.submit(page, code=world.recovery["root"][0])) in ("consent", "redirect")
    with Browser(idp.issuer) as browser:
        page = browser.sign_in(
            browser.authorize(**authorize_params(world.clients["web"], pkce()[1])), "root", PASSWORD
        )
        assert browser.submit(page, code=world.recovery["root"][0]).status_code == 401  # spent
    with Browser(idp.issuer) as browser:
        # A user who needs a second factor and has none enrolled is stopped, not waved through.
        page = browser.sign_in(
            browser.authorize(**authorize_params(secure, pkce()[1], scope="openid")), "bob", PASSWORD
        )
        assert page.status_code == 403 and "location" not in page.headers


# -- logout -----------------------------------------------------------------------------------------------


def test_rp_initiated_logout(world: World) -> None:
    web, idp = world.clients["web"], world.idp
    with Browser(idp.issuer) as browser:
        grant = get_code(browser, web, "alice")
        id_token = exchange(idp, web, grant).json()["id_token"]
        # A post-logout URI that is not registered exactly: signed out, shown a page, never redirected.
        for uri in (APP_BYE + "/x", APP_BYE + "?a=b", "https://evil.example/bye", APP):
            page = browser.http.get(
                idp.issuer + "/logout", params={"id_token_hint": id_token, "post_logout_redirect_uri": uri}
            )
            assert page.status_code == 200 and "location" not in page.headers, uri
        assert page_kind(browser.authorize(**authorize_params(web, pkce()[1]))) == "login"
        grant = get_code(browser, web, "alice")
        id_token = exchange(idp, web, grant).json()["id_token"]
        # A forged hint: an error page, no redirect, still signed in.
        forged = id_token[:-4] + ("AAAA" if not id_token.endswith("AAAA") else "BBBB")
        refused = browser.http.get(
            idp.issuer + "/logout", params={"id_token_hint": forged, "post_logout_redirect_uri": APP_BYE}
        )
        assert refused.status_code == 400 and "location" not in refused.headers
        assert "code" in redirect_params(browser.authorize(**authorize_params(web, pkce()[1])))
        # The real thing: back to the registered URI with state, and the session is over.
        bye = browser.http.get(
            idp.issuer + "/logout",
            params={"id_token_hint": id_token, "post_logout_redirect_uri": APP_BYE, "state": "s1"},
        )
        assert bye.status_code == 302 and bye.headers["location"] == APP_BYE + "?state=s1"
        assert page_kind(browser.authorize(**authorize_params(web, pkce()[1]))) == "login"


def test_logout_without_a_hint_asks_first(world: World) -> None:
    web, idp = world.clients["web"], world.idp
    with Browser(idp.issuer) as browser:
        get_code(browser, web, "bob")
        page = browser.http.get(idp.issuer + "/logout", params={"post_logout_redirect_uri": APP_BYE})
        assert page.status_code == 200 and page_kind(page) == "logout"
        assert "code" in redirect_params(browser.authorize(**authorize_params(web, pkce()[1])))  # not yet
        done = browser.submit(page)
        assert done.status_code == 200 and "location" not in done.headers  # no hint: no redirect
        assert page_kind(browser.authorize(**authorize_params(web, pkce()[1]))) == "login"


def test_no_secret_reaches_the_log(world: World) -> None:
    body = tokens(world)
    log = world.idp.stderr_text()
    assert PASSWORD not in log and body["refresh_token"] not in log and body["access_token"] not in log
    for marker in ("grt_", "gac_", "gcs_"):
        assert marker not in log
    assert "identity.login.succeeded" in log and "identity.token.issued" in log


# -- brute force ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def locking(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    directory = tmp_path_factory.mktemp(f"lockout-{request.param}")
    lockout = {"max_failures": 5, "ip_max_failures": 1000, "window": 300, "lock_for": 5}
    with provider(request, directory, request.param, lockout=lockout, code_ttl=1) as idp:
        world = World(idp)
        idp.create_role("staff", "orders:read")
        world.users["erin"] = idp.create_user("erin", PASSWORD, "staff")
        world.clients["web"] = idp.create_web_client("web", [APP], scopes=["openid", "orders:read"])
        world.users["frank"] = idp.create_user("frank", PASSWORD, "staff")
        world.totp["frank"], world.recovery["frank"] = idp.enroll_totp(world.users["frank"])
        world.clients["secure"] = idp.create_web_client(
            "secure", [APP], scopes=["openid", "orders:read"], require_mfa=True
        )
        yield world


def test_parallel_password_guessing_locks_the_account(locking: World) -> None:
    idp, web = locking.idp, locking.clients["web"]
    with Browser(idp.issuer) as browser:
        page = browser.authorize(**authorize_params(web, pkce()[1], scope="openid"))
        action, hidden = page_form(page)
        cookie = "garrison_csrf=" + browser.http.cookies["garrison_csrf"]

        def guess(number: int) -> int:
            form = {**hidden, "username": "erin", "password": f"guess number {number:04d}"}
            return httpx.post(action, data=form, headers={"cookie": cookie}, timeout=30).status_code

        with ThreadPoolExecutor(30) as pool:
            assert set(pool.map(guess, range(30))) == {401}
        log = idp.stderr_text()
        assert log.count('"identity.login.failed"') <= 5  # at most max_failures ever reached argon2
        # Locked: the right password gets exactly the wrong-password answer ...
        right = browser.submit(page, username="erin", password=PASSWORD)
        assert right.status_code == 401 and "Wrong username or password." in right.text

        # ... until lock_for has passed.
        def signed_in() -> httpx.Response | None:
            answer = browser.submit(page, username="erin", password=PASSWORD)
            return None if answer.status_code == 401 else answer

        answer = wait_until(signed_in, timeout=60, interval=0.5, what="the account to be unlocked")
        assert page_kind(answer) in ("consent", "redirect")  # signed in at last


def test_parallel_code_guessing_locks_the_second_factor(locking: World) -> None:
    idp, secure = locking.idp, locking.clients["secure"]
    with Browser(idp.issuer) as browser:
        page = browser.sign_in(
            browser.authorize(**authorize_params(secure, pkce()[1], scope="openid")), "frank", PASSWORD
        )
        assert page_kind(page) == "mfa"
        action, hidden = page_form(page)
        cookies = "; ".join(f"{name}={value}" for name, value in browser.http.cookies.items())
        right = next_totp(locking.totp["frank"])
        wrong = [f"{(int(right) + n) % 1_000_000:06d}" for n in range(1, 31)]

        def guess(code: str) -> int:
            return httpx.post(
                action, data={**hidden, "code": code}, headers={"cookie": cookies}, timeout=30
            ).status_code

        with ThreadPoolExecutor(30) as pool:
            assert set(pool.map(guess, wrong)) == {401}
        # At most max_failures codes were ever checked; now even the right code is refused.
        log = idp.stderr_text()
        assert log.count('"identity.mfa.failed"') <= 5 and '"identity.mfa.refused"' in log
        refused = browser.submit(page, code=right)
        assert refused.status_code == 401 and page_kind(refused) == "mfa"


def test_codes_expire_after_code_ttl(locking: World) -> None:
    idp, web = locking.idp, locking.clients["web"]
    with Browser(idp.issuer) as browser:
        verifier, challenge = pkce()
        params = authorize_params(web, challenge, scope="openid")
        page = browser.allow(browser.sign_in(browser.authorize(**params), "erin", PASSWORD))
        grant = Grant(redirect_params(page)["code"], verifier, params, {})
    # Real elapsed time is the behaviour under test: identity.code_ttl is 1 s here, and the provider is a
    # separate process whose clock a test cannot move.
    time.sleep(1.5)
    assert oauth_error(exchange(idp, web, grant)) == "invalid_grant"


# -- behind a proxy -----------------------------------------------------------------------------------------


def test_the_throttle_sees_the_client_a_trusted_proxy_names(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """Behind the gateway every connection comes from the gateway: with identity.trusted_proxies the
    per-address limit counts the forwarded client, so one guesser cannot lock everyone out."""
    lockout = {"max_failures": 100, "ip_max_failures": 3, "window": 300, "lock_for": 300}
    with provider(request, tmp_path, "sqlite", lockout=lockout, trusted_proxies=["127.0.0.0/8"]) as idp:
        world = World(idp)
        idp.create_role("staff", "orders:read")
        world.users["gina"] = idp.create_user("gina", PASSWORD, "staff")
        web = idp.create_web_client("web", [APP], scopes=["openid", "orders:read"])
        with Browser(idp.issuer) as browser:
            page = browser.authorize(**authorize_params(web, pkce()[1], scope="openid"))
            action, hidden = page_form(page)
            cookie = "garrison_csrf=" + browser.http.cookies["garrison_csrf"]

            def attempt(address: str, password: str) -> httpx.Response:
                form = {**hidden, "username": "gina", "password": password}
                headers = {"cookie": cookie, "x-forwarded-for": address}
                return httpx.post(action, data=form, headers=headers, timeout=30)

            for _ in range(4):
                assert attempt("198.51.100.7", "not the password").status_code == 401
            log = idp.stderr_text()
            assert '"ip":"198.51.100.7"' in log and '"locked":"ip"' in log  # the forwarded guesser is locked
            # Another client behind the same proxy is not: the right password works for it.
            assert attempt("203.0.113.9", PASSWORD).status_code in (200, 302, 303)
