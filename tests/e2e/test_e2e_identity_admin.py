"""An automated response's token-family revocation, end to end: a user's access token opens a route
at a real gateway; ``POST /token-families?subject=...`` on the identity provider's admin API (with
the admin token) revokes the user's families; the gateway then refuses the access token (pushed to
its admin API's revocation list) and the refresh token no longer refreshes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from gateway_harness import RecordingUpstream, http_call, wait_until
from identity_harness import Browser, IdentityProcess, identity_config, pkce, redirect_params

pytestmark = pytest.mark.process

PASSWORD = "correct horse battery staple"
APP = "https://app.example.com/cb"


def user_tokens(idp: IdentityProcess, client: dict[str, Any]) -> dict[str, Any]:
    verifier, challenge = pkce()
    params = {
        "response_type": "code",
        "client_id": client["client_id"],
        "redirect_uri": APP,
        "scope": "orders:read",
        "state": "s",
        "code_challenge": challenge,
        "code_challenge_method": "S256",
    }
    with Browser(idp.issuer) as browser:
        page = browser.allow(browser.sign_in(browser.authorize(**params), "hana", PASSWORD))
        code = redirect_params(page)["code"]
    form = {"grant_type": "authorization_code", "code": code, "code_verifier": verifier, "redirect_uri": APP}
    answer = httpx.post(idp.issuer + "/token", data=form, auth=(client["client_id"], client["client_secret"]))
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


def test_revoking_a_users_token_families_closes_the_gateway_to_their_tokens(
    tmp_path: Path, gateway_factory: Any, upstream: RecordingUpstream, held_port: int
) -> None:
    admin_port = held_port  # the gateway's admin API, where the provider pushes revocations
    token_file = str(tmp_path / "gateway-admin.token")
    config = identity_config(tmp_path / "idp")
    config["identity"]["revocation_push"] = [f"http://127.0.0.1:{admin_port}"]
    config["identity"]["revocation_push_token_file"] = token_file
    idp = IdentityProcess(tmp_path / "idp", config)
    idp.create_role("staff", "orders:read")
    user_id = idp.create_user("hana", PASSWORD, "staff")
    web = idp.create_web_client("web", [APP], scopes=["orders:read"])
    idp.start()
    try:
        gateway = gateway_factory(
            upstream,
            {
                "gateway": {
                    "jwt": {
                        "issuer": idp.issuer,
                        "jwks_url": idp.issuer + "/jwks",
                        "audiences": ["garrison"],
                    },
                    "admin": {"listen": f"127.0.0.1:{admin_port}", "token_file": token_file},
                },
                "routes": [
                    {
                        "match": {"path": "/orders", "prefix": True},
                        "service": "rec",
                        "auth": {"require": "jwt", "scopes": ["orders:read"]},
                    }
                ],
            },
        )
        tokens = user_tokens(idp, web)

        def status() -> int:
            return http_call(
                gateway.port, "/orders/1", {"Authorization": f"Bearer {tokens['access_token']}"}
            )[0]

        assert status() == 200  # accepted, and now in the gateway's token cache
        admin_token = (Path(idp.config["state_dir"]) / "admin.token").read_text().strip()
        answer = httpx.post(
            f"http://{idp.admin_address}/token-families",
            params={"subject": user_id, "reason": "refresh token reuse"},
            headers={"authorization": f"Bearer {admin_token}"},
        )
        assert answer.json() == {"revoked_families": 1, "revoked_tokens": 1}
        assert wait_until(lambda: status() == 401, timeout=5.0, interval=0.05)
        refresh = {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]}
        refused = httpx.post(
            idp.issuer + "/token", data=refresh, auth=(web["client_id"], web["client_secret"])
        )
        assert refused.status_code == 400 and refused.json()["error"] == "invalid_grant"
    finally:
        idp.stop()
