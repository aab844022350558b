"""`garrison vault init|unseal|seal|status` against a running vault, as separate processes."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from vault_harness import GARRISON, VaultProcess, vault_config

pytestmark = pytest.mark.process


def test_init_unseal_status_seal_from_the_command_line(tmp_path: Path) -> None:
    process = VaultProcess(tmp_path, vault_config(tmp_path)).start()
    try:

        def run(*args: str, stdin: str = "", token: str = "") -> subprocess.CompletedProcess[str]:
            env = {k: v for k, v in os.environ.items() if not k.startswith("VAULT_")}
            if token:
                env["VAULT_TOKEN"] = token
            config = str(process.config_path)
            command = [str(GARRISON), "vault", *args, "-c", config, "--address", process.url]
            return subprocess.run(command, input=stdin, capture_output=True, text=True, env=env, timeout=60)

        assert run("status").returncode == 2
        initialised = run("init", "--shares", "3", "--threshold", "2")
        assert initialised.returncode == 0, initialised.stderr
        created = json.loads(initialised.stdout)
        keys, root = created["keys"], created["root_token"]
        assert len(keys) == 3 and "different person" in initialised.stderr
        first = run("unseal", stdin=keys[2] + "\n")
        assert first.returncode == 0 and "1 of 2" in first.stderr
        assert keys[2] not in first.stdout + first.stderr
        assert "unsealed" in run("unseal", stdin=keys[0] + "\n").stderr
        unsealed = run("status")
        assert unsealed.returncode == 0 and json.loads(unsealed.stdout)["sealed"] is False
        assert run("seal").returncode == 1  # no token: refused
        assert run("seal", token=root).returncode == 0
        assert run("status").returncode == 2
        again = run("init")
        assert again.returncode == 1 and "already initialized" in again.stderr
    finally:
        process.stop()
