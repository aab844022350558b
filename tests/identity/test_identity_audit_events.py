"""The identity provider's audit events, from real flows: the provider's component serves on real
sockets (in a thread, with a recording emitter and a test clock injected), driven like a browser and
like OAuth clients. Each event's type, outcome and actor are checked, and that no password, code,
client secret or token ever appears in one (canary values)."""

from __future__ import annotations

import base64
import json
import os
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pyotp
import pytest
from identity_harness import Browser, IdentityProcess, identity_config, page_kind, pkce, redirect_params
from identity_inprocess import IdentityThread

pytestmark = pytest.mark.process  # real listeners (in a thread)

PROXY_SEES = "198.51.100.7"  # the client address a trusted proxy (127.0.0.0/8) names
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
APP = "https://app.example.com/cb"
LOCKOUT = {"max_failures": 3, "ip_max_failures": 1000, "window": 300, "lock_for": 300}


@dataclass
class World:
    setup: IdentityProcess
    idp: IdentityThread | Any = None
    passwords: dict[str, str] = field(default_factory=dict)
    users: dict[str, str] = field(default_factory=dict)  # username -> user_id
    clients: dict[str, dict[str, Any]] = field(default_factory=dict)
    totp: str = ""
    canaries: list[str] = field(default_factory=list)  # every secret the test handled


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    directory = tmp_path_factory.mktemp("idp-events")
    settings = {"lockout": LOCKOUT, "trusted_proxies": ["127.0.0.0/8"], "mfa_roles": []}
    setup = IdentityProcess(directory, identity_config(directory, **settings))
    world = World(setup)
    setup.create_role("staff", "orders:read")
    for name in ("alice", "bob", "carol", "dave"):
        world.passwords[name] = "canary-pw-" + secrets.token_hex(8)
        world.users[name] = setup.create_user(name, world.passwords[name], "staff")
    world.totp, recovery = setup.enroll_totp(world.users["carol"])
    scopes = ["openid", "orders:read"]
    world.clients["web"] = setup.create_web_client("web", [APP], scopes=scopes)
    world.clients["secure"] = setup.create_web_client(
        "secure", ["https://secure.example.com/cb"], scopes=scopes, require_mfa=True
    )
    world.clients["svc"] = setup.create_client("svc", "--scope", "orders:read")
    world.canaries += [*world.passwords.values(), world.totp, *recovery]
    world.canaries += [c["client_secret"] for c in world.clients.values() if c.get("client_secret")]
    insecure = os.environ.get("AUTHLIB_INSECURE_TRANSPORT")
    world.idp = IdentityThread(setup.config_path).start()
    try:
        yield world
    finally:
        world.idp.stop()
        if insecure is None:  # the component allows plaintext for Authlib when TLS is off
            os.environ.pop("AUTHLIB_INSECURE_TRANSPORT", None)


def browser(world: World) -> Browser:
    web = Browser(world.idp.issuer)
    web.http.headers.update({"x-forwarded-for": PROXY_SEES, "traceparent": f"00-{TRACE}-00f067aa0ba902b7-01"})
    web.http.headers["x-request-id"] = "req-" + secrets.token_hex(4)
    return web


def login_page(web: Browser, client: dict[str, Any], challenge: str) -> httpx.Response:
    params = {
        "response_type": "code",
        "client_id": client["client_id"],
        "redirect_uri": client["redirect_uri"],
        "scope": "openid orders:read",
        "state": "s-" + secrets.token_hex(4),
        "code_challenge": challenge,
        "code_challenge_method": "S256",
    }
    page = web.authorize(**params)
    assert page_kind(page) == "login", page.text[:300]
    return page


def user_tokens(world: World, username: str) -> dict[str, Any]:
    """Sign in and run the code flow: the token response (the code goes to the canaries)."""
    web_client = world.clients["web"]
    verifier, challenge = pkce()
    with browser(world) as web:
        page = web.sign_in(login_page(web, web_client, challenge), username, world.passwords[username])
        code = redirect_params(web.allow(page))["code"]
    world.canaries += [code, verifier]
    answer = post_token(
        world,
        web_client,
        grant_type="authorization_code",
        code=code,
        code_verifier=verifier,
        redirect_uri=APP,
    )
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    world.canaries += [body["access_token"], body["refresh_token"], body["id_token"]]
    return body


def post_token(
    world: World, client: dict[str, Any], secret: str | None = None, **form: str
) -> httpx.Response:
    auth = (client["client_id"], secret or client["client_secret"])
    return httpx.post(world.idp.issuer + "/token", data=form, auth=auth, timeout=20)


def jti_of(token: str) -> str:
    payload = token.split(".")[1]
    return str(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["jti"])


def test_sign_ins_name_the_username_the_resolved_address_and_the_trace(world: World) -> None:
    events = world.idp.emitter
    with browser(world) as web:
        page = login_page(web, world.clients["web"], pkce()[1])
        assert web.sign_in(page, "alice", "wrong-" + world.passwords["alice"]).status_code == 401
        assert web.sign_in(page, "nobody-here", world.passwords["alice"]).status_code == 401
        assert web.sign_in(page, "alice", world.passwords["alice"]).status_code in (200, 302)
    [bad] = events.of("auth.login", subject="alice", outcome="failure")
    assert bad.details["reason"] == "bad_password" and bad.details["user_id"] == world.users["alice"]
    assert bad.actor.ip == PROXY_SEES and bad.trace_id == TRACE and bad.request_id.startswith("req-")
    [unknown] = events.of("auth.login", subject="nobody-here")
    assert (unknown.outcome, unknown.details["reason"]) == ("failure", "unknown_user")
    [good] = events.of("auth.login", subject="alice", outcome="success")
    assert good.details["user_id"] == world.users["alice"] and good.component == "identity"


