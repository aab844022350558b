"""`make demo` with a PostgreSQL (``GARRISON_DEMO_POSTGRES_URL``): orders gets dynamic credentials from
the vault's database engine (``database/creds/orders``) with the token of its certificate login, and
connects with them; revoking the lease drops the role. (Without a PostgreSQL, orders reads the KV
secret: tests/e2e/test_e2e_up.py.)"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import asyncpg
import pytest
from test_e2e_up import UpProcess, https, ports, write_demo_config

from garrison.core.ready import read_ready

__all__ = ["ports"]  # the fixture, shared with test_e2e_up

pytestmark = pytest.mark.process


async def _role_exists(url: str, name: str) -> bool:
    connection = await asyncpg.connect(url)
    try:
        return bool(await connection.fetchval("SELECT count(*) FROM pg_roles WHERE rolname = $1", name))
    finally:
        await connection.close()


def test_demo_orders_gets_dynamic_postgres_credentials(
    tmp_path: Path, ports: dict[str, int], postgres_url: str
) -> None:
    import asyncio

    write_demo_config(tmp_path, ports)
    up = UpProcess(tmp_path, ports, env={"GARRISON_DEMO_POSTGRES_URL": postgres_url})
    try:
        state, text = up.state, up.text()
        assert postgres_url not in text
        report = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{ports['orders_app']}/vault").read())
        source = report["password"]
        assert source["source"] == "vault database" and source["path"] == "database/creds/orders", report
        username = source["username"]
        assert username.startswith("v-cert-ord") and source["connected_as"] == username
        assert 0 < source["lease_duration"] <= 3600
        assert f"database/creds/orders -> role {username}" in text
        assert asyncio.run(_role_exists(postgres_url, username))
        assert "payments -> vault: GET secret/orders/db -> 403" in text

        # The lease, revoked with the root token, takes the role away: the credentials are dead.
        ready = read_ready(state / "run" / "up-vault.ready")
        assert ready is not None
        vault = f"https://localhost:{ready.listeners['vault'].rpartition(':')[2]}"
        root = (state / "vault" / "dev-root.token").read_text().strip()
        status, body = https(
            vault + "/v1/sys/leases/revoke-prefix/database/creds/orders",
            state / "ca" / "bundle.pem",
            {"X-Vault-Token": root},
            b"{}",
        )
        assert status == 204, body
        assert not asyncio.run(_role_exists(postgres_url, username))
        assert up.stop() == 0
    finally:
        up.kill()
