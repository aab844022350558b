"""The seal and the storage under a real `garrison vault`: sealed answers, unseal progress and bad shares,
kill -9 after acknowledged writes, ciphertexts moved or modified in the database, the audit file failing
closed, dev mode, and PostgreSQL storage."""

from __future__ import annotations

import asyncio
import json
import secrets
import sqlite3
import ssl
import stat
from collections.abc import Iterator
from pathlib import Path

import httpx
import hvac.exceptions
import pytest
from sqlalchemy import text
from vault_harness import VaultProcess, init_and_unseal, vault_config

from garrison.store.db import make_engine
from garrison.store.migrations import schema_diff, upgrade
from garrison.vault.migrations import SCHEMA

pytestmark = pytest.mark.process


@pytest.fixture
def process(tmp_path: Path) -> Iterator[VaultProcess]:
    vault = VaultProcess(tmp_path, vault_config(tmp_path))
    try:
        yield vault
    finally:
        vault.stop()


def _get(vault: VaultProcess, path: str, method: str = "GET", token: str = "") -> httpx.Response:
    with httpx.Client(verify=ssl.create_default_context(cafile=vault.ca_file), timeout=15) as client:
        return client.request(method, vault.url + path, headers={"X-Vault-Token": token} if token else {})


def test_sealed_vault_answers_503_and_unseals_with_three_distinct_shares(process: VaultProcess) -> None:
    process.start()
    assert _get(process, "/v1/sys/health").status_code == 501
    assert _get(process, "/v1/sys/health", "HEAD").status_code == 501
    client = process.client()
    keys = client.sys.initialize(secret_shares=5, secret_threshold=3)["keys"]
    assert _get(process, "/v1/sys/health").status_code == 503
    assert _get(process, "/v1/sys/health", "HEAD").status_code == 503
    sealed = _get(process, "/v1/secret/data/x", token="hvs.anything")
    assert sealed.status_code == 503 and sealed.json() == {"errors": ["Vault is sealed"]}

    assert client.sys.submit_unseal_key(keys[0])["progress"] == 1
    assert client.sys.submit_unseal_key(keys[0])["progress"] == 1  # the same share twice counts once
    assert client.sys.submit_unseal_key(keys[1])["progress"] == 2
    assert client.sys.submit_unseal_key(reset=True)["progress"] == 0
    forged = bytes([bytes.fromhex(keys[2])[0]]) + secrets.token_bytes(32)
    client.sys.submit_unseal_key(keys[0])
    client.sys.submit_unseal_key(keys[1])
    with pytest.raises(hvac.exceptions.InvalidRequest, match="unseal failed"):
        client.sys.submit_unseal_key(forged.hex())
    status = client.sys.read_seal_status()
    assert status["sealed"] and status["progress"] == 0  # the failed attempt is forgotten
    with pytest.raises(hvac.exceptions.InvalidRequest):
        client.sys.submit_unseal_key("not hex or base64 !")
    result = client.sys.submit_unseal_keys(keys[2:5])
    assert not result["sealed"]
    assert _get(process, "/v1/sys/health").status_code == 200
    assert process.stop() == 0  # SIGTERM drains and exits 0
    assert '"event":"vault.stopped"' in process.stderr_text()


def test_a_file_without_a_vault_section_does_not_start(tmp_path: Path) -> None:
    process = VaultProcess(tmp_path, {"state_dir": str(tmp_path / "state")})
    with pytest.raises(RuntimeError, match="no `vault` section"):
        process.start()
    assert process.proc is not None and process.proc.returncode == 2


def test_seal_then_restart_keeps_the_data_sealed_until_unsealed(process: VaultProcess) -> None:
    process.start()
    keys, root = init_and_unseal(process)
    process.client(root).secrets.kv.v2.create_or_update_secret("app/db", {"password": "p1"})
    process.client(root).sys.seal()
    assert process.client().sys.is_sealed()
    with pytest.raises(hvac.exceptions.VaultDown):
        process.client(root).secrets.kv.v2.read_secret_version("app/db", raise_on_deleted_version=True)
    process.stop()
    process.start()
    assert process.client().sys.is_sealed()
    process.client().sys.submit_unseal_keys([keys[4], keys[2], keys[0]])
    read = process.client(root).secrets.kv.v2.read_secret_version("app/db", raise_on_deleted_version=True)
    assert read["data"]["data"] == {"password": "p1"}


