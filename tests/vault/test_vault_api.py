"""`garrison vault` driven by hvac, as a user drives Vault: init 5/3, unseal, tokens and policies, KV v2,
errors in Vault's shape, the audit file. One vault for the module (over TLS, `auto` certificate)."""

from __future__ import annotations

import json
import ssl
from collections.abc import Iterator
from pathlib import Path

import httpx
import hvac
import hvac.exceptions
import pytest
from vault_harness import VaultProcess, init_and_unseal, vault_config

pytestmark = pytest.mark.process

ORDERS_POLICY = """
path "secret/data/orders/*" {
  capabilities = ["create", "read", "update", "patch"]
}
path "secret/metadata/orders/*" {
  capabilities = ["list", "read"]
}
"""


class Vault:
    def __init__(self, process: VaultProcess, keys: list[str], root: str) -> None:
        self.process, self.keys, self.root = process, keys, root

    def client(self, token: str | None = None) -> hvac.Client:
        return self.process.client(token if token is not None else self.root)

    def raw(self, method: str, path: str, token: str | None = None, **kwargs: object) -> httpx.Response:
        headers = {"X-Vault-Token": token if token is not None else self.root}
        headers.update(kwargs.pop("headers", {}))  # type: ignore[call-overload]
        with httpx.Client(
            verify=ssl.create_default_context(cafile=self.process.ca_file), timeout=15
        ) as client:
            return client.request(method, self.process.url + path, headers=headers, **kwargs)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def vault(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Vault]:
    directory = tmp_path_factory.mktemp("vault")
    process = VaultProcess(directory, vault_config(directory)).start()
    try:
        keys, root = init_and_unseal(process)
        yield Vault(process, keys, root)
    finally:
        process.stop()


def test_init_gave_five_distinct_shares_and_a_root_token(vault: Vault) -> None:
    assert len(vault.keys) == 5 and len(set(vault.keys)) == 5
    status = vault.client().sys.read_seal_status()
    assert status["t"] == 3 and status["n"] == 5 and status["initialized"] and not status["sealed"]
    assert vault.client().sys.is_initialized()
    with pytest.raises(hvac.exceptions.InvalidRequest, match="already initialized"):
        vault.client().sys.initialize(5, 3)
    assert vault.client().auth.token.lookup_self()["data"]["policies"] == ["root"]


def test_a_token_limited_to_orders_cannot_read_payments(vault: Vault) -> None:
    root = vault.client()
    root.sys.create_or_update_acl_policy("orders", ORDERS_POLICY)
    root.secrets.kv.v2.create_or_update_secret("orders/db", {"password": "orders-pw"})
    root.secrets.kv.v2.create_or_update_secret("payments/db", {"password": "payments-pw"})
    created = root.auth.token.create(policies=["orders"], ttl="1h")["auth"]
    assert created["policies"] == ["default", "orders"] and created["lease_duration"] == 3600
    orders = vault.client(created["client_token"])
    read = orders.secrets.kv.v2.read_secret_version("orders/db", raise_on_deleted_version=True)
    assert read["data"]["data"] == {"password": "orders-pw"}
    with pytest.raises(hvac.exceptions.Forbidden):
        orders.secrets.kv.v2.read_secret_version("payments/db", raise_on_deleted_version=True)
    with pytest.raises(hvac.exceptions.Forbidden):
        orders.secrets.kv.v2.create_or_update_secret("payments/db", {"password": "mine now"})
    with pytest.raises(hvac.exceptions.Forbidden):
        orders.secrets.kv.v2.delete_metadata_and_all_versions("orders/db")  # no delete capability
    with pytest.raises(hvac.exceptions.Forbidden):
        orders.sys.seal()
    assert orders.secrets.kv.v2.list_secrets("orders")["data"]["keys"] == ["db"]
    policy = root.sys.read_acl_policy("orders")["data"]
    assert policy["name"] == "orders" and "secret/data/orders/*" in policy["policy"]
    assert "orders" in root.sys.list_acl_policies()["data"]["keys"]


