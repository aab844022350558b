"""The identity provider's admin listener, on a real `garrison identity` process: /live and /ready
answer, /metrics counts what the provider did (tokens, errors, sign-ins, introspections, throttle
refusals) in an exposition promtool accepts, and the guard of admin/auth.py stands in front of it."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from identity_harness import Browser, IdentityProcess, identity_config, page_kind, pkce
from prometheus_client.parser import text_string_to_metric_families

from garrison.config.loader import ConfigError, parse_config

PASSWORD = "correct horse battery staple"
APP = "https://app.example/callback"


@pytest.fixture(scope="module")
def idp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[IdentityProcess]:
    directory = tmp_path_factory.mktemp("idp-admin")
    lockout = {"max_failures": 2, "ip_max_failures": 1000, "window": 300, "lock_for": 300}
    process = IdentityProcess(directory, identity_config(directory, lockout=lockout)).start()
    try:
        yield process
    finally:
        process.stop()


def admin_url(idp: IdentityProcess, path: str) -> str:
    assert idp.admin_address, idp.stderr_text()[-2000:]
    return f"http://{idp.admin_address}{path}"


def samples(idp: IdentityProcess) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(admin_url(idp, "/metrics")).text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(scraped: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return scraped.get((name, tuple(sorted(labels.items()))), 0.0)


def login_page(browser: Browser, client: dict[str, Any]) -> httpx.Response:
    params = {
        "response_type": "code",
        "client_id": client["client_id"],
        "redirect_uri": client["redirect_uri"],
        "scope": "openid",
        "state": "state-1",
        "code_challenge": pkce()[1],
        "code_challenge_method": "S256",
    }
    page = browser.authorize(**params)
    assert page_kind(page) == "login", page.text[:500]
    return page


@pytest.mark.process
def test_live_and_ready_answer(idp: IdentityProcess) -> None:
    live = httpx.get(admin_url(idp, "/live"))
    assert (live.status_code, live.text) == (200, "ok\n")
    ready = httpx.get(admin_url(idp, "/ready"))
    assert (ready.status_code, ready.text) == (200, "ready\n")
    assert ready.headers["x-content-type-options"] == "nosniff"
    assert httpx.post(admin_url(idp, "/nowhere"), headers=_token_header(idp)).status_code == 404


def _token_header(idp: IdentityProcess) -> dict[str, str]:
    token = (Path(idp.config["state_dir"]) / "admin.token").read_text().strip()
    return {"authorization": f"Bearer {token}"}


@pytest.mark.process
def test_the_guard_refuses_changes_without_the_token_foreign_origins_and_other_hosts(
    idp: IdentityProcess,
) -> None:
    url = admin_url(idp, "/live")
    assert httpx.post(url).status_code == 401
    assert httpx.get(url, headers={"origin": "https://evil.example"}).status_code == 403
    assert httpx.get(url, headers={"host": "evil.example"}).status_code == 421
    # With the shared admin token (the gateway's file: state_dir/admin.token) a change passes the
    # guard and reaches the API, which takes no POST on /live.
    assert httpx.post(url, headers=_token_header(idp)).status_code == 405


@pytest.mark.process
def test_metrics_count_tokens_sign_ins_introspections_and_refusals(idp: IdentityProcess) -> None:
    before = samples(idp)
    service = idp.create_client("metrics-svc", "--scope", "orders:read")
    idp.create_role("staff", "orders:read")
    idp.create_user("dana", PASSWORD, "staff")
    web = idp.create_web_client("metrics-web", [APP], scopes=["openid", "orders:read"])

    issued = idp.token(service)
    assert issued.status_code == 200, issued.text
    assert idp.token({**service, "client_secret": "wrong"}).status_code == 401
    credentials = (service["client_id"], service["client_secret"])
    token = issued.json()["access_token"]
    assert idp.post("/introspect", {"token": token}, credentials).json()["active"] is True
    assert idp.post("/introspect", {"token": "not-a-token"}, credentials).json()["active"] is False

    with Browser(idp.issuer) as browser:
        page = login_page(browser, web)
        assert browser.sign_in(page, "dana", PASSWORD).status_code == 200
    with Browser(idp.issuer) as browser:
        page = login_page(browser, web)
        for attempt in range(2):  # max_failures: the second failure locks the account
            assert browser.sign_in(page, "dana", f"wrong {attempt}").status_code == 401
        assert browser.sign_in(page, "dana", PASSWORD).status_code == 401  # refused unchecked

    after = samples(idp)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("garrison_identity_tokens_issued_total", grant="client_credentials") == 1
    assert moved("garrison_identity_token_errors_total", error="invalid_client") == 1
    assert moved("garrison_identity_introspections_total", result="active") == 1
    assert moved("garrison_identity_introspections_total", result="inactive") == 1
    assert moved("garrison_identity_logins_total", outcome="success") == 1
    assert moved("garrison_identity_logins_total", outcome="failure") == 2
    assert moved("garrison_identity_logins_total", outcome="locked") == 1
    assert moved("garrison_identity_throttle_refusals_total", limit="user") == 1


@pytest.mark.process
def test_promtool_accepts_the_exposition(idp: IdentityProcess, tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        if os.environ.get("CI") == "true":
            pytest.fail("promtool is missing on CI (apt-get install -y prometheus)")
        pytest.skip("promtool is not installed (Debian: apt-get install -y prometheus)")
    exposition = httpx.get(admin_url(idp, "/metrics")).content
    assert b"garrison_identity_tokens_issued" in exposition
    checked = subprocess.run(
        [promtool, "check", "metrics"], input=exposition, capture_output=True, timeout=60, check=False
    )
    assert checked.returncode == 0, checked.stdout.decode() + checked.stderr.decode()


def test_config_an_identity_admin_listener_off_loopback_needs_tls(tmp_path: Path) -> None:
    base = "identity:\n  tls: {insecure_disable: true}\n"
    with pytest.raises(ConfigError) as caught:
        parse_config(base + "  admin: {listen: 0.0.0.0:9902}\n", "garrison.yaml", tmp_path)
    [problem] = caught.value.problems
    assert problem.path == "identity.admin.listen" and "identity.admin.tls" in problem.message
    with_tls = "  admin: {listen: 0.0.0.0:9902, tls: {cert: a.pem, key: a.key}, token_file: t/admin.token}\n"
    identity = parse_config(base + with_tls, "garrison.yaml", tmp_path).config.identity
    assert identity is not None and identity.admin.tls is not None
    assert identity.admin.token_file == str(tmp_path.resolve() / "t" / "admin.token")
    default = parse_config(base, "garrison.yaml", tmp_path).config.identity
    assert default is not None
    assert (default.admin.listen, default.admin.token_file) == ("127.0.0.1:9902", None)
