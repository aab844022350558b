"""revoke_tokens and lock_account against a real identity provider process: the user's refresh-token
families and access tokens stop working, and the account lock refuses sign-in until it expires."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from identity_harness import Browser, IdentityProcess, identity_config, page_kind, pkce, redirect_params
from responder_harness import Trail, alert, config, eventually

from garrison.audit.respond import AdminResponder, responder_for

PASSWORD = "correct horse battery staple"
APP = "https://app.example/callback"

pytestmark = pytest.mark.process  # real processes


@pytest.fixture(scope="module")
def idp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[IdentityProcess]:
    directory = tmp_path_factory.mktemp("idp-respond")
    process = IdentityProcess(directory, identity_config(directory)).start()
    try:
        process.create_role("staff", "orders:read")
        for name in ("alice", "bob"):
            process.create_user(name, PASSWORD, "staff")
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="module")
def web(idp: IdentityProcess) -> dict[str, Any]:
    return idp.create_web_client("web", [APP], scopes=["openid", "orders:read"])


def collector(idp: IdentityProcess, directory: Path, trail: Trail, **responses: Any) -> AdminResponder:
    state_dir = Path(idp.config["state_dir"])  # the provider's admin token is the shared one there
    cfg = config(
        state_dir,
        {"identity_admin": f"http://{idp.admin_address}", **responses},
        identity={"admin": {"listen": "127.0.0.1:0"}},
    )
    return responder_for(cfg, directory, trail)


def sign_in(idp: IdentityProcess, client: dict[str, Any], username: str) -> tuple[httpx.Response, str]:
    """Authorize and sign in: (the page after the password, the PKCE verifier)."""
    verifier, challenge = pkce()
    params = {
        "response_type": "code",
        "client_id": client["client_id"],
        "redirect_uri": APP,
        "scope": "openid orders:read",
        "state": "s",
        "code_challenge": challenge,
        "code_challenge_method": "S256",
    }
    with Browser(idp.issuer) as browser:
        page = browser.sign_in(browser.authorize(**params), username, PASSWORD)
        if page_kind(page) == "consent":
            page = browser.allow(page)
        return page, verifier


def tokens(idp: IdentityProcess, client: dict[str, Any], username: str) -> dict[str, Any]:
    page, verifier = sign_in(idp, client, username)
    code = redirect_params(page)["code"]
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": APP, "code_verifier": verifier}
    answer = idp.post("/token", form, (client["client_id"], client["client_secret"]))
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


def run(responder: AdminResponder, *alerts: Any) -> None:
    async def body() -> None:
        await responder.start()
        for one in alerts:
            await responder.respond(one)
        await responder.drain()
        await responder.stop()

    asyncio.run(body())


def test_revoke_tokens_ends_the_users_families_and_access_tokens(
    idp: IdentityProcess, web: dict[str, Any], tmp_path: Path
) -> None:
    issued = tokens(idp, web, "alice")
    credentials = (web["client_id"], web["client_secret"])
    assert idp.post("/introspect", {"token": issued["access_token"]}, credentials).json()["active"] is True
    trail = Trail()
    run(collector(idp, tmp_path, trail), alert(["revoke_tokens"], rule="token.reuse", subject="alice"))
    done = trail.only("revoke_tokens", "done")
    assert done.target == "subject:alice" and done.details["status"] == 200
    assert done.details["revoked_families"] >= 1 and "expiry" not in done.details  # it does not expire
    refreshed = idp.post(
        "/token", {"grant_type": "refresh_token", "refresh_token": issued["refresh_token"]}, credentials
    )
    assert refreshed.json().get("error") == "invalid_grant"
    assert idp.post("/introspect", {"token": issued["access_token"]}, credentials).json()["active"] is False


def test_lock_account_refuses_sign_in_until_it_expires(
    idp: IdentityProcess, web: dict[str, Any], tmp_path: Path
) -> None:
    trail = Trail()
    run(collector(idp, tmp_path, trail, lock_account={"for": "2s"}), alert(["lock_account"], subject="bob"))
    done = trail.only("lock_account", "done")
    assert done.target == "bob" and done.details["for_seconds"] == 2.0
    locks = lockouts(idp)
    assert [lock["username"] for lock in locks] == ["bob"] and "test.rule" in locks[0]["reason"]
    assert page_kind(sign_in(idp, web, "bob")[0]) == "login"  # refused: the form again
    # Poll the admin list, not sign-in (failed sign-ins would count towards the throttle).
    asyncio.run(eventually(lambda: lockouts(idp) == [], what="the lock to end"))
    assert page_kind(sign_in(idp, web, "bob")[0]) in ("consent", "redirect")


def lockouts(idp: IdentityProcess) -> list[dict[str, Any]]:
    locks: list[dict[str, Any]] = httpx.get(f"http://{idp.admin_address}/lockouts", timeout=10).json()[
        "locked"
    ]
    return locks
