"""AppRole driven by hvac over TLS, as a deployment tool and a machine use it: roles, role-id, secret-id
(single use, lookup, destroy), login, and Vault's answers to wrong credentials. One vault for the module."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import hvac
import hvac.exceptions
import pytest
from vault_harness import VaultProcess, init_and_unseal, vault_config

pytestmark = pytest.mark.process

READER = 'path "secret/data/app/*" {\n  capabilities = ["read"]\n}\n'


@pytest.fixture(scope="module")
def vault(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[VaultProcess, str]]:
    directory = tmp_path_factory.mktemp("approle")
    process = VaultProcess(directory, vault_config(directory)).start()
    try:
        _, root = init_and_unseal(process, shares=1, threshold=1)
        admin = process.client(root)
        admin.sys.create_or_update_policy("app-reader", READER)
        admin.secrets.kv.v2.create_or_update_secret("app/db", secret={"password": "s3cret-pw"})
        yield process, root
    finally:
        process.stop()


def _role_id(admin: hvac.Client, role: str) -> str:
    return str(admin.auth.approle.read_role_id(role)["data"]["role_id"])


def test_role_crud_and_listing(vault: tuple[VaultProcess, str]) -> None:
    process, root = vault
    admin = process.client(root)
    admin.auth.approle.create_or_update_approle(
        "crud", token_policies=["app-reader"], token_ttl="10m", token_max_ttl="1h", secret_id_ttl="5m"
    )
    data = admin.auth.approle.read_role("crud")["data"]
    assert data["token_policies"] == ["app-reader"]
    assert (data["token_ttl"], data["token_max_ttl"], data["secret_id_ttl"]) == (600, 3600, 300)
    assert data["bind_secret_id"] is True and data["secret_id_num_uses"] == 0
    assert "crud" in admin.auth.approle.list_roles()["data"]["keys"]
    admin.auth.approle.delete_role("crud")
    with pytest.raises(hvac.exceptions.InvalidPath):
        admin.auth.approle.read_role("crud")


def test_login_gives_a_token_with_the_role_policies(vault: tuple[VaultProcess, str]) -> None:
    process, root = vault
    admin = process.client(root)
    admin.auth.approle.create_or_update_approle("app", token_policies=["app-reader"], token_ttl="15m")
    secret = admin.auth.approle.generate_secret_id("app")["data"]
    machine = process.client()
    answer = machine.auth.approle.login(role_id=_role_id(admin, "app"), secret_id=secret["secret_id"])
    auth = answer["auth"]
    assert auth["policies"] == ["app-reader", "default"] and auth["token_policies"] == auth["policies"]
    assert auth["lease_duration"] == 900 and auth["renewable"] is True and auth["accessor"]
    assert auth["metadata"] == {"role_name": "app"} and auth["orphan"] is True
    assert machine.token == auth["client_token"]
    read = machine.secrets.kv.v2.read_secret_version("app/db", raise_on_deleted_version=True)
    assert read["data"]["data"] == {"password": "s3cret-pw"}
    with pytest.raises(hvac.exceptions.Forbidden):
        machine.sys.list_policies()
    assert machine.auth.token.lookup_self()["data"]["path"] == "auth/approle/login"


def test_single_use_secret_id_is_refused_the_second_time(vault: tuple[VaultProcess, str]) -> None:
    process, root = vault
    admin = process.client(root)
    admin.auth.approle.create_or_update_approle("once", token_policies=["app-reader"], secret_id_num_uses=1)
    secret_id = admin.auth.approle.generate_secret_id("once")["data"]["secret_id"]
    role_id = _role_id(admin, "once")
    process.client().auth.approle.login(role_id=role_id, secret_id=secret_id)
    with pytest.raises(hvac.exceptions.InvalidRequest) as refused:
        process.client().auth.approle.login(role_id=role_id, secret_id=secret_id)
    assert refused.value.errors == ["invalid role or secret ID"]


def test_wrong_credentials_answer_as_vault(vault: tuple[VaultProcess, str]) -> None:
    process, root = vault
    admin = process.client(root)
    admin.auth.approle.create_or_update_approle("wrong", token_policies=["app-reader"])
    role_id = _role_id(admin, "wrong")
    good = admin.auth.approle.generate_secret_id("wrong")["data"]["secret_id"]
    for rid, sid in ((role_id, "not-the-secret"), ("no-such-role-id", good)):
        with pytest.raises(hvac.exceptions.InvalidRequest) as refused:
            process.client().auth.approle.login(role_id=rid, secret_id=sid)
        assert refused.value.errors == ["invalid role or secret ID"]
    with pytest.raises(hvac.exceptions.InvalidRequest) as missing:
        process.client().adapter.post("/v1/auth/approle/login", json={"role_id": role_id})
    assert missing.value.errors == ["missing secret_id"]
    # A token that the role's policies do not cover cannot manage the role (default deny).
    reader = admin.auth.token.create(policies=["app-reader"])["auth"]["client_token"]
    with pytest.raises(hvac.exceptions.Forbidden):
        process.client(reader).auth.approle.generate_secret_id("wrong")


def test_secret_id_lookup_list_and_destroy(vault: tuple[VaultProcess, str]) -> None:
    process, root = vault
    admin = process.client(root)
    admin.auth.approle.create_or_update_approle("ops", token_policies=["app-reader"], secret_id_num_uses=3)
    made = admin.auth.approle.generate_secret_id("ops", metadata={"host": "build-1"})["data"]
    assert made["secret_id_num_uses"] == 3 and made["secret_id_ttl"] == 0
    looked = admin.auth.approle.read_secret_id("ops", made["secret_id"])["data"]
    assert looked["secret_id_accessor"] == made["secret_id_accessor"]
    assert looked["metadata"] == {"host": "build-1"} and looked["secret_id_num_uses"] == 3
    by_accessor = admin.auth.approle.read_secret_id_accessor("ops", made["secret_id_accessor"])["data"]
    assert by_accessor["secret_id_accessor"] == made["secret_id_accessor"]
    assert admin.auth.approle.list_secret_id_accessors("ops")["data"]["keys"] == [made["secret_id_accessor"]]
    process.client().auth.approle.login(role_id=_role_id(admin, "ops"), secret_id=made["secret_id"])
    assert admin.auth.approle.read_secret_id("ops", made["secret_id"])["data"]["secret_id_num_uses"] == 2
    admin.auth.approle.destroy_secret_id("ops", made["secret_id"])
    assert admin.auth.approle.read_secret_id("ops", made["secret_id"]).status_code == 204
    with pytest.raises(hvac.exceptions.InvalidRequest):
        process.client().auth.approle.login(role_id=_role_id(admin, "ops"), secret_id=made["secret_id"])
    with pytest.raises(hvac.exceptions.InvalidPath):
        admin.auth.approle.generate_secret_id("no-such-role")


def test_custom_role_id_and_auth_methods(vault: tuple[VaultProcess, str]) -> None:
    process, root = vault
    admin = process.client(root)
    admin.auth.approle.create_or_update_approle("custom", token_policies=["app-reader"])
    admin.auth.approle.update_role_id("custom", "orders-batch")
    assert _role_id(admin, "custom") == "orders-batch"
    secret_id = admin.auth.approle.generate_secret_id("custom")["data"]["secret_id"]
    process.client().auth.approle.login(role_id="orders-batch", secret_id=secret_id)
    methods = admin.sys.list_auth_methods()
    assert {"token/", "approle/", "cert/"} <= set(methods["data"])
    assert methods["approle/"]["type"] == "approle"
    with pytest.raises(hvac.exceptions.InvalidRequest) as again:
        admin.sys.enable_auth_method("approle")
    assert again.value.errors == ["path is already in use at approle/"]


def test_no_secret_id_or_token_in_the_audit_file(vault: tuple[VaultProcess, str]) -> None:
    process, root = vault
    admin = process.client(root)
    admin.auth.approle.create_or_update_approle("audited", token_policies=["app-reader"])
    secret_id = admin.auth.approle.generate_secret_id("audited")["data"]["secret_id"]
    token = process.client().auth.approle.login(role_id=_role_id(admin, "audited"), secret_id=secret_id)
    client_token = token["auth"]["client_token"]
    text = process.audit_path.read_text()
    assert secret_id not in text and client_token not in text
    logins = [json.loads(line) for line in text.splitlines() if '"path":"auth/approle/login"' in line]
    sent = [
        entry["request"]["data"]["secret_id"] for entry in logins if "secret_id" in entry["request"]["data"]
    ]
    assert sent and all(value.startswith("hmac-sha256:") for value in sent)
    assert secret_id not in process.stderr_text()


def test_racing_logins_spend_a_single_use_secret_id_once(vault: tuple[VaultProcess, str]) -> None:
    process, root = vault
    admin = process.client(root)
    admin.auth.approle.create_or_update_approle("race", token_policies=["app-reader"], secret_id_num_uses=1)
    secret_id = admin.auth.approle.generate_secret_id("race")["data"]["secret_id"]
    role_id = _role_id(admin, "race")
    start = threading.Barrier(8)

    def attempt() -> bool:
        client = process.client()
        start.wait()
        try:
            client.auth.approle.login(role_id=role_id, secret_id=secret_id)
        except hvac.exceptions.InvalidRequest:
            return False
        return True

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: attempt(), range(8)))
    assert results.count(True) == 1