def test_kill_9_after_acknowledged_writes_loses_nothing(process: VaultProcess) -> None:
    process.start()
    keys, root = init_and_unseal(process)
    kv = process.client(root).secrets.kv.v2
    written = {f"app/s{i}": {"value": secrets.token_hex(8)} for i in range(25)}
    for path, data in written.items():
        kv.create_or_update_secret(path, data)
    process.kill()
    process.start()
    process.client().sys.submit_unseal_keys(keys[:3])
    kv = process.client(root).secrets.kv.v2
    for path, data in written.items():
        assert kv.read_secret_version(path, raise_on_deleted_version=True)["data"]["data"] == data


def _database(process: VaultProcess) -> Path:
    return process.state_dir / "garrison.db"


def test_a_ciphertext_moved_or_modified_in_the_database_does_not_decrypt(process: VaultProcess) -> None:
    process.start()
    keys, root = init_and_unseal(process)
    kv = process.client(root).secrets.kv.v2
    kv.create_or_update_secret("orders/db", {"password": "orders-secret"})
    kv.create_or_update_secret("payments/db", {"password": "payments-secret"})
    kv.create_or_update_secret("other/db", {"password": "other-secret"})
    process.stop()
    with sqlite3.connect(_database(process)) as db:
        rows = dict(db.execute("SELECT path, value FROM vault_entries"))
        assert not any(b"secret" in bytes(value) for value in rows.values())  # nothing in clear
        # the attacker copies orders' ciphertext over payments', hoping the vault serves it there
        db.execute(
            "UPDATE vault_entries SET value = ? WHERE path = ?",
            (rows["kv/secret/data/orders/db#1"], "kv/secret/data/payments/db#1"),
        )
        tampered = bytearray(rows["kv/secret/data/other/db#1"])
        tampered[-3] ^= 0x40
        db.execute(
            "UPDATE vault_entries SET value = ? WHERE path = ?",
            (bytes(tampered), "kv/secret/data/other/db#1"),
        )
    process.start()
    process.client().sys.submit_unseal_keys(keys[:3])
    kv = process.client(root).secrets.kv.v2
    for moved in ("payments/db", "other/db"):
        answer = _get(process, f"/v1/secret/data/{moved}", token=root)
        assert answer.status_code == 500 and answer.json() == {"errors": ["internal error"]}
        assert "secret" not in answer.text.replace("internal error", "")
    assert kv.read_secret_version("orders/db", raise_on_deleted_version=True)["data"]["data"] == {
        "password": "orders-secret"
    }
    assert "orders-secret" not in process.stderr_text()


def test_the_audit_file_failing_closes_the_vault(tmp_path: Path) -> None:
    audit = tmp_path / "audit" / "vault.log"
    audit.parent.mkdir()
    process = VaultProcess(tmp_path / "v", vault_config(tmp_path / "v", audit={"file": str(audit)}))
    try:
        process.start()
        _, root = init_and_unseal(process)
        process.client(root).secrets.kv.v2.create_or_update_secret("app/x", {"v": "1"})
        audit.unlink()
        audit.mkdir()  # the audit file can no longer be written
        refused = _get(process, "/v1/secret/data/app/x", token=root)
        assert refused.status_code == 500 and "audited" in refused.json()["errors"][0]
        assert "vault.audit.write_failed" in process.stderr_text()
        audit.rmdir()
        assert _get(process, "/v1/secret/data/app/x", token=root).status_code == 200
        assert stat.S_IMODE(audit.stat().st_mode) == 0o600
    finally:
        process.stop()


