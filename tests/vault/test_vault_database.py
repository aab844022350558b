"""The database engine against a real PostgreSQL, driven by hvac over TLS as a service drives Vault:
credentials that log in, renewals that move ``VALID UNTIL``, revocation and expiry that drop the role and
kill its sessions, leases that outlive a ``kill -9``, one service's credentials refused another's
database (PostgreSQL's own "permission denied"), policies, and no password in the audit file or the logs.

Each module run makes its own roles and databases (unique names) on GARRISON_TEST_POSTGRES_URL and drops
them at the end. The test server trusts local connections, so PostgreSQL does not check passwords here:
the tests check what the role *is* (exists, VALID UNTIL, sessions), not that the password is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import asyncpg
import hvac
import hvac.exceptions
import pytest
from vault_harness import VaultProcess, init_and_unseal, vault_config

pytestmark = pytest.mark.process
T = TypeVar("T")


@dataclass
class Postgres:
    host: str
    port: int
    admin_url: str
    tag: str
    root_user: str
    root_password: str
    issued: list[tuple[str, str]] = field(default_factory=list)  # (username, password) handed out

    def db(self, service: str) -> str:
        return f"gv_{service}_{self.tag}"

    def url(self, service: str) -> str:
        return f"postgresql://{{{{username}}}}:{{{{password}}}}@{self.host}:{self.port}/{self.db(service)}"

    def run(self, body: Callable[[asyncpg.Connection], Awaitable[T]], database: str | None = None) -> T:
        """``body`` on a superuser connection (the test's own, not the vault's)."""

        async def main() -> T:
            connection = await asyncpg.connect(self.admin_url, database=database)
            try:
                return await body(connection)
            finally:
                await connection.close()

        return asyncio.run(main())

    def role(self, name: str) -> dict[str, Any] | None:
        async def body(connection: asyncpg.Connection) -> dict[str, Any] | None:
            row = await connection.fetchrow(
                "SELECT rolname, rolcanlogin, rolvaliduntil FROM pg_roles WHERE rolname = $1", name
            )
            return dict(row) if row is not None else None

        return self.run(body)

    def wait_gone(self, name: str, timeout: float = 30.0) -> float:
        """Seconds until the role no longer exists (polled on the catalogue: nothing to wait on)."""
        start = time.monotonic()
        while self.role(name) is not None:
            if time.monotonic() - start > timeout:
                raise AssertionError(f"role {name} still exists after {timeout}s")
            time.sleep(0.05)
        return time.monotonic() - start

    async def login(self, username: str, password: str, service: str) -> asyncpg.Connection:
        return await asyncpg.connect(
            host=self.host, port=self.port, user=username, password=password, database=self.db(service)
        )


@pytest.fixture(scope="module")
def postgres(postgres_url: str) -> Iterator[Postgres]:
    parts = urlsplit(postgres_url)
    tag = secrets.token_hex(4)
    pg = Postgres(
        parts.hostname or "127.0.0.1",
        parts.port or 5432,
        postgres_url,
        tag,
        f"gv_root_{tag}",
        secrets.token_urlsafe(18),
    )
    root = pg.root_user

    async def setup(connection: asyncpg.Connection) -> None:
        await connection.execute(f"CREATE ROLE {root} SUPERUSER LOGIN PASSWORD '{pg.root_password}'")
        for service in ("orders", "payments"):
            await connection.execute(f"CREATE DATABASE {pg.db(service)} OWNER {root}")
            await connection.execute(f"REVOKE CONNECT ON DATABASE {pg.db(service)} FROM PUBLIC")

    async def tables(connection: asyncpg.Connection) -> None:
        await connection.execute(
            "CREATE TABLE charges (id int, amount int); INSERT INTO charges VALUES (1, 4200)"
        )
        await connection.execute(f"ALTER TABLE charges OWNER TO {root}")

    async def teardown(connection: asyncpg.Connection) -> None:
        for service in ("orders", "payments"):
            await connection.execute(f"DROP DATABASE IF EXISTS {pg.db(service)} WITH (FORCE)")
        for username, _ in pg.issued:
            await connection.execute(f'DROP ROLE IF EXISTS "{username}"')
        await connection.execute(f"DROP ROLE IF EXISTS gv_rot_{tag}")
        await connection.execute(f"DROP ROLE IF EXISTS {root}")

    async def ledger(connection: asyncpg.Connection) -> None:
        # Isolation by schema too: payments' ledger inside the orders database, granted to no one.
        await connection.execute("CREATE SCHEMA ledger; CREATE TABLE ledger.entries (id int)")
        await connection.execute(
            f"ALTER SCHEMA ledger OWNER TO {root}; ALTER TABLE ledger.entries OWNER TO {root}"
        )

    pg.run(setup)
    try:
        pg.run(tables, database=pg.db("payments"))
        pg.run(ledger, database=pg.db("orders"))
        yield pg
    finally:
        pg.run(teardown)


SERVICE_ROLE = """
CREATE ROLE "{{{{name}}}}" WITH LOGIN PASSWORD '{{{{password}}}}' VALID UNTIL '{{{{expiration}}}}';
GRANT CONNECT ON DATABASE {db} TO "{{{{name}}}}";
GRANT CREATE, USAGE ON SCHEMA public TO "{{{{name}}}}";
GRANT SELECT ON ALL TABLES IN SCHEMA public TO "{{{{name}}}}";
"""


def configure(client: hvac.Client, pg: Postgres, *, short_ttl: str = "2s") -> None:
    """Each service: its own connection (its own database) and role; ``<service>-short`` expires fast."""
    for service in ("orders", "payments"):
        client.secrets.database.configure(
            service,
            "postgresql-database-plugin",
            allowed_roles=[service, f"{service}-*"],
            connection_url=pg.url(service),
            username=pg.root_user,
            password=pg.root_password,
            max_open_connections=2,
        )
        statements = [SERVICE_ROLE.format(db=pg.db(service))]
        client.secrets.database.create_role(service, service, statements, default_ttl="1h", max_ttl="2h")
        client.secrets.database.create_role(
            f"{service}-short", service, statements, default_ttl=short_ttl, max_ttl="1h"
        )


def issue(client: hvac.Client, pg: Postgres, role: str) -> dict[str, Any]:
    answer: dict[str, Any] = client.secrets.database.generate_credentials(role)
    pg.issued.append((answer["data"]["username"], answer["data"]["password"]))
    return answer


@pytest.fixture(scope="module")
def vault(tmp_path_factory: pytest.TempPathFactory, postgres: Postgres) -> Iterator[tuple[VaultProcess, str]]:
    directory = tmp_path_factory.mktemp("vault-db")
    process = VaultProcess(directory, vault_config(directory)).start()
    try:
        _, root = init_and_unseal(process)
        configure(process.client(root), postgres)
        yield process, root
    finally:
        process.stop()


def test_connections_and_roles_read_list_and_delete_as_vault(
    vault: tuple[VaultProcess, str], postgres: Postgres
) -> None:
    process, root = vault
    client = process.client(root)
    config = client.secrets.database.read_connection("orders")["data"]
    assert config["plugin_name"] == "postgresql-database-plugin"
    assert config["allowed_roles"] == ["orders", "orders-*"]
    assert config["connection_details"]["username"] == postgres.root_user
    assert config["connection_details"]["max_open_connections"] == 2
    assert postgres.root_password not in str(config)  # never answered, as Vault
    assert client.secrets.database.list_connections()["data"]["keys"] == ["orders", "payments"]
    role = client.secrets.database.read_role("orders")["data"]
    assert role["db_name"] == "orders" and role["default_ttl"] == 3600 and role["max_ttl"] == 7200
    assert "orders-short" in client.secrets.database.list_roles()["data"]["keys"]
    client.secrets.database.create_role("scratch", "orders", ["SELECT 1"])
    client.secrets.database.delete_role("scratch")
    with pytest.raises(hvac.exceptions.InvalidPath):
        client.secrets.database.read_role("scratch")
    with pytest.raises(hvac.exceptions.InvalidRequest, match="unknown role"):
        client.secrets.database.generate_credentials("scratch")
    with pytest.raises(hvac.exceptions.InvalidRequest, match="error verifying connection") as refused:
        client.secrets.database.configure(
            "broken",
            "postgresql-database-plugin",
            connection_url=postgres.url("missing"),
            username=postgres.root_user,
            password=postgres.root_password,
        )
    assert postgres.root_password not in str(refused.value)
    with pytest.raises(hvac.exceptions.InvalidPath):
        client.secrets.database.read_connection("broken")  # a refused configuration is not kept
    with pytest.raises(hvac.exceptions.InvalidRequest, match="plugin_name"):
        client.secrets.database.configure("mysql", "mysql-database-plugin", connection_url="x")


def test_credentials_log_in_renew_moves_valid_until_and_revoke_kills_the_session(
    vault: tuple[VaultProcess, str], postgres: Postgres
) -> None:
    process, root = vault
    client = process.client(root)
    answer = issue(client, postgres, "orders")
    username, password = answer["data"]["username"], answer["data"]["password"]
    assert answer["lease_id"].startswith("database/creds/orders/") and answer["renewable"] is True
    assert answer["lease_duration"] == 3600
    assert username.startswith("v-root-orders-") and len(username.encode()) <= 63
    assert len(password) == 20
    role = postgres.role(username)
    assert role is not None and role["rolcanlogin"]
    assert abs(role["rolvaliduntil"].timestamp() - (time.time() + 3600)) < 10

    lookup = client.sys.read_lease(answer["lease_id"])["data"]
    assert lookup["id"] == answer["lease_id"] and lookup["renewable"] and 3590 <= lookup["ttl"] <= 3600
    renewed = client.sys.renew_lease(answer["lease_id"], increment=5400)
    assert renewed["lease_id"] == answer["lease_id"] and 5390 <= renewed["lease_duration"] <= 5400
    role = postgres.role(username)
    assert role is not None and abs(role["rolvaliduntil"].timestamp() - (time.time() + 5400)) < 10
    capped = client.sys.renew_lease(answer["lease_id"], increment="10h")  # past max_ttl (2h)
    assert capped["lease_duration"] <= 7200 and capped["warnings"]
    assert client.sys.read_lease(answer["lease_id"])["data"]["last_renewal"]
    assert "orders/" in client.sys.list_leases("database/creds/")["data"]["keys"]
    assert (
        answer["lease_id"].rsplit("/", 1)[1]
        in client.sys.list_leases("database/creds/orders")["data"]["keys"]
    )

    async def session_then_revoke() -> bool:
        connection = await postgres.login(username, password, "orders")
        closed = asyncio.Event()
        connection.add_termination_listener(lambda _connection: closed.set())
        try:
            assert await connection.fetchval("SELECT current_user") == username
            # What the credential creates is handed over, not a reason for DROP ROLE to fail.
            await connection.execute("CREATE TABLE made_by_credential (id int)")
            await asyncio.to_thread(client.sys.revoke_lease, answer["lease_id"])
            # The server ends the session (FATAL 57P01); asyncpg sees it when it reads next.
            with contextlib.suppress(Exception):
                await connection.fetchval("SELECT 1")
            await asyncio.wait_for(closed.wait(), 10)
            return connection.is_closed()
        finally:
            connection.terminate()

    assert asyncio.run(session_then_revoke()), "the revoked role's open session is still open"

    async def sessions(connection: asyncpg.Connection) -> int:
        return int(
            await connection.fetchval("SELECT count(*) FROM pg_stat_activity WHERE usename = $1", username)
        )

    assert postgres.run(sessions) == 0
    assert postgres.role(username) is None
    with pytest.raises(hvac.exceptions.InvalidRequest, match="invalid lease"):
        client.sys.read_lease(answer["lease_id"])

    async def owner(connection: asyncpg.Connection) -> str:
        return str(
            await connection.fetchval(
                "SELECT tableowner FROM pg_tables WHERE tablename = 'made_by_credential'"
            )
        )

    assert postgres.run(owner, database=postgres.db("orders")) == postgres.root_user


def test_an_expired_lease_drops_its_role(vault: tuple[VaultProcess, str], postgres: Postgres) -> None:
    process, root = vault
    answer = issue(process.client(root), postgres, "orders-short")
    assert answer["lease_duration"] == 2
    assert postgres.role(answer["data"]["username"]) is not None
    waited = postgres.wait_gone(answer["data"]["username"])
    assert waited < 10, waited


def test_orders_credentials_cannot_read_payments_tables(
    vault: tuple[VaultProcess, str], postgres: Postgres
) -> None:
    process, root = vault
    client = process.client(root)
    orders = issue(client, postgres, "orders")["data"]
    payments = issue(client, postgres, "payments")["data"]

    async def check() -> None:
        mine = await postgres.login(payments["username"], payments["password"], "payments")
        try:
            assert await mine.fetchval("SELECT amount FROM charges WHERE id = 1") == 4200
        finally:
            await mine.close()
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied for database"):
            await postgres.login(orders["username"], orders["password"], "payments")
        own = await postgres.login(orders["username"], orders["password"], "orders")
        try:
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied for schema"):
                await own.fetch("SELECT * FROM ledger.entries")
        finally:
            await own.close()

    asyncio.run(check())
    with pytest.raises(hvac.exceptions.InvalidRequest, match="not an allowed role"):
        client.secrets.database.create_role("payments-sneak", "orders", ["SELECT 1"])
        client.secrets.database.generate_credentials("payments-sneak")
    client.sys.revoke_prefix("database/creds/payments")
    assert postgres.role(payments["username"]) is None and postgres.role(orders["username"]) is not None


def test_policies_decide_who_gets_which_credentials(
    vault: tuple[VaultProcess, str], postgres: Postgres
) -> None:
    process, root = vault
    admin = process.client(root)
    admin.sys.create_or_update_acl_policy(
        "orders-db",
        'path "database/creds/orders" { capabilities = ["read"] }\n'
        'path "sys/leases/revoke-prefix/*" { capabilities = ["update"] }\n'
        'path "sys/leases/revoke" { capabilities = ["update"] }',
    )
    token = admin.auth.token.create(policies=["orders-db"], ttl="1h", display_name="orders-svc")["auth"]
    orders = process.client(token["client_token"])
    answer = issue(orders, postgres, "orders")
    assert answer["data"]["username"].startswith("v-token-or")  # the token's display name, cut to 8
    orders.sys.renew_lease(answer["lease_id"])  # the default policy allows renewal, as Vault's
    with pytest.raises(hvac.exceptions.Forbidden):
        orders.secrets.database.generate_credentials("payments")
    with pytest.raises(hvac.exceptions.Forbidden):
        orders.secrets.database.read_connection("orders")
    with pytest.raises(hvac.exceptions.Forbidden):
        orders.secrets.database.configure("orders", "postgresql-database-plugin", connection_url="x")
    with pytest.raises(hvac.exceptions.Forbidden):  # revoke-prefix needs sudo too
        orders.sys.revoke_prefix("database/creds/orders")
    orders.sys.revoke_lease(answer["lease_id"])
    assert postgres.role(answer["data"]["username"]) is None


def test_a_tokens_credentials_end_with_the_token(vault: tuple[VaultProcess, str], postgres: Postgres) -> None:
    process, root = vault
    admin = process.client(root)
    admin.sys.create_or_update_acl_policy(
        "orders-creds", 'path "database/creds/orders" { capabilities = ["read"] }'
    )
    revoked = process.client(
        admin.auth.token.create(policies=["orders-creds"], ttl="1h")["auth"]["client_token"]
    )
    expiring = process.client(
        admin.auth.token.create(policies=["orders-creds"], ttl="3s")["auth"]["client_token"]
    )
    first = issue(revoked, postgres, "orders")["data"]["username"]
    second = issue(expiring, postgres, "orders")["data"]["username"]  # a 1h lease on a 3s token
    revoked.auth.token.revoke_self()
    assert postgres.role(first) is None  # gone before the revocation answered
    assert postgres.wait_gone(second) < 15  # the token's expiry ends its lease, unused


def test_rotate_root_changes_the_connection_password(
    vault: tuple[VaultProcess, str], postgres: Postgres
) -> None:
    process, root = vault
    client = process.client(root)
    user, password = f"gv_rot_{postgres.tag}", secrets.token_urlsafe(12)

    async def make(connection: asyncpg.Connection) -> None:
        await connection.execute(f"CREATE ROLE {user} LOGIN PASSWORD '{password}'")
        await connection.execute(f"GRANT CONNECT ON DATABASE {postgres.db('orders')} TO {user}")

    async def stored(connection: asyncpg.Connection) -> str:
        return str(await connection.fetchval("SELECT rolpassword FROM pg_authid WHERE rolname = $1", user))

    postgres.run(make)
    before = postgres.run(stored)
    client.secrets.database.configure(
        "rotating",
        "postgresql-database-plugin",
        connection_url=postgres.url("orders"),
        username=user,
        password=password,
        allowed_roles=[],
    )
    client.secrets.database.rotate_root_credentials("rotating")
    assert postgres.run(stored) != before
    assert password not in str(client.secrets.database.read_connection("rotating"))
    client.secrets.database.delete_connection("rotating")


def test_leases_survive_kill_9_and_are_revoked_after_the_restart(tmp_path: Path, postgres: Postgres) -> None:
    process = VaultProcess(tmp_path, vault_config(tmp_path)).start()
    try:
        keys, root = init_and_unseal(process)
        configure(process.client(root), postgres, short_ttl="4s")
        short = issue(process.client(root), postgres, "orders-short")
        long = issue(process.client(root), postgres, "payments")
        process.kill()  # no drain: the leases are only in the storage now
        assert postgres.role(short["data"]["username"]) is not None  # nobody revoked it
        process.start()
        process.client().sys.submit_unseal_keys(keys[:3])
        postgres.wait_gone(short["data"]["username"])  # its expiry came after the restart
        client = process.client(root)
        lookup = client.sys.read_lease(long["lease_id"])["data"]
        assert lookup["ttl"] > 3500  # the long lease is still there, still running
        client.sys.renew_lease(long["lease_id"], increment="90m")
        client.sys.revoke_lease(long["lease_id"])
        assert postgres.role(long["data"]["username"]) is None
    finally:
        process.stop()
    leaked = [p for _, p in postgres.issued if p in process.stderr_text()]
    assert not leaked


def test_the_bao_cli_reads_credentials_and_manages_their_lease(
    vault: tuple[VaultProcess, str], postgres: Postgres, tmp_path: Path
) -> None:
    process, root = vault
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))}
    env |= {"VAULT_ADDR": process.url, "VAULT_CACERT": process.ca_file, "HOME": str(tmp_path)}
    env |= {"VAULT_TOKEN": root}

    def bao(*args: str) -> str:
        result = subprocess.run(
            [str(Path(sys.executable).parent / "bao"), *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, (args, result.stderr)
        return result.stdout

    creds = json.loads(bao("read", "-format=json", "database/creds/orders"))
    postgres.issued.append((creds["data"]["username"], creds["data"]["password"]))
    assert creds["lease_duration"] == 3600 and creds["renewable"]
    assert "orders-short" in bao("list", "database/roles")
    assert json.loads(bao("lease", "lookup", "-format=json", creds["lease_id"]))["data"]["ttl"] > 3500
    renewed = json.loads(bao("lease", "renew", "-format=json", "-increment=30m", creds["lease_id"]))
    assert 1790 <= renewed["lease_duration"] <= 1800
    bao("lease", "revoke", creds["lease_id"])
    assert postgres.role(creds["data"]["username"]) is None


def test_passwords_are_neither_in_the_audit_file_nor_in_the_logs(
    vault: tuple[VaultProcess, str], postgres: Postgres
) -> None:
    process, root = vault
    issue(process.client(root), postgres, "payments")  # at least one, whatever ran before
    audit = process.audit_path.read_text()
    logs = process.stderr_text()
    assert "database/creds/payments" in audit and "hmac-sha256:" in audit
    secrets_seen = [password for _, password in postgres.issued] + [postgres.root_password]
    for text in (audit, logs):
        assert not [secret for secret in secrets_seen if secret in text]
    assert '"event":"vault.database.credential_created"' in logs  # the log names the role, not the password