def test_token_lifecycle_lookup_renew_revoke(vault: Vault) -> None:
    root = vault.client()
    created = root.auth.token.create(
        policies=["default"], ttl="10m", explicit_max_ttl="20m", meta={"team": "ops"}
    )
    token, accessor = created["auth"]["client_token"], created["auth"]["accessor"]
    assert token.startswith("hvs.")
    own = vault.client(token)
    looked = own.auth.token.lookup_self()["data"]
    assert looked["accessor"] == accessor and looked["meta"] == {"team": "ops"} and 0 < looked["ttl"] <= 600
    assert looked["explicit_max_ttl"] == 1200 and looked["renewable"] and not looked["orphan"]
    by_accessor = root.auth.token.lookup_accessor(accessor)["data"]
    assert by_accessor["id"] == "" and by_accessor["policies"] == ["default"]
    assert root.auth.token.lookup(token)["data"]["id"] == token
    renewed = own.auth.token.renew_self(increment="1h")["auth"]
    assert 1100 <= renewed["lease_duration"] <= 1200  # capped by explicit_max_ttl
    with pytest.raises(hvac.exceptions.Forbidden):
        own.auth.token.create(policies=["orders"])  # the default policy does not allow creating tokens
    own.auth.token.revoke_self()
    with pytest.raises(hvac.exceptions.Forbidden):
        own.auth.token.lookup_self()


def test_revoking_a_parent_revokes_its_children(vault: Vault) -> None:
    root = vault.client()
    root.sys.create_or_update_acl_policy("minter", 'path "auth/token/create" { capabilities = ["update"] }')
    parent = root.auth.token.create(policies=["minter"], ttl="1h")["auth"]["client_token"]
    child = vault.client(parent).auth.token.create(policies=["minter"], ttl="1h")["auth"]["client_token"]
    with pytest.raises(hvac.exceptions.InvalidRequest, match="subset"):
        vault.client(parent).auth.token.create(policies=["orders"])
    root.auth.token.revoke(parent)
    for gone in (parent, child):
        with pytest.raises(hvac.exceptions.Forbidden):
            vault.client(gone).auth.token.lookup_self()


def test_what_is_not_supported_is_refused_not_ignored(vault: Vault) -> None:
    root = vault.client()
    for request in ({"num_uses": 1}, {"type": "batch"}, {"role_name": "r"}):
        with pytest.raises(hvac.exceptions.InvalidRequest, match="not supported"):
            root.adapter.post("/v1/auth/token/create", json=request)
    wrapped = vault.raw("GET", "/v1/secret/data/orders/db", headers={"X-Vault-Wrap-TTL": "60s"})
    assert wrapped.status_code == 400 and "wrapping" in wrapped.json()["errors"][0]
    with pytest.raises(hvac.exceptions.InvalidRequest, match="policy name"):
        root.sys.create_or_update_acl_policy("a b", 'path "x" { capabilities = ["read"] }')
    with pytest.raises(hvac.exceptions.InvalidRequest, match="cannot"):
        root.sys.delete_acl_policy("default")
    long_path = "/v1/secret/data/" + "x" * 800
    assert vault.raw("GET", long_path).status_code == 404


def test_bearer_header_and_bad_tokens(vault: Vault) -> None:
    path = "/v1/auth/token/lookup-self"
    with httpx.Client(verify=ssl.create_default_context(cafile=vault.process.ca_file), timeout=15) as client:
        answer = client.get(vault.process.url + path, headers={"Authorization": f"Bearer {vault.root}"})
        assert answer.status_code == 200
        for headers in ({}, {"X-Vault-Token": "hvs.nope"}, {"Authorization": "Bearer hvs.nope"}):
            refused = client.get(vault.process.url + path, headers=headers)
            assert refused.status_code == 403
            assert refused.headers["content-type"] == "application/json"
            assert refused.json() == {"errors": ["permission denied"]}
    with pytest.raises(hvac.exceptions.Forbidden):
        vault.client("hvs.not-a-token").secrets.kv.v2.read_secret_version(
            "orders/db", raise_on_deleted_version=True
        )


def test_errors_have_vault_status_codes_and_bodies(vault: Vault) -> None:
    unknown = vault.raw("GET", "/v1/nothing/here")
    assert unknown.status_code == 404 and "no handler for route" in unknown.json()["errors"][0]
    missing = vault.raw("GET", "/v1/secret/data/never/written")
    assert missing.status_code == 404 and missing.json() == {"errors": []}
    malformed = vault.raw("POST", "/v1/secret/data/x", content=b"{not json")
    assert malformed.status_code == 400 and malformed.json()["errors"][0].startswith("failed to parse JSON")
    assert vault.raw("OPTIONS", "/v1/secret/data/x").status_code == 405
    huge = vault.raw("POST", "/v1/secret/data/x", content=b'{"data":{"v":"' + b"x" * (1024 * 1024) + b'"}}')
    assert huge.status_code == 413 and huge.json()["errors"]
    outside = vault.raw("GET", "/v2/secret/data/x")
    assert outside.status_code == 404
    assert vault.raw("GET", "/v1/secret/data/x", token="").status_code == 403


