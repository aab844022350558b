"""A real `garrison identity` process for tests: its config, its CLI, and a fresh PostgreSQL database."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import yaml

GARRISON = Path(sys.executable).parent / "garrison"


def identity_config(directory: Path, database: str | None = None, **overrides: Any) -> dict[str, Any]:
    identity: dict[str, Any] = {
        "listen": "127.0.0.1:0",
        "issuer": "http://127.0.0.1:0",
        "tls": {"insecure_disable": True},
        **overrides,
    }
    if database is not None:
        identity["database"] = database
    return {"state_dir": str(directory / "state"), "identity": identity}


class IdentityProcess:
    """`garrison identity` on port 0 (the issuer follows the port); SIGTERM to stop."""

    def __init__(self, directory: Path, config: dict[str, Any]) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.config = config
        self.config_path = directory / "garrison.yaml"
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        self.ready_path = directory / "identity-ready.json"
        self.stderr_path = directory / "identity.stderr"
        self.proc: subprocess.Popen[bytes] | None = None
        self.issuer = ""
        self.address = ""

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(GARRISON), "identity", *args, "-c", str(self.config_path)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def create_client(self, name: str, *args: str) -> dict[str, Any]:
        result = self.cli("client", "create", "--name", name, "--json", *args)
        assert result.returncode == 0, result.stderr
        created: dict[str, Any] = json.loads(result.stdout)
        return created

    def start(self, timeout: float = 20.0) -> IdentityProcess:
        self.ready_path.unlink(missing_ok=True)
        with open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(
                [
                    str(GARRISON),
                    "identity",
                    "-c",
                    str(self.config_path),
                    "--ready-file",
                    str(self.ready_path),
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                cwd=self.directory,
            )
        deadline = time.monotonic() + timeout
        while not self.ready_path.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(
                    f"identity provider did not start:\n{self.stderr_path.read_text()[-3000:]}"
                )
            time.sleep(0.02)
        ready = json.loads(self.ready_path.read_text())
        self.issuer, self.address = ready["issuer"], ready["identity"]
        return self

    def stop(self) -> int | None:
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        return proc.returncode

    def stderr_text(self) -> str:
        return self.stderr_path.read_text()

    def post(self, path: str, data: dict[str, str], auth: tuple[str, str] | None = None) -> httpx.Response:
        return httpx.post(self.issuer + path, data=data, auth=auth, timeout=10)

    def token(self, client: dict[str, Any], **extra: str) -> httpx.Response:
        credentials = (client["client_id"], client["client_secret"])
        return self.post("/token", {"grant_type": "client_credentials", **extra}, credentials)


@contextmanager
def postgres_database(server_url: str) -> Iterator[str]:
    """A fresh, empty PostgreSQL database on the test server, dropped afterwards."""
    import asyncpg

    name = f"garrison_{uuid.uuid4().hex[:12]}"
    dsn = server_url.replace("postgresql+asyncpg://", "postgresql://")

    async def run(statement: str) -> None:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(statement)
        finally:
            await conn.close()

    asyncio.run(run(f'CREATE DATABASE "{name}"'))
    try:
        base = dsn.rsplit("/", 1)[0]
        yield f"{base}/{name}"
    finally:
        asyncio.run(run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