def test_a_guessed_account_is_locked_and_then_refused_as_locked(world: World) -> None:
    events = world.idp.emitter
    with browser(world) as web:
        page = login_page(web, world.clients["web"], pkce()[1])
        for attempt in range(LOCKOUT["max_failures"]):
            assert web.sign_in(page, "dave", f"guess-{attempt}").status_code == 401
        assert web.sign_in(page, "dave", world.passwords["dave"]).status_code == 401  # locked
    [lockout] = events.of("auth.lockout", subject="dave")
    assert lockout.details["limit"] == "user" and lockout.details["source"] == "throttle"
    assert lockout.details["until"] > time.time() and lockout.actor.ip == PROXY_SEES
    [refused] = events.of("auth.login", subject="dave", outcome="denied")
    assert refused.details["reason"] == "locked" and refused.details["locked_by"] == "user"
    assert len(events.of("auth.login", subject="dave", outcome="failure", reason="bad_password")) == 3


def test_second_factor_success_and_failure(world: World) -> None:
    events = world.idp.emitter
    with browser(world) as web:
        page = web.sign_in(
            login_page(web, world.clients["secure"], pkce()[1]), "carol", world.passwords["carol"]
        )
        assert page_kind(page) == "mfa"
        wrong = web.submit(page, code="000000")
        assert wrong.status_code == 401
        code = pyotp.TOTP(world.totp).at(time.time() + 30)
        world.canaries.append(code)
        web.submit(wrong, code=code)
    [failed] = events.of("auth.mfa", subject="carol", outcome="failure")
    assert failed.details["reason"] == "bad_code" and failed.actor.ip == PROXY_SEES
    [passed] = events.of("auth.mfa", subject="carol", outcome="success")
    assert passed.details["user_id"] == world.users["carol"]


def test_tokens_issued_refreshed_replayed_and_revoked(world: World) -> None:
    events, web = world.idp.emitter, world.clients["web"]
    first = user_tokens(world, "bob")
    [issued] = events.of("token.issued", subject=world.users["bob"], grant_type="authorization_code")
    assert issued.actor.client == web["client_id"] and issued.target and issued.target.startswith("hmac:")
    assert jti_of(first["access_token"]) not in events.wire()

    second = post_token(world, web, grant_type="refresh_token", refresh_token=first["refresh_token"])
    assert second.status_code == 200, second.text
    world.canaries += [second.json()["access_token"], second.json()["refresh_token"]]
    [refreshed] = events.of("token.refresh", subject=world.users["bob"], outcome="success")
    assert refreshed.actor.client == web["client_id"] and refreshed.target != issued.target

    replay = post_token(world, web, grant_type="refresh_token", refresh_token=first["refresh_token"])
    assert replay.status_code == 400 and replay.json()["error"] == "invalid_grant"
    [reuse] = events.of("token.reuse", subject=world.users["bob"])
    assert reuse.outcome == "denied" and reuse.actor.client == web["client_id"]
    assert reuse.details["credential"] == "refresh_token" and reuse.details["family_revoked"] is True
    assert reuse.details["access_tokens_revoked"] == 2
    assert events.of("token.refresh", client=web["client_id"], outcome="failure", reason="invalid_grant")

    third = user_tokens(world, "bob")
    revoked = httpx.post(
        world.idp.issuer + "/revoke",
        data={"token": third["access_token"]},
        auth=(web["client_id"], web["client_secret"]),
    )
    assert revoked.status_code == 200
    [event] = events.of("token.revoked", kind="access_token")
    assert event.actor.client == web["client_id"] and event.details["by"] == "client"
    assert event.actor.subject == world.users["bob"] and event.target.startswith("hmac:")


def test_client_credentials_and_failed_client_authentication(world: World) -> None:
    events, svc = world.idp.emitter, world.clients["svc"]
    answer = post_token(world, svc, grant_type="client_credentials")
    assert answer.status_code == 200
    world.canaries.append(answer.json()["access_token"])
    assert events.of("token.issued", client=svc["client_id"], grant_type="client_credentials")
    wrong = "gcs_canary_" + secrets.token_hex(8)
    world.canaries.append(wrong)
    assert post_token(world, svc, wrong, grant_type="client_credentials").status_code == 401
    [failed] = events.of("client.auth", client=svc["client_id"])
    assert (failed.outcome, failed.details["reason"], failed.details["endpoint"]) == (
        "failure",
        "bad_credentials",
        "token",
    )


def test_no_secret_ever_reaches_an_event(world: World) -> None:
    """Last in the module: every secret the tests above handled is looked for in every event."""
    wire = world.idp.emitter.wire()
    assert len(world.idp.emitter.events) > 15 and len(world.canaries) > 15
    for canary in world.canaries:
        assert canary not in wire, f"a secret ({canary[:6]}...) is in an audit event"
    for line in world.idp.emitter.lines:
        assert b"grt_" not in line and b"gac_" not in line and b"eyJ" not in line
