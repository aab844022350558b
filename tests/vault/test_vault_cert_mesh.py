"""Cert login in a real mesh: a `garrison ca serve` process issues the certificates, the vault joins as
``spiffe://shop.local/vault`` (GARRISON_JOIN_TOKEN) and follows the CA's state, so a revoked identity
or a quarantined service is refused at once; reinstated, it logs in again."""

from __future__ import annotations

import datetime as dt
import json
import os
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import hvac
import hvac.exceptions
import pytest
from ca_harness import CaProcess
from cryptography.hazmat.primitives import serialization
from vault_harness import VaultProcess, init_and_unseal

from garrison.pki.authority import new_intermediate, new_key, new_root, pem, request_for, sign_workload

pytestmark = pytest.mark.process

TD = "shop.local"


@dataclass
class Mesh:
    ca: CaProcess
    vault: VaultProcess
    root: str
    directory: Path

    @property
    def bundle(self) -> str:
        return str(self.ca.bundle_file)

    def joined(self, service: str) -> tuple[str, str]:
        """A workload certificate for ``service`` from the CA (join token, CSR), as chain and key files."""
        key = new_key()
        csr = request_for(key).public_bytes(serialization.Encoding.PEM).decode()
        issued = self.ca.api("POST", "/v1/join", {"token": self.ca.join_token(service), "csr": csr})
        assert issued.status_code == 200, issued.text
        cert_file, key_file = self.directory / f"{service}.pem", self.directory / f"{service}.key"
        cert_file.write_text(issued.json()["certificate_chain"])
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
        client = hvac.Client(url=self.vault.url, verify=self.bundle, cert=files, timeout=15)
        client.auth.cert.login()
        return client

    def wait_for_state(self, revoked: int, quarantined: int, timeout: float = 20.0) -> None:
        """Until the last state the vault logged has these counts (the vault logs each one it gets)."""
        deadline = time.monotonic() + timeout
        while True:
            states = [
                json.loads(line)
                for line in self.vault.stderr_text().splitlines()
                if '"vault.cert.mesh_state"' in line
            ]
            if states and (states[-1]["revoked"], states[-1]["quarantined"]) == (revoked, quarantined):
                return
            assert time.monotonic() < deadline, "the vault did not get the CA's new state"
            time.sleep(0.05)


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    directory = tmp_path_factory.mktemp("cert-mesh")
    ca = CaProcess(directory / "ca").init().start()
    try:
        spiffe_id = urllib.parse.quote(f"spiffe://{TD}/vault", safe="")
        token = ca.admin("POST", f"/join-tokens?spiffe_id={spiffe_id}&ttl=10m").json()["token"]
        config = {
            "state_dir": str(ca.state_dir),  # the CA's: its bundle, and the vault's certificate from it
            "trust_domain": TD,
            "services": {
                "orders": {"targets": ["http://127.0.0.1:9"], "secrets": ["secret/orders/*"]},
                "payments": {"targets": ["http://127.0.0.1:9"], "secrets": ["secret/payments/*"]},
            },
            "mesh": {"ca": {"url": ca.url}},
            "vault": {"listen": "127.0.0.1:0"},
        }
        vault = VaultProcess(directory / "vault", config)
        os.environ["GARRISON_JOIN_TOKEN"] = token  # the vault process inherits it; spent at its start
        try:
            vault.start()
        finally:
            del os.environ["GARRISON_JOIN_TOKEN"]
        try:
            admin = hvac.Client(url=vault.url, verify=str(ca.bundle_file), timeout=15)
            result = admin.sys.initialize(secret_shares=1, secret_threshold=1)
            admin.sys.submit_unseal_key(result["keys"][0])
            admin.token = result["root_token"]
            admin.secrets.kv.v2.create_or_update_secret("orders/db", secret={"password": "orders-pw"})
            yield Mesh(ca, vault, result["root_token"], directory)
        finally:
            vault.stop()
    finally:
        ca.stop()


def test_a_service_joined_at_the_ca_logs_in_and_reads_its_secret(mesh: Mesh) -> None:
    orders = mesh.login(mesh.joined("orders"))
    read = orders.secrets.kv.v2.read_secret_version("orders/db", raise_on_deleted_version=True)
    assert read["data"]["data"] == {"password": "orders-pw"}
    assert (mesh.ca.state_dir / "vault" / "identity" / "identity.pem").exists()


def test_revoked_identity_and_quarantined_service_are_refused(mesh: Mesh) -> None:
    orders, payments = mesh.joined("orders"), mesh.joined("payments")
    mesh.login(orders)
    assert mesh.ca.admin("POST", "/revocations?service=orders&reason=test").status_code == 200
    mesh.wait_for_state(revoked=1, quarantined=0)
    with pytest.raises(hvac.exceptions.InvalidRequest) as refused:
        mesh.login(orders)  # its certificate is still valid: the CA's state says no
    assert refused.value.errors == ["invalid certificate or no client certificate supplied"]
    mesh.login(payments)
    assert mesh.ca.admin("POST", "/quarantine?service=payments&reason=test").status_code == 200
    mesh.wait_for_state(revoked=1, quarantined=1)
    with pytest.raises(hvac.exceptions.InvalidRequest):
        mesh.login(payments)
    assert mesh.ca.admin("DELETE", "/revocations?service=orders").status_code == 200
    assert mesh.ca.admin("DELETE", "/quarantine?service=payments").status_code == 200
    mesh.wait_for_state(revoked=0, quarantined=0)
    mesh.login(orders)
    mesh.login(payments)


def test_without_a_mesh_identity_the_vault_serves_but_refuses_cert_logins(tmp_path: Path) -> None:
    """Mesh configured, no join token and no saved identity: tokens still work; cert logins are 503."""
    now = dt.datetime.now(dt.UTC)
    issuing = new_intermediate(new_root(TD, now=now), TD, now=now)
    (tmp_path / "state" / "ca").mkdir(parents=True)
    (tmp_path / "state" / "ca" / "bundle.pem").write_bytes(pem(issuing.parents[-1]))
    config = {
        "state_dir": str(tmp_path / "state"),
        "trust_domain": TD,
        "services": {"orders": {"targets": ["http://127.0.0.1:9"], "secrets": ["secret/orders/*"]}},
        "mesh": {"ca": {"url": "https://127.0.0.1:9"}},  # nothing listens there
        "vault": {"listen": "127.0.0.1:0"},
    }
    vault = VaultProcess(tmp_path / "vault", config).start()
    try:
        assert "vault.mesh.no_identity" in vault.stderr_text()
        _, root = init_and_unseal(vault, shares=1, threshold=1)
        assert vault.client(root).auth.token.lookup_self()["data"]["policies"] == ["root"]
        key = new_key()
        certificate = sign_workload(issuing, request_for(key), f"spiffe://{TD}/svc/orders", now=now)
        files = (tmp_path / "orders.pem", tmp_path / "orders.key")
        files[0].write_bytes(pem(certificate, issuing.certificate))
        files[1].write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        files[1].chmod(0o600)
        client = hvac.Client(url=vault.url, verify=vault.ca_file, cert=(str(files[0]), str(files[1])))
        with pytest.raises(hvac.exceptions.VaultDown):
            client.auth.cert.login()
    finally:
        vault.stop()
