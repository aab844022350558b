"""`auth/cert/login` with Garrison workload certificates minted at run time by garrison.pki.authority, and
the per-service policies garrison.yaml generates: hvac over real TLS against a real `garrison vault`.

The mesh CA's files are made the way `garrison ca init` lays them out (``state_dir/ca/bundle.pem``), with
a root and an intermediate held in the test, so certificates of any SPIFFE ID, lifetime or CA can be
minted on the spot."""

from __future__ import annotations

import datetime as dt
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hvac
import hvac.exceptions
import pytest
import requests
import yaml
from cryptography.hazmat.primitives import serialization
from vault_harness import VaultProcess, init_and_unseal, vault_config

from garrison.pki.authority import (
    Authority,
    new_intermediate,
    new_key,
    new_root,
    pem,
    request_for,
    sign_workload,
)

pytestmark = pytest.mark.process

TD = "shop.local"


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _ca() -> Authority:
    root = new_root(TD, now=_now())
    return new_intermediate(root, TD, now=_now())


def _config(directory: Path, orders_secrets: list[Any]) -> dict[str, Any]:
    config = vault_config(directory)
    config["trust_domain"] = TD
    config["services"] = {
        "orders": {"targets": ["http://127.0.0.1:7001"], "secrets": orders_secrets},
        "payments": {
            "targets": ["http://127.0.0.1:7002"],
            "secrets": [{"path": "secret/payments/*", "capabilities": ["read", "create", "update"]}],
        },
        "inventory": {"targets": ["http://127.0.0.1:7003"]},
    }
    return config