def test_fail_open_when_configured(tmp_path: Path) -> None:
    audit = tmp_path / "audit.log"
    process = VaultProcess(
        tmp_path / "v", vault_config(tmp_path / "v", audit={"file": str(audit), "fail_closed": False})
    )
    try:
        process.start()
        _, root = init_and_unseal(process)
        audit.unlink()
        audit.mkdir()
        assert _get(process, "/v1/auth/token/lookup-self", token=root).status_code == 200
    finally:
        process.stop()


def test_dev_mode_unseals_itself_and_says_so(tmp_path: Path) -> None:
    process = VaultProcess(tmp_path, vault_config(tmp_path, dev=True))
    try:
        process.start()
        directory = process.state_dir / "vault"
        key_file, token_file = directory / "dev-unseal.key", directory / "dev-root.token"
        assert (
            stat.S_IMODE(key_file.stat().st_mode) == 0o600
            and stat.S_IMODE(token_file.stat().st_mode) == 0o600
        )
        warning = [
            json.loads(line) for line in process.stderr_text().splitlines() if "vault.dev_mode" in line
        ]
        assert warning and warning[0]["level"] == "warning" and "Never use dev mode" in warning[0]["message"]
        root = token_file.read_text().strip()
        process.client(root).secrets.kv.v2.create_or_update_secret("dev/x", {"v": "1"})
        process.stop()
        process.start()
        assert not process.client().sys.is_sealed()
        assert process.client(root).secrets.kv.v2.read_secret_version("dev/x", raise_on_deleted_version=True)
    finally:
        process.stop()


@pytest.fixture
def postgres_database(postgres_url: str) -> Iterator[str]:
    """A fresh PostgreSQL database for one vault, dropped afterwards."""
    name = f"garrison_vault_{secrets.token_hex(5)}"

    async def run(statement: str) -> None:
        engine = make_engine(postgres_url, Path("unused"))
        try:
            async with engine.connect() as connection:
                await connection.execution_options(isolation_level="AUTOCOMMIT")
                await connection.execute(text(statement))
        finally:
            await engine.dispose()

    asyncio.run(run(f"CREATE DATABASE {name}"))
    base = postgres_url.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        asyncio.run(run(f"DROP DATABASE {name} WITH (FORCE)"))


def test_postgresql_storage_survives_kill_9_and_holds_no_plaintext(
    tmp_path: Path, postgres_database: str
) -> None:
    process = VaultProcess(tmp_path, vault_config(tmp_path, database=postgres_database))
    try:
        process.start()
        keys, root = init_and_unseal(process)
        process.client(root).secrets.kv.v2.create_or_update_secret("pg/db", {"password": "pg-plaintext"})
        process.kill()
        process.start()
        process.client().sys.submit_unseal_keys(keys[1:4])
        read = process.client(root).secrets.kv.v2.read_secret_version("pg/db", raise_on_deleted_version=True)
        assert read["data"]["data"] == {"password": "pg-plaintext"}

        async def stored() -> list[bytes]:
            engine = make_engine(postgres_database, tmp_path)
            try:
                async with engine.connect() as connection:
                    rows = await connection.execute(text("SELECT value FROM vault_entries"))
                    return [bytes(row[0]) for row in rows]
            finally:
                await engine.dispose()

        values = asyncio.run(stored())
        assert values and not any(b"pg-plaintext" in value or root.encode() in value for value in values)
    finally:
        process.stop()


def test_the_vault_migration_creates_exactly_its_tables(backend: object) -> None:
    async def body(engine: object) -> list[object]:
        await upgrade(engine, SCHEMA)  # type: ignore[arg-type]
        await upgrade(engine, SCHEMA)  # type: ignore[arg-type]  # at head: nothing to do
        return await schema_diff(engine, SCHEMA)  # type: ignore[arg-type]

    async def main() -> list[object]:
        engine = backend.engine()  # type: ignore[attr-defined]
        try:
            return await body(engine)
        finally:
            await engine.dispose()

    assert asyncio.run(main()) == []
