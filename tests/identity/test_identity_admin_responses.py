"""The identity admin sub-APIs that automated responses call, over real HTTP with the admin token:
``/lockouts`` (an administrative account lock, enforced at sign-in) and ``/token-families`` (every
live family of a user or client revoked, with its access tokens).

The provider's component runs in a thread with a test clock, so a lock is seen to end without
waiting; a real ``garrison identity`` process shows a lock lifted by DELETE. The gateway refusing a
revoked family's access token is tests/e2e/test_e2e_identity_admin.py.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from identity_harness import Browser, IdentityProcess, identity_config, page_kind, pkce, redirect_params
from identity_inprocess import IdentityThread

from garrison.identity import account_locks

pytestmark = pytest.mark.process

PASSWORD = "canary-" + secrets.token_hex(8)
APP = "https://app.example.com/cb"


class Admin:
    def __init__(self, address: str, state_dir: Path) -> None:
        self.base = f"http://{address}"
        token = (state_dir / "admin.token").read_text().strip()
        self.headers = {"authorization": f"Bearer {token}"}

    def call(self, method: str, path: str, authorized: bool = True, **params: str) -> httpx.Response:
        headers = self.headers if authorized else {}
        return httpx.request(method, self.base + path, params=params, headers=headers, timeout=20)


def prepare(directory: Path) -> tuple[IdentityProcess, dict[str, str], dict[str, Any]]:
    setup = IdentityProcess(directory, identity_config(directory))
    setup.create_role("staff", "orders:read")
    users = {name: setup.create_user(name, PASSWORD, "staff") for name in ("erin", "frank", "grace")}
    client = setup.create_web_client("web", [APP], scopes=["openid", "orders:read"])
    return setup, users, client


@pytest.fixture(scope="module")
def provider(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[IdentityThread, Admin, dict[str, Any]]]:
    directory = tmp_path_factory.mktemp("idp-responses")
    setup, users, client = prepare(directory)
    insecure = os.environ.get("AUTHLIB_INSECURE_TRANSPORT")
    idp = IdentityThread(setup.config_path).start()
    try:
        yield idp, Admin(idp.admin_address, Path(setup.config["state_dir"])), {"users": users, "web": client}
    finally:
        idp.stop()
        if insecure is None:
            os.environ.pop("AUTHLIB_INSECURE_TRANSPORT", None)


def sign_in(issuer: str, client: dict[str, Any], username: str) -> httpx.Response:
    """The sign-in page's answer to the right password: 401 when refused."""
    params = {
        "response_type": "code",
        "client_id": client["client_id"],
        "redirect_uri": client["redirect_uri"],
        "scope": "openid orders:read",
        "state": "s",
        "code_challenge": pkce()[1],
        "code_challenge_method": "S256",
    }
    with Browser(issuer) as browser:
        page = browser.authorize(**params)
        assert page_kind(page) == "login"
        return browser.sign_in(page, username, PASSWORD)


def code_flow(issuer: str, client: dict[str, Any], username: str) -> dict[str, Any]:
    verifier, challenge = pkce()
    params = {
        "response_type": "code",
        "client_id": client["client_id"],
        "redirect_uri": client["redirect_uri"],
        "scope": "openid orders:read",
        "state": "s",
        "code_challenge": challenge,
        "code_challenge_method": "S256",
    }
    with Browser(issuer) as browser:
        page = browser.allow(browser.sign_in(browser.authorize(**params), username, PASSWORD))
        code = redirect_params(page)["code"]
    form = {"grant_type": "authorization_code", "code": code, "code_verifier": verifier, "redirect_uri": APP}
    answer = httpx.post(issuer + "/token", data=form, auth=(client["client_id"], client["client_secret"]))
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


def test_an_account_lock_refuses_sign_in_until_it_ends(provider: tuple[IdentityThread, Admin, Any]) -> None:
    idp, admin, world = provider
    assert admin.call("POST", "/lockouts", authorized=False, username="erin").status_code == 401
    locked = admin.call("POST", "/lockouts", username="Erin ", reason="brute force", **{"for": "10m"})
    assert locked.status_code == 200, locked.text
    entry = locked.json()["locked"]
    assert entry["username"] == "erin" and entry["reason"] == "brute force"
    assert entry["until"] == pytest.approx(idp.clock.now.timestamp() + 600)
    assert [e["username"] for e in admin.call("GET", "/lockouts").json()["locked"]] == ["erin"]

    assert sign_in(idp.issuer, world["web"], "erin").status_code == 401  # the right password, refused
    [refused] = idp.emitter.of("auth.login", subject="erin", outcome="denied")
    assert refused.details["locked_by"] == "admin"
    [event] = idp.emitter.of("auth.lockout", subject="erin", source="admin")
    assert event.details["reason"] == "brute force" and event.target == "user:erin"

    idp.clock.advance(599)
    assert sign_in(idp.issuer, world["web"], "erin").status_code == 401
    idp.clock.advance(2)  # the lock is over
    assert sign_in(idp.issuer, world["web"], "erin").status_code == 200
    assert admin.call("GET", "/lockouts").json()["locked"] == []