@pytest.mark.filterwarnings("ignore:The raise_on_deleted_version:DeprecationWarning")  # inside hvac's patch()
def test_kv_v2_versions_cas_patch_delete_undelete_destroy(vault: Vault) -> None:
    kv = vault.client().secrets.kv.v2
    first = kv.create_or_update_secret("orders/api", {"key": "v1"}, cas=0)["data"]
    assert first["version"] == 1 and first["deletion_time"] == "" and not first["destroyed"]
    with pytest.raises(hvac.exceptions.InvalidRequest, match="check-and-set parameter did not match"):
        kv.create_or_update_secret("orders/api", {"key": "lost"}, cas=0)
    assert (
        kv.create_or_update_secret("orders/api", {"key": "v2", "extra": "e"}, cas=1)["data"]["version"] == 2
    )
    # hvac's patch() reads and writes back (a client-side update); the server-side PATCH is RFC 7396
    patched = vault.raw(
        "PATCH",
        "/v1/secret/data/orders/api",
        content=json.dumps({"data": {"key": "v3", "extra": None}}).encode(),
        headers={"Content-Type": "application/merge-patch+json", "X-Vault-Token": vault.root},
    )
    assert patched.status_code == 200 and patched.json()["data"]["version"] == 3
    read = kv.read_secret_version("orders/api", raise_on_deleted_version=True)["data"]
    assert read["data"] == {"key": "v3"} and read["metadata"]["version"] == 3
    old = kv.read_secret_version("orders/api", version=1, raise_on_deleted_version=True)["data"]
    assert old["data"] == {"key": "v1"}

    kv.delete_latest_version_of_secret("orders/api")
    with pytest.raises(hvac.exceptions.InvalidPath):
        kv.read_secret_version("orders/api", raise_on_deleted_version=True)
    deleted = kv.read_secret_version("orders/api", raise_on_deleted_version=False)
    assert deleted["data"]["data"] is None
    assert deleted["data"]["metadata"]["deletion_time"] != "" and deleted["data"]["metadata"]["version"] == 3
    raw = vault.raw("GET", "/v1/secret/data/orders/api")
    assert raw.status_code == 404 and set(raw.json()) >= {
        "request_id",
        "lease_id",
        "data",
        "wrap_info",
        "auth",
    }

    kv.undelete_secret_versions("orders/api", versions=[3])
    assert kv.read_secret_version("orders/api", raise_on_deleted_version=True)["data"]["data"] == {
        "key": "v3"
    }
    kv.delete_secret_versions("orders/api", versions=[1])
    kv.destroy_secret_versions("orders/api", versions=[2])
    versions = kv.read_secret_metadata("orders/api")["data"]["versions"]
    assert versions["1"]["deletion_time"] != "" and not versions["1"]["destroyed"]
    assert versions["2"]["destroyed"] and versions["2"]["deletion_time"] == ""
    kv.undelete_secret_versions("orders/api", versions=[2])  # a destroyed version stays destroyed
    destroyed = vault.raw("GET", "/v1/secret/data/orders/api?version=2")  # hvac raises: no deletion_time
    assert destroyed.status_code == 404
    assert destroyed.json()["data"]["data"] is None and destroyed.json()["data"]["metadata"]["destroyed"]


def test_kv_v2_metadata_cas_required_max_versions_custom_metadata(vault: Vault) -> None:
    kv = vault.client().secrets.kv.v2
    kv.update_metadata("orders/meta", max_versions=2, cas_required=True, custom_metadata={"owner": "orders"})
    with pytest.raises(hvac.exceptions.InvalidRequest, match="check-and-set parameter required"):
        kv.create_or_update_secret("orders/meta", {"v": "1"})
    for version in range(3):
        kv.create_or_update_secret("orders/meta", {"v": str(version + 1)}, cas=version)
    meta = kv.read_secret_metadata("orders/meta")["data"]
    assert (
        meta["current_version"] == 3
        and meta["oldest_version"] == 2
        and sorted(meta["versions"]) == ["2", "3"]
    )
    assert (
        meta["max_versions"] == 2 and meta["cas_required"] and meta["custom_metadata"] == {"owner": "orders"}
    )
    assert meta["delete_version_after"] == "0s"
    read = kv.read_secret_version("orders/meta", raise_on_deleted_version=True)["data"]
    assert read["metadata"]["custom_metadata"] == {"owner": "orders"}
    with pytest.raises(hvac.exceptions.InvalidPath):
        kv.read_secret_version("orders/meta", version=1, raise_on_deleted_version=True)
    kv.update_metadata("orders/meta", delete_version_after="1h")
    assert kv.read_secret_metadata("orders/meta")["data"]["delete_version_after"] == "1h0m0s"
    written = kv.create_or_update_secret("orders/meta", {"v": "4"}, cas=3)["data"]
    assert written["deletion_time"] != ""  # scheduled an hour from now
    kv.delete_metadata_and_all_versions("orders/meta")
    with pytest.raises(hvac.exceptions.InvalidPath):
        kv.read_secret_metadata("orders/meta")


