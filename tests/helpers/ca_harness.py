"""A real `garrison ca serve` process for tests (port 0, ready file), its CLI, and calls to its APIs."""

from __future__ import annotations

import json
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
from garrison.pki.authority import new_key, request_for

GARRISON = Path(sys.executable).parent / "garrison"
TRUST_DOMAIN = "shop.local"


def ca_config(directory: Path, **ca: Any) -> dict[str, Any]:
    return {
        "state_dir": str(directory / "state"),
        "trust_domain": TRUST_DOMAIN,
        "services": {
            name: {"targets": ["http://127.0.0.1:9"]} for name in ("orders", "payments", "inventory")
        },
        "mesh": {"ca": {"listen": "127.0.0.1:0", "admin": {"listen": "127.0.0.1:0"}, **ca}},
    }


class CaProcess:
    """`garrison ca serve` on port 0; ``init()`` first (``garrison ca init``)."""

    def __init__(self, directory: Path, **ca: Any) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.config_path = directory / "garrison.yaml"
        self.config_path.write_text(yaml.safe_dump(ca_config(directory, **ca), sort_keys=False))
        self.state_dir = directory / "state"
        self.ready_path = directory / "ca-ready.json"
        self.stderr_path = directory / "ca.stderr"
        self.proc: subprocess.Popen[bytes] | None = None
        self.listeners: dict[str, str] = {}

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(GARRISON), *args, "-c", str(self.config_path)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def init(self) -> CaProcess:
        result = self.cli("ca", "init")
        assert result.returncode == 0, result.stderr
        return self

    def start(self, timeout: float = 20.0) -> CaProcess:
        self.ready_path.unlink(missing_ok=True)
        with open(self.stderr_path, "ab") as err:
            self.proc = subprocess.Popen(
                [
                    str(GARRISON),
                    "ca",
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
                raise RuntimeError(f"ca exited with {self.proc.returncode}:\n{self.stderr()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"ca not ready after {timeout} s:\n{self.stderr()}")
            time.sleep(0.02)
        self.listeners = ready.listeners
        return self

    def stop(self) -> int | None:
        return stop_process(self.proc, grace=10.0)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")[-4000:]

    @property
    def url(self) -> str:
        return f"https://{self.listeners['ca']}"

    @property
    def port(self) -> int:
        return int(self.listeners["ca"].rsplit(":", 1)[1])

    @property
    def admin_port(self) -> int:
        return int(self.listeners["admin"].rsplit(":", 1)[1])

    @property
    def bundle_file(self) -> Path:
        return self.state_dir / "ca" / "bundle.pem"

    def admin(self, method: str, path: str, token: bool = True, **headers: str) -> httpx.Response:
        sent = {"Host": f"127.0.0.1:{self.admin_port}", **headers}
        if token:
            sent["Authorization"] = f"Bearer {(self.state_dir / 'admin.token').read_text().strip()}"
        return httpx.request(method, f"http://127.0.0.1:{self.admin_port}{path}", headers=sent, timeout=10)

    def join_token(self, service: str, ttl: str = "10m") -> str:
        answer = self.admin("POST", f"/join-tokens?service={service}&ttl={ttl}")
        assert answer.status_code == 200, answer.text
        return str(answer.json()["token"])

    def member_cert(self) -> Path:
        """A workload certificate (chain + key, 0600) of ``inventory``, joined once: what /v1/state needs."""
        path = self.directory / "member.pem"
        if not path.exists():
            key = new_key()
            csr = request_for(key).public_bytes(serialization.Encoding.PEM).decode()
            joined = self.api("POST", "/v1/join", {"token": self.join_token("inventory"), "csr": csr})
            assert joined.status_code == 200, joined.text
            key_pem = key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
            path.touch(0o600)
            path.write_bytes(joined.json()["certificate_chain"].encode() + key_pem)
        return path

    def state(self, after: int = -1) -> httpx.Response:
        """``GET /v1/state?after=N`` as a workload of the trust domain."""
        return self.api("GET", f"/v1/state?after={after}", cert=self.member_cert())

    def api_context(self, cert: Path | None = None) -> ssl.SSLContext:
        """A client context verifying the CA under its bundle (not its name), with ``cert`` if given."""
        context = ssl.create_default_context(cafile=self.bundle_file)
        context.check_hostname = False
        if cert is not None:
            context.load_cert_chain(cert)
        return context

    def api(self, method: str, path: str, body: Any = None, cert: Path | None = None) -> httpx.Response:
        content = json.dumps(body).encode() if body is not None else None
        with httpx.Client(verify=self.api_context(cert), timeout=40) as client:
            return client.request(method, f"{self.url}{path}", content=content)