def test_a_lock_is_lifted_by_delete(provider: tuple[IdentityThread, Admin, Any]) -> None:
    idp, admin, world = provider
    assert admin.call("POST", "/lockouts", username="frank", **{"for": "1h"}).status_code == 200
    assert sign_in(idp.issuer, world["web"], "frank").status_code == 401
    assert admin.call("DELETE", "/lockouts", username="frank").json() == {"unlocked": True}
    assert admin.call("DELETE", "/lockouts", username="frank").json() == {"unlocked": False}
    assert sign_in(idp.issuer, world["web"], "frank").status_code == 200
    assert idp.emitter.of("auth.unlock", subject="frank", lifted=True)


def test_lock_bounds(provider: tuple[IdentityThread, Admin, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    _, admin, _ = provider
    assert admin.call("POST", "/lockouts", username="x", **{"for": "25h"}).status_code == 400
    assert admin.call("POST", "/lockouts", username="x", **{"for": "0s"}).status_code == 400
    assert admin.call("POST", "/lockouts", **{"for": "1m"}).status_code == 400
    assert admin.call("PUT", "/lockouts", username="x").status_code == 405
    monkeypatch.setattr(account_locks, "MAX_LOCKS", 2)
    for name in ("u1", "u2"):
        assert admin.call("POST", "/lockouts", username=name, **{"for": "1m"}).status_code == 200
    full = admin.call("POST", "/lockouts", username="u3", **{"for": "1m"})
    assert full.status_code == 507 and "cap" in full.json()["error"]
    assert admin.call("POST", "/lockouts", username="u2", **{"for": "5m"}).status_code == 200  # renewal
    for name in ("u1", "u2"):
        admin.call("DELETE", "/lockouts", username=name)


def test_revoking_a_users_families_ends_their_refresh_and_access_tokens(
    provider: tuple[IdentityThread, Admin, Any],
) -> None:
    idp, admin, world = provider
    web, user_id = world["web"], world["users"]["grace"]
    first, second = code_flow(idp.issuer, web, "grace"), code_flow(idp.issuer, web, "grace")
    other = code_flow(idp.issuer, web, "frank")  # someone else's family stays
    auth = (web["client_id"], web["client_secret"])

    def active(token: str) -> bool:
        return bool(httpx.post(idp.issuer + "/introspect", data={"token": token}, auth=auth).json()["active"])

    assert admin.call("POST", "/token-families", authorized=False, subject=user_id).status_code == 401
    assert admin.call("POST", "/token-families", subject=user_id, client_id="x").status_code == 400
    answer = admin.call("POST", "/token-families", subject=user_id, reason="refresh reuse")
    assert answer.json() == {"revoked_families": 2, "revoked_tokens": 2}
    assert not active(first["access_token"]) and not active(second["access_token"])
    assert active(other["access_token"])
    refresh = {"grant_type": "refresh_token", "refresh_token": first["refresh_token"]}
    assert httpx.post(idp.issuer + "/token", data=refresh, auth=auth).json()["error"] == "invalid_grant"
    [event] = idp.emitter.of("token.revoked", by="admin", subject=user_id)
    assert event.details["revoked_families"] == 2 and event.details["reason"] == "refresh reuse"
    # Again: nothing left to revoke. By username, and by client, reach the same families.
    assert admin.call("POST", "/token-families", subject="grace").json()["revoked_families"] == 0
    by_client = admin.call("POST", "/token-families", client_id=web["client_id"])
    assert by_client.json()["revoked_families"] == 1 and not active(other["access_token"])


def test_a_real_process_refuses_a_locked_account_until_the_lock_is_lifted(tmp_path: Path) -> None:
    setup, _, client = prepare(tmp_path)
    idp = setup.start()
    try:
        admin = Admin(idp.admin_address, Path(setup.config["state_dir"]))
        assert admin.call("POST", "/lockouts", username="erin", **{"for": "15m"}).status_code == 200
        assert sign_in(idp.issuer, client, "erin").status_code == 401
        assert sign_in(idp.issuer, client, "frank").status_code == 200  # only that account
        assert admin.call("DELETE", "/lockouts", username="erin").json() == {"unlocked": True}
        assert sign_in(idp.issuer, client, "erin").status_code == 200
    finally:
        idp.stop()
