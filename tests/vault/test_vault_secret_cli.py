"""`garrison secret put|get|list` against a real vault over HTTPS: the round trip, values from a file and
from standard input, `--field`, and errors that say what to do next."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from vault_harness import GARRISON, VaultProcess, init_and_unseal, vault_config

pytestmark = pytest.mark.process


@pytest.fixture(scope="module")
def vault(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[VaultProcess, str]]:
    directory = tmp_path_factory.mktemp("secret-cli")
    process = VaultProcess(directory, vault_config(directory)).start()
    try:
        _, root = init_and_unseal(process, shares=1, threshold=1)
        yield process, root
    finally:
        process.stop()


def secret(
    process: VaultProcess, token: str | None, *args: str, stdin: str = ""
) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("VAULT_")}
    env["VAULT_ADDR"] = process.url  # vault.listen is port 0 in tests: the address comes from here
    if token is not None:
        env["VAULT_TOKEN"] = token
    return subprocess.run(
        [str(GARRISON), "secret", *args, "-c", str(process.config_path)],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def test_put_get_list_round_trip(vault: tuple[VaultProcess, str], tmp_path: Path) -> None:
    process, root = vault
    key_file = tmp_path / "tls.key"
    key_file.write_text("multi\nline value\n")
    put = secret(
        process,
        root,
        "put",
        "secret/orders/db",
        "user=orders",
        "password=-",
        f"tls=@{key_file}",
        stdin="from stdin\n",
    )
    assert put.returncode == 0, put.stderr
    assert "version 1" in put.stderr and "from stdin" not in put.stderr + put.stdout
    got = secret(process, root, "get", "secret/orders/db")
    assert got.returncode == 0, got.stderr
    assert "user" in got.stdout and "orders" in got.stdout and "version 1" in got.stdout
    field = secret(process, root, "get", "secret/orders/db", "--field", "password")
    assert field.stdout == "from stdin\n"
    assert secret(process, root, "get", "orders/db", "--field", "tls").stdout == "multi\nline value\n"
    again = secret(process, root, "put", "secret/orders/api", stdin=json.dumps({"key": "k-1"}))
    assert again.returncode == 0, again.stderr
    listed = secret(process, root, "list", "secret/orders")
    assert listed.stdout.splitlines() == ["api", "db"]
    assert secret(process, root, "list").stdout.splitlines() == ["orders/"]
    cas = secret(process, root, "put", "secret/orders/api", "key=k-2", "--cas", "0")
    assert cas.returncode == 1 and "check-and-set" in cas.stderr


def test_errors_say_what_to_do(vault: tuple[VaultProcess, str]) -> None:
    process, root = vault
    no_token = secret(process, None, "get", "secret/orders/db")
    assert no_token.returncode == 1 and "set VAULT_TOKEN" in no_token.stderr
    bad_token = secret(process, "hvs.not-a-token", "get", "secret/orders/db")
    assert bad_token.returncode == 1 and "refused (403)" in bad_token.stderr
    assert "services.<name>.secrets" in bad_token.stderr
    missing = secret(process, root, "get", "secret/orders/nothing-here")
    assert missing.returncode == 1 and "garrison secret list" in missing.stderr
    no_field = secret(process, root, "get", "secret/orders/db", "--field", "nope")
    assert no_field.returncode == 1 and "password" in no_field.stderr and "from stdin" not in no_field.stderr
    bad_pair = secret(process, root, "put", "secret/orders/x", "novalue")
    assert bad_pair.returncode == 2 and "key=value" in bad_pair.stderr
    unreachable = subprocess.run(
        [
            str(GARRISON),
            "secret",
            "get",
            "secret/orders/db",
            "-c",
            str(process.config_path),
            "--address",
            "https://127.0.0.1:9",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "VAULT_TOKEN": root},
        timeout=60,
        check=False,
    )
    assert unreachable.returncode == 1 and "is `garrison vault` running" in unreachable.stderr
