"""The vault's audit events for the collector, from real requests: the vault's component serves over
real TLS (in a thread, a recording emitter injected), hvac speaks to it as token, AppRole and
certificate clients. Each secret access is ``secret.*`` with the path as target and ``denied`` when
the token's policies do not cover it; each login is ``auth.login``; no secret value or token appears
in any event (canaries)."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hvac
import hvac.exceptions
import pytest
import uvloop
import yaml
from cryptography.hazmat.primitives import serialization
from recording_emitter import RecordingEmitter
from vault_harness import vault_config

from garrison.config.loader import load_config
from garrison.pki.authority import (
    Authority,
    new_intermediate,
    new_key,
    new_root,
    pem,
    request_for,
    sign_workload,
)
from garrison.vault.component import VaultComponent

pytestmark = pytest.mark.process

TD = "shop.local"
ORDERS = f"spiffe://{TD}/svc/orders"


@dataclass
class Vault:
    url: str
    ca_file: str
    root: str
    emitter: RecordingEmitter
    issuing: Authority
    directory: Path
    canaries: list[str]

    def client(self, token: str | None = None, cert: tuple[str, str] | None = None) -> hvac.Client:
        return hvac.Client(url=self.url, token=token, verify=self.ca_file, cert=cert, timeout=15)

    def mint(self, spiffe_id: str) -> tuple[str, str]:
        key = new_key()
        now = dt.datetime.now(dt.UTC)
        certificate = sign_workload(self.issuing, request_for(key), spiffe_id, now=now)
        cert_file, key_file = self.directory / f"{certificate.serial_number:x}.pem", self.directory / "w.key"
        cert_file.write_bytes(pem(certificate, self.issuing.certificate))
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


@pytest.fixture(scope="module")
def vault(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Vault]:
    directory = tmp_path_factory.mktemp("vault-events")
    issuing = new_intermediate(new_root(TD, now=dt.datetime.now(dt.UTC)), TD, now=dt.datetime.now(dt.UTC))
    ca_dir = directory / "state" / "ca"
    ca_dir.mkdir(parents=True, mode=0o700)
    (ca_dir / "bundle.pem").write_bytes(pem(issuing.parents[-1]))
    config = vault_config(directory)
    config["trust_domain"] = TD
    config["services"] = {"orders": {"targets": ["http://127.0.0.1:7001"], "secrets": ["secret/orders/*"]}}
    (directory / "garrison.yaml").write_text(yaml.safe_dump(config))
    emitter = RecordingEmitter()
    component = VaultComponent(load_config(directory / "garrison.yaml"), emitter)
    loop = uvloop.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="vault", daemon=True)
    thread.start()
    address = asyncio.run_coroutine_threadsafe(component.start(), loop).result(60)["vault"]
    try:
        ca_file = str(directory / "state" / "vault" / "tls" / "ca.pem")
        client = hvac.Client(url=f"https://{address}", verify=ca_file, timeout=15)
        init = client.sys.initialize(secret_shares=1, secret_threshold=1)
        client.sys.submit_unseal_key(init["keys"][0])
        canaries = [init["root_token"], init["keys"][0]]
        yield Vault(f"https://{address}", ca_file, init["root_token"], emitter, issuing, directory, canaries)
    finally:
        try:
            asyncio.run_coroutine_threadsafe(component.drain(), loop).result(30)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)
            loop.run_until_complete(asyncio.sleep(0.2))
            loop.close()
    assert emitter.started and emitter.closed


def secret_value(vault: Vault) -> str:
    value = "canary-" + secrets.token_hex(8)
    vault.canaries.append(value)
    return value


def test_kv_reads_writes_lists_and_deletes(vault: Vault) -> None:
    root = vault.client(vault.root)
    root.secrets.kv.v2.create_or_update_secret("orders/db", secret={"password": secret_value(vault)})
    root.secrets.kv.v2.read_secret_version("orders/db", raise_on_deleted_version=True)
    root.secrets.kv.v2.list_secrets("orders")
    root.secrets.kv.v2.delete_latest_version_of_secret("orders/db")
    events = vault.emitter
    [write] = events.of("secret.write", target="secret/data/orders/db")
    assert (write.outcome, write.actor.subject, write.details["policies"]) == ("success", "root", "root")
    assert write.actor.ip == "127.0.0.1" and write.component == "vault" and write.request_id
    assert events.of("secret.read", target="secret/data/orders/db", outcome="success")
    assert events.of("secret.list", target="secret/metadata/orders", outcome="success")
    assert events.of("secret.delete", target="secret/data/orders/db", outcome="success")
    root.secrets.kv.v2.create_or_update_secret("orders/db", secret={"password": secret_value(vault)})


def test_a_read_outside_policy_is_denied_and_names_the_token(vault: Vault) -> None:
    root = vault.client(vault.root)
    root.sys.create_or_update_policy("reader", 'path "secret/data/orders/*" { capabilities = ["read"] }')
    created = root.auth.token.create(policies=["reader"], display_name="ci-job")
    token = created["auth"]["client_token"]
    vault.canaries.append(token)
    [login] = vault.emitter.of("auth.login", method="token", subject="root")
    assert login.details["token_policies"] == "default,reader" and login.outcome == "success"
    root.secrets.kv.v2.create_or_update_secret("payments/psp", secret={"key": secret_value(vault)})
    reader = vault.client(token)
    reader.secrets.kv.v2.read_secret_version("orders/db", raise_on_deleted_version=True)
    with pytest.raises(hvac.exceptions.Forbidden):
        reader.secrets.kv.v2.read_secret_version("payments/psp", raise_on_deleted_version=True)
    with pytest.raises(hvac.exceptions.Forbidden):
        vault.client("hvs.not-a-token").secrets.kv.v2.read_secret_version(
            "orders/db", raise_on_deleted_version=True
        )
    with pytest.raises(hvac.exceptions.Forbidden):
        reader.secrets.database.generate_credentials("orders")
    [denied] = vault.emitter.of("secret.read", target="secret/data/payments/psp", outcome="denied")
    assert denied.actor.subject == "token-ci-job" and denied.details["policies"] == "default,reader"
    assert denied.details["status"] == 403
    [anonymous] = vault.emitter.of("secret.read", outcome="denied", token="missing_or_invalid")
    assert anonymous.actor.subject is None and anonymous.target == "secret/data/orders/db"
    [creds] = vault.emitter.of("secret.read", target="database/creds/orders")
    assert (creds.outcome, creds.details["engine"], creds.actor.subject) == (
        "denied",
        "database",
        "token-ci-job",
    )


def test_approle_and_certificate_logins(vault: Vault) -> None:
    root = vault.client(vault.root)
    root.auth.approle.create_or_update_approle("batch", token_policies=["reader"])
    role_id = root.auth.approle.read_role_id("batch")["data"]["role_id"]
    secret_id = root.auth.approle.generate_secret_id("batch")["data"]["secret_id"]
    vault.canaries += [role_id, secret_id]
    batch = vault.client()
    batch.auth.approle.login(role_id, secret_id)
    vault.canaries.append(batch.token)
    with pytest.raises(hvac.exceptions.InvalidRequest):
        vault.client().auth.approle.login(role_id, "wrong-" + secret_id)
    [ok] = vault.emitter.of("auth.login", method="approle", outcome="success")
    assert ok.actor.subject == "approle-batch" and ok.details["role"] == "batch"
    assert vault.emitter.of("auth.login", method="approle", outcome="failure")

    orders = vault.client(cert=vault.mint(ORDERS))
    orders.auth.cert.login()
    vault.canaries.append(orders.token)
    orders.secrets.kv.v2.read_secret_version("orders/db", raise_on_deleted_version=True)
    with pytest.raises(hvac.exceptions.Forbidden):
        orders.secrets.kv.v2.read_secret_version("payments/psp", raise_on_deleted_version=True)
    [cert] = vault.emitter.of("auth.login", method="cert", outcome="success")
    assert (cert.actor.service, cert.actor.subject) == (ORDERS, "orders")
    [read] = vault.emitter.of("secret.read", target="secret/data/orders/db", service=ORDERS)
    assert read.outcome == "success" and read.actor.subject == "cert-orders"
    assert vault.emitter.of(
        "secret.read", target="secret/data/payments/psp", service=ORDERS, outcome="denied"
    )
    stranger = vault.client(cert=vault.mint(f"spiffe://{TD}/svc/stranger"))
    with pytest.raises(hvac.exceptions.InvalidRequest):
        stranger.auth.cert.login()
    [refused] = vault.emitter.of("auth.login", method="cert", outcome="failure")
    assert refused.actor.service == f"spiffe://{TD}/svc/stranger"


def test_no_secret_or_token_in_any_event(vault: Vault) -> None:
    """Last in the module: every secret and token the tests above handled, looked for everywhere."""
    wire = vault.emitter.wire()
    assert len(vault.emitter.events) >= 15 and len(vault.canaries) >= 10
    for canary in vault.canaries:
        assert canary not in wire, f"a secret ({canary[:6]}...) is in an audit event"
    assert "hvs." not in wire
    events: list[Any] = vault.emitter.events
    assert {event.type for event in events} >= {"secret.read", "secret.write", "secret.list", "auth.login"}
