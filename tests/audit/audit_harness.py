"""A real `garrison audit serve` process for tests (port 0, ready file), its intake over real TLS, the
search CLI, and a mesh CA held in the test (root + intermediate, ``state_dir/ca/bundle.pem``) to mint
workload certificates of any SPIFFE ID."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import yaml
from cryptography.hazmat.primitives import serialization
from gateway_harness import stop_process

from garrison.core.ready import read_ready
from garrison.events.schema import Actor, Event
from garrison.pki.authority import (
    Authority,
    new_intermediate,
    new_key,
    new_root,
    pem,
    request_for,
    sign_workload,
)

GARRISON = Path(sys.executable).parent / "garrison"
TD = "shop.local"
NDJSON = {"content-type": "application/x-ndjson"}


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def mesh_ca(trust_domain: str = TD) -> Authority:
    return new_intermediate(new_root(trust_domain, now=now()), trust_domain, now=now())


def mint(directory: Path, issuing: Authority, spiffe_id: str) -> tuple[str, str]:
    """A workload certificate (leaf + intermediate) and its key as files (key 0600)."""
    key = new_key()
    certificate = sign_workload(issuing, request_for(key), spiffe_id, now=now())
    stem = directory / f"workload-{certificate.serial_number:x}"
    cert_file, key_file = stem.with_suffix(".pem"), stem.with_suffix(".key")
    cert_file.write_bytes(pem(certificate, issuing.certificate))
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
    return str(cert_file), str(key_file)


def sample(number: int = 0, **fields: Any) -> Event:
    values: dict[str, Any] = {
        "component": "identity",
        "type": "auth.login",
        "outcome": "failure",
        "actor": Actor(subject="alice", ip="192.0.2.7"),
        "details": {"n": number},
    }
    values.update(fields)
    return Event(**values)


def ndjson(events: list[Event]) -> bytes:
    return b"".join(event.to_json() + b"\n" for event in events)


def audit_config(directory: Path, **audit: Any) -> dict[str, Any]:
    return {
        "state_dir": str(directory / "state"),
        "trust_domain": TD,
        "audit": {"listen": "127.0.0.1:0", "admin": {"listen": "127.0.0.1:0"}, **audit},
    }


class AuditProcess:
    """`garrison audit serve` on port 0."""

    def __init__(self, directory: Path, config: dict[str, Any]) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.config_path = directory / "garrison.yaml"
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        self.state_dir = Path(config["state_dir"])
        self.ready_path = directory / "audit-ready.json"
        self.stderr_path = directory / "audit.stderr"
        self.proc: subprocess.Popen[bytes] | None = None
        self.listeners: dict[str, str] = {}

    def start(self, timeout: float = 30.0) -> AuditProcess:
        self.ready_path.unlink(missing_ok=True)
        with open(self.stderr_path, "ab") as err:
            self.proc = subprocess.Popen(
                [
                    str(GARRISON),
                    "audit",
                    "serve",
                    "-c",
                    str(self.config_path),
                    "--ready-file",
                    str(self.ready_path),
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
            )
        deadline = time.monotonic() + timeout
        while (ready := read_ready(self.ready_path)) is None:
            if self.proc.poll() is not None:
                raise RuntimeError(f"audit exited with {self.proc.returncode}:\n{self.stderr()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"audit not ready after {timeout} s:\n{self.stderr()}")
            time.sleep(0.02)
        self.listeners = ready.listeners
        return self

    def stop(self) -> int | None:
        return stop_process(self.proc, grace=20.0)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")[-4000:]

    @property
    def url(self) -> str:
        return f"https://{self.listeners['audit']}/v1/events"

    @property
    def token(self) -> str:
        return (self.state_dir / "audit" / "emit.token").read_text().strip()

    def context(self, cert: tuple[str, str] | None = None) -> ssl.SSLContext:
        """Trusts the intake's local CA (state_dir/audit/tls/ca.pem), with a client certificate if given."""
        context = ssl.create_default_context(cafile=self.state_dir / "audit" / "tls" / "ca.pem")
        if cert is not None:
            context.load_cert_chain(*cert)
        return context

    def client(self, cert: tuple[str, str] | None = None) -> httpx.Client:
        return httpx.Client(verify=self.context(cert), timeout=30)

    def post(self, body: bytes, token: str | None = "", **headers: str) -> httpx.Response:
        """One batch; ``token=""`` sends the emit token, None sends no credential."""
        sent = {**NDJSON, **headers}
        if token is not None:
            sent["authorization"] = f"Bearer {token or self.token}"
        with self.client() as client:
            return client.post(self.url, content=body, headers=sent)

    def admin(self, path: str) -> httpx.Response:
        address = self.listeners["admin"]
        return httpx.get(f"http://{address}{path}", headers={"host": address}, timeout=10)

    def search(self, *args: str) -> list[dict[str, Any]]:
        result = self.cli("audit", "search", "--json", *args)
        assert result.returncode == 0, result.stderr
        return [json.loads(line) for line in result.stdout.splitlines()]

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(GARRISON), *args, "-c", str(self.config_path)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env={**os.environ, "COLUMNS": "200"},
        )
