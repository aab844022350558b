"""The official `bao` CLI's transit commands against the vault (VAULT_ADDR pointed at Garrison), as an
operator would type them: key creation, encrypt, decrypt, rotate, rewrap, key read."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from vault_harness import VaultProcess, init_and_unseal, vault_config

pytestmark = pytest.mark.process

BAO = Path(sys.executable).parent / "bao"


def test_bao_write_transit_encrypt_and_decrypt(tmp_path: Path) -> None:
    process = VaultProcess(tmp_path, vault_config(tmp_path)).start()
    try:
        _, root = init_and_unseal(process)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))}
        env |= {"VAULT_ADDR": process.url, "VAULT_CACERT": process.ca_file, "HOME": str(tmp_path)}
        env["VAULT_TOKEN"] = root

        def ok(*args: str) -> str:
            result = subprocess.run([str(BAO), *args], env=env, capture_output=True, text=True, timeout=60)
            assert result.returncode == 0, (args, result.stderr)
            return result.stdout

        ok("write", "-f", "transit/keys/orders")
        plaintext = base64.b64encode(b"order 17").decode()
        ciphertext = ok("write", "-field=ciphertext", "transit/encrypt/orders", f"plaintext={plaintext}")
        assert ciphertext.startswith("vault:v1:")
        assert (
            ok("write", "-field=plaintext", "transit/decrypt/orders", f"ciphertext={ciphertext}") == plaintext
        )
        ok("write", "-f", "transit/keys/orders/rotate")
        rewrapped = ok("write", "-field=ciphertext", "transit/rewrap/orders", f"ciphertext={ciphertext}")
        assert rewrapped.startswith("vault:v2:")
        key = json.loads(ok("read", "-format=json", "transit/keys/orders"))["data"]
        assert key["latest_version"] == 2 and key["type"] == "aes256-gcm96"
        assert "orders" in ok("list", "transit/keys")
    finally:
        process.stop()