def test_kv_v2_delete_version_after_expires_versions(vault: Vault) -> None:
    kv = vault.client().secrets.kv.v2
    kv.update_metadata("orders/short", delete_version_after="1ms")
    kv.create_or_update_secret("orders/short", {"v": "gone soon"})
    answer = kv.read_secret_version("orders/short", raise_on_deleted_version=False)
    assert answer["data"]["data"] is None and answer["data"]["metadata"]["deletion_time"] != ""


def test_kv_v2_list_with_the_list_verb_and_the_query(vault: Vault) -> None:
    kv = vault.client().secrets.kv.v2
    for path in ("team/a", "team/b", "team/sub/c"):
        kv.create_or_update_secret(path, {"v": path})
    assert kv.list_secrets("team")["data"]["keys"] == ["a", "b", "sub/"]
    by_query = vault.raw("GET", "/v1/secret/metadata/team/?list=true")
    assert by_query.status_code == 200 and by_query.json()["data"]["keys"] == ["a", "b", "sub/"]
    with pytest.raises(hvac.exceptions.InvalidPath):
        kv.list_secrets("nothing-here")


@pytest.mark.filterwarnings("ignore:The raise_on_deleted_version:DeprecationWarning")  # inside hvac's patch()
def test_kv_v2_patch_needs_merge_patch_json(vault: Vault) -> None:
    vault.client().secrets.kv.v2.create_or_update_secret("orders/p", {"a": "1"})
    wrong = vault.raw("PATCH", "/v1/secret/data/orders/p", json={"data": {"a": "2"}})
    assert wrong.status_code == 415
    merge = {"Content-Type": "application/merge-patch+json"}
    never = vault.raw("PATCH", "/v1/secret/data/orders/never", content=b'{"data":{"a":"1"}}', headers=merge)
    assert never.status_code == 404
    vault.client().secrets.kv.v2.patch("orders/p", {"b": "2"})  # hvac's read-then-write patch
    read = vault.client().secrets.kv.v2.read_secret_version("orders/p", raise_on_deleted_version=True)
    assert read["data"]["data"] == {"a": "1", "b": "2"}


def test_rotate_adds_a_keyring_term(vault: Vault) -> None:
    root = vault.client()
    before = root.sys.get_encryption_key_status()["data"]["term"]
    root.secrets.kv.v2.create_or_update_secret("orders/before-rotate", {"v": "old"})
    root.sys.rotate_encryption_key()
    assert root.sys.get_encryption_key_status()["data"]["term"] == before + 1
    root.secrets.kv.v2.create_or_update_secret("orders/after-rotate", {"v": "new"})
    for path, value in (("orders/before-rotate", "old"), ("orders/after-rotate", "new")):
        assert (
            root.secrets.kv.v2.read_secret_version(path, raise_on_deleted_version=True)["data"]["data"]["v"]
            == value
        )


def test_health_answers_get_and_head_with_vault_codes(vault: Vault) -> None:
    client = vault.client()
    assert client.sys.read_health_status(method="HEAD").status_code == 200
    health = client.sys.read_health_status(method="GET")
    assert health["initialized"] and not health["sealed"] and not health["standby"]
    assert vault.raw("GET", "/v1/sys/health?activecode=299").status_code == 299


def test_audit_lines_hold_no_secret_and_no_token_in_clear(vault: Vault) -> None:
    secret = "audit-canary-7f3a9c"
    root = vault.client()
    root.secrets.kv.v2.create_or_update_secret("orders/audited", {"password": secret})
    root.secrets.kv.v2.read_secret_version("orders/audited", raise_on_deleted_version=True)
    text = vault.process.audit_path.read_text()
    assert secret not in text and vault.root not in text
    assert not any(key in text for key in vault.keys)
    entries = [json.loads(line) for line in text.splitlines()]
    reads = [e for e in entries if e["request"]["path"] == "secret/data/orders/audited"]
    assert {e["type"] for e in reads} == {"request", "response"}
    response = next(e for e in reads if e["type"] == "response" and e["request"]["operation"] == "read")
    assert response["response"]["data"]["data"]["password"].startswith("hmac-sha256:")
    assert response["request"]["client_token"].startswith("hmac-sha256:")
    assert oct(Path(vault.process.audit_path).stat().st_mode & 0o777) == "0o600"
    log = vault.process.stderr_text()
    assert secret not in log and vault.root not in log and not any(key in log for key in vault.keys)