@dataclass
class Mesh:
    process: VaultProcess
    root_token: str
    issuing: Authority
    directory: Path

    def admin(self) -> hvac.Client:
        return self.process.client(self.root_token)

    def mint(
        self,
        spiffe_id: str,
        *,
        issuing: Authority | None = None,
        now: dt.datetime | None = None,
        lifetime: dt.timedelta = dt.timedelta(hours=1),
    ) -> tuple[str, str]:
        """A workload certificate (leaf + intermediate) and its key, as files (key 0600)."""
        issuing = issuing or self.issuing
        key = new_key()
        certificate = sign_workload(
            issuing, request_for(key), spiffe_id, now=now or _now(), lifetime=lifetime
        )
        name = f"{spiffe_id.rsplit('/', 1)[1]}-{certificate.serial_number:x}"
        cert_file, key_file = self.directory / f"{name}.pem", self.directory / f"{name}.key"
        cert_file.write_bytes(pem(certificate, issuing.certificate))
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(
                key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                )
            )
        return str(cert_file), str(key_file)

    def login(self, files: tuple[str, str]) -> hvac.Client:
        client = hvac.Client(url=self.process.url, verify=self.process.ca_file, cert=files, timeout=15)
        client.auth.cert.login()
        return client

    def wait_for_log(self, event: str, count: int, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while self.process.stderr_text().count(event) < count:
            assert time.monotonic() < deadline, f"no {event} in the vault's log"
            time.sleep(0.05)


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    directory = tmp_path_factory.mktemp("cert")
    issuing = _ca()
    ca_dir = directory / "state" / "ca"
    ca_dir.mkdir(parents=True, mode=0o700)
    (ca_dir / "bundle.pem").write_bytes(pem(issuing.parents[-1]))
    process = VaultProcess(directory, _config(directory, ["secret/orders/*"])).start()
    try:
        _, root = init_and_unseal(process, shares=1, threshold=1)
        admin = process.client(root)
        admin.secrets.kv.v2.create_or_update_secret("orders/db", secret={"password": "orders-pw"})
        admin.secrets.kv.v2.create_or_update_secret("payments/psp", secret={"api_key": "payments-key"})
        yield Mesh(process, root, issuing, directory)
    finally:
        process.stop()


def test_orders_logs_in_with_its_certificate_and_reads_only_its_secrets(mesh: Mesh) -> None:
    orders = mesh.login(mesh.mint(f"spiffe://{TD}/svc/orders"))
    auth = orders.auth.token.lookup_self()["data"]
    assert auth["policies"] == ["default", "svc-orders"] and auth["path"] == "auth/cert/login"
    assert auth["meta"]["spiffe_id"] == f"spiffe://{TD}/svc/orders"
    assert 3500 <= auth["ttl"] <= 3600  # the token lives no longer than the certificate
    read = orders.secrets.kv.v2.read_secret_version("orders/db", raise_on_deleted_version=True)
    assert read["data"]["data"] == {"password": "orders-pw"}
    assert orders.secrets.kv.v2.list_secrets("orders")["data"]["keys"] == ["db"]
    with pytest.raises(hvac.exceptions.Forbidden):
        orders.secrets.kv.v2.read_secret_version("payments/psp", raise_on_deleted_version=True)
    with pytest.raises(hvac.exceptions.Forbidden):
        orders.secrets.kv.v2.create_or_update_secret("orders/db", secret={"password": "overwritten"})
    payments = mesh.login(mesh.mint(f"spiffe://{TD}/svc/payments"))
    payments.secrets.kv.v2.create_or_update_secret("payments/psp", secret={"api_key": "rotated"})
    with pytest.raises(hvac.exceptions.Forbidden):
        payments.secrets.kv.v2.read_secret_version("orders/db", raise_on_deleted_version=True)


def test_generated_policy_text(mesh: Mesh) -> None:
    policy = mesh.admin().sys.read_policy("svc-payments")["data"]["rules"]
    assert 'path "secret/data/payments/*" {\n  capabilities = ["create", "read", "update"]\n}' in policy
    assert 'path "secret/metadata/payments/*" {\n  capabilities = ["list", "read"]\n}' in policy
    assert "svc-inventory" not in mesh.admin().sys.list_policies()["data"]["policies"]


def test_refused_certificates(mesh: Mesh) -> None:
    other_ca = _ca()
    for files in (
        mesh.mint(f"spiffe://{TD}/svc/orders", issuing=other_ca),  # another CA: the handshake fails
        mesh.mint(f"spiffe://{TD}/svc/orders", now=_now() - dt.timedelta(hours=2)),  # expired
    ):
        with pytest.raises(requests.exceptions.ConnectionError):  # SSLError is one
            mesh.login(files)
    for spiffe_id in (f"spiffe://{TD}/svc/inventory-x", f"spiffe://{TD}/svc/unknown"):
        with pytest.raises(hvac.exceptions.InvalidRequest) as refused:
            mesh.login(mesh.mint(spiffe_id))
        assert refused.value.errors == ["invalid certificate or no client certificate supplied"]
    with pytest.raises(hvac.exceptions.InvalidRequest):
        mesh.process.client().adapter.post("/v1/auth/cert/login")  # no certificate at all
    # A service without secrets logs in with the default policy only.
    inventory = mesh.login(mesh.mint(f"spiffe://{TD}/svc/inventory"))
    assert inventory.auth.token.lookup_self()["data"]["policies"] == ["default"]


def test_sighup_regenerates_the_policies(mesh: Mesh) -> None:
    config = _config(mesh.directory, ["secret/orders/*", "secret/payments/psp"])
    del config["services"]["payments"]["secrets"]
    mesh.process.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    reloads = mesh.process.stderr_text().count("vault.reloaded")
    assert mesh.process.proc is not None
    os.kill(mesh.process.proc.pid, signal.SIGHUP)
    mesh.wait_for_log("vault.reloaded", reloads + 1)
    orders = mesh.login(mesh.mint(f"spiffe://{TD}/svc/orders"))
    read = orders.secrets.kv.v2.read_secret_version("payments/psp", raise_on_deleted_version=True)
    assert read["data"]["data"] == {"api_key": "rotated"}
    assert "svc-payments" not in mesh.admin().sys.list_policies()["data"]["policies"]
    payments = mesh.login(mesh.mint(f"spiffe://{TD}/svc/payments"))
    assert payments.auth.token.lookup_self()["data"]["policies"] == ["default"]
    # An AppRole role can carry a generated policy: a service outside the mesh gets the same access.
    admin = mesh.admin()
    admin.auth.approle.create_or_update_approle("orders-batch", token_policies=["svc-orders"])
    secret_id = admin.auth.approle.generate_secret_id("orders-batch")["data"]["secret_id"]
    role_id = admin.auth.approle.read_role_id("orders-batch")["data"]["role_id"]
    batch = mesh.process.client()
    batch.auth.approle.login(role_id=role_id, secret_id=secret_id)
    assert batch.secrets.kv.v2.read_secret_version("orders/db", raise_on_deleted_version=True)


def test_a_new_root_in_the_bundle_is_followed_without_restart(mesh: Mesh) -> None:
    rotated = _ca()
    bundle = mesh.process.state_dir / "ca" / "bundle.pem"
    with pytest.raises(requests.exceptions.ConnectionError):
        mesh.login(mesh.mint(f"spiffe://{TD}/svc/orders", issuing=rotated))
    reloads = mesh.process.stderr_text().count("vault.tls.bundle_reloaded")
    bundle.write_bytes(bundle.read_bytes() + pem(rotated.parents[-1]))
    mesh.wait_for_log("vault.tls.bundle_reloaded", reloads + 1)
    orders = mesh.login(mesh.mint(f"spiffe://{TD}/svc/orders", issuing=rotated))
    assert orders.auth.token.lookup_self()["data"]["policies"] == ["default", "svc-orders"]
    mesh.login(mesh.mint(f"spiffe://{TD}/svc/orders"))  # the old root is still trusted (overlap)
