"""garrison.yaml's `services.<name>.secrets`: what `garrison check` accepts and refuses, and the policy
text generated from it (no process: the model and the generator are plain code)."""

from __future__ import annotations

import asyncio
import datetime as dt
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from vault_harness import GARRISON

from garrison.config.loader import ConfigError, load_config
from garrison.pki.authority import new_intermediate, new_key, new_root, pem, request_for, sign_workload
from garrison.pki.workload_types import MeshState
from garrison.vault.answers import Call, VaultError
from garrison.vault.cert_auth import CertLogin
from garrison.vault.policy import Acl, parse_policy
from garrison.vault.service_policies import ServicePolicies, policy_text


def _file(tmp_path: Path, secrets: list[Any]) -> Path:
    config = {
        "trust_domain": "shop.local",
        "services": {"orders": {"targets": ["http://127.0.0.1:7001"], "secrets": secrets}},
    }
    path = tmp_path / "garrison.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.parametrize(
    ("secrets", "message"),
    [
        (["sys/policy/*"], "sys/ and auth/ cannot be granted"),
        (["auth/token/create"], "sys/ and auth/ cannot be granted"),
        (["secret/"], "name a path below the mount"),
        (["secret/orders/../payments"], "is not a name"),
        (["secret/or*ders/x"], "is not a name"),
        ([{"path": "secret/orders/*", "capabilities": ["sudo"]}], "capabilities"),
        ([{"path": "secret/orders/*", "capabilities": []}], "capabilities"),
    ],
)
def test_check_refuses_bad_secret_grants(tmp_path: Path, secrets: list[Any], message: str) -> None:
    with pytest.raises(ConfigError) as refused:
        load_config(_file(tmp_path, secrets))
    assert message in str(refused.value)


def test_garrison_check_names_the_bad_grant(tmp_path: Path) -> None:
    checked = subprocess.run(
        [str(GARRISON), "check", "-c", str(_file(tmp_path, ["sys/seal"]))],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert checked.returncode != 0
    assert "services.orders.secrets" in checked.stdout + checked.stderr


def test_generated_policy_decides_as_intended(tmp_path: Path) -> None:
    secrets = [
        "secret/orders/*",
        {"path": "secret/shared/config", "capabilities": ["read", "update", "delete"]},
        "database/creds/orders",
        {"path": "transit/encrypt/+", "capabilities": ["update"]},
    ]
    loaded = load_config(_file(tmp_path, secrets))
    services = ServicePolicies.from_config(loaded.config)
    assert services.services == {"spiffe://shop.local/svc/orders": "orders"}
    assert services.policies_for("orders") == ["default", "svc-orders"]
    text = services.policies["svc-orders"]
    assert text == policy_text("orders", loaded.config.services["orders"].secrets)
    acl = Acl([parse_policy("svc-orders", text)])
    assert acl.allows("secret/data/orders/db", "read")
    assert not acl.allows("secret/data/orders/db", "update")
    assert acl.allows("secret/metadata/orders/", "list")
    assert not acl.allows("secret/data/payments/psp", "read")
    assert acl.allows("secret/data/shared/config", "update") and acl.allows(
        "secret/delete/shared/config", "update"
    )
    assert not acl.allows("secret/metadata/shared/config", "delete")  # delete is versions, not the history
    assert acl.allows("database/creds/orders", "read")
    assert acl.allows("transit/encrypt/orders-key", "update") and not acl.allows(
        "transit/decrypt/x", "update"
    )
    assert not acl.allows("sys/policy/svc-orders", "update")


def _login_call(certificate_pem: str) -> Call:
    return Call(
        "POST", "create-or-update", "auth/cert/login", {}, {}, "", "127.0.0.1", "r", "", certificate_pem
    )


def test_cert_login_fails_closed_until_the_mesh_state_is_known(tmp_path: Path) -> None:
    """No process: CertLogin's decision, with the certificate the handshake would have verified."""
    now = dt.datetime.now(dt.UTC)
    issuing = new_intermediate(new_root("shop.local", now=now), "shop.local", now=now)
    key = new_key()
    certificate = sign_workload(issuing, request_for(key), "spiffe://shop.local/svc/orders", now=now)
    loaded = load_config(_file(tmp_path, ["secret/orders/*"]))
    login = CertLogin(ServicePolicies.from_config(loaded.config), 3600.0, time.time, follows_mesh=True)
    tokens = _NoTokens()
    with pytest.raises(VaultError) as unknown:
        asyncio.run(login.login(tokens, _login_call(pem(certificate).decode())))  # type: ignore[arg-type]
    assert unknown.value.status == 503
    login.apply_state(MeshState(1, b"", frozenset({"spiffe://shop.local/svc/orders"}), frozenset()))
    with pytest.raises(VaultError) as revoked:
        asyncio.run(login.login(tokens, _login_call(pem(certificate).decode())))  # type: ignore[arg-type]
    assert revoked.value.status == 400
    expired = sign_workload(
        issuing, request_for(key), "spiffe://shop.local/svc/orders", now=now - dt.timedelta(hours=2)
    )
    login.apply_state(MeshState(2, b"", frozenset(), frozenset()))
    with pytest.raises(VaultError) as late:  # a keep-alive connection can outlive its certificate
        asyncio.run(login.login(tokens, _login_call(pem(expired).decode())))  # type: ignore[arg-type]
    assert late.value.status == 400
    assert not tokens.created


class _NoTokens:
    """Stands for the token store: these logins must be refused before any token is made."""

    max_ttl = 3600.0

    def __init__(self) -> None:
        self.created = False

    async def create_login(self, *args: object) -> None:
        self.created = True
