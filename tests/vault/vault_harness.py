"""A real `garrison vault` process for tests: config, start on port 0 over TLS (`auto`), hvac clients."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import hvac
import yaml
from gateway_harness import stop_process

from garrison.core.ready import read_ready

GARRISON = Path(sys.executable).parent / "garrison"


def vault_config(directory: Path, database: str | None = None, **overrides: Any) -> dict[str, Any]:
    vault: dict[str, Any] = {"listen": "127.0.0.1:0", **overrides}
    if database is not None:
        vault["database"] = database
    return {"state_dir": str(directory / "state"), "vault": vault}


class VaultProcess:
    """`garrison vault` on port 0; ``client()`` gives an hvac client that verifies its TLS certificate."""

    def __init__(self, directory: Path, config: dict[str, Any]) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.config = config
        self.config_path = directory / "garrison.yaml"
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        self.ready_path = directory / "vault-ready.json"
        self.stderr_path = directory / "vault.stderr"
        self.state_dir = Path(config["state_dir"])
        self.proc: subprocess.Popen[bytes] | None = None
        self.address = ""

    @property
    def url(self) -> str:
        tls = not self.config["vault"].get("tls", {}).get("insecure_disable", False)
        return f"{'https' if tls else 'http'}://{self.address}"

    @property
    def ca_file(self) -> str:
        return str(self.state_dir / "vault" / "tls" / "ca.pem")

    @property
    def audit_path(self) -> Path:
        return Path(
            self.config["vault"].get("audit", {}).get("file") or self.state_dir / "vault" / "audit.log"
        )

    def start(self, timeout: float = 60.0) -> VaultProcess:
        self.ready_path.unlink(missing_ok=True)
        with open(self.stderr_path, "ab") as err:
            self.proc = subprocess.Popen(
                [str(GARRISON), "vault", "-c", str(self.config_path), "--ready-file", str(self.ready_path)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                cwd=self.directory,
            )
        deadline = time.monotonic() + timeout
        while (ready := read_ready(self.ready_path)) is None:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"vault did not start:\n{self.stderr_path.read_text()[-3000:]}")
            time.sleep(0.02)
        self.address = ready.listeners["vault"]
        return self

    def stop(self) -> int | None:
        return stop_process(self.proc, grace=10.0)

    def kill(self) -> None:
        """SIGKILL: no drain, no goodbye (a crash)."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def client(self, token: str | None = None) -> hvac.Client:
        return hvac.Client(url=self.url, token=token, verify=self.ca_file, timeout=15)

    def stderr_text(self) -> str:
        return self.stderr_path.read_text()


def init_and_unseal(vault: VaultProcess, shares: int = 5, threshold: int = 3) -> tuple[list[str], str]:
    """``sys/init`` then ``sys/unseal`` with ``threshold`` of the shares; (keys, root token)."""
    client = vault.client()
    result = client.sys.initialize(secret_shares=shares, secret_threshold=threshold)
    keys, root = result["keys"], result["root_token"]
    for key in keys[:threshold]:
        client.sys.submit_unseal_key(key)
    assert not client.sys.is_sealed()
    return keys, root
