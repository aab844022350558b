"""`garrison up --demo`, the command behind `make demo`, run end to end on ports held for the test.

The demo's configuration names fixed ports (and the issuer URL carries one), so the test cannot use port 0:
it holds its ports (``ports.reserved_port``) for the whole test instead. Every component binds with
SO_REUSEADDR and may take its port; nobody else can, not even while `up` restarts a killed component."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import ssl
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from ports import reserved_port
from test_e2e_audit_up import AUDIT_PORTS, the_attack_was_detected_and_blocked, the_log_verifies

from garrison.config.loader import load_config
from garrison.core.ready import read_ready
from garrison.pki.tls import auto_trust_file

ROOT = Path(__file__).resolve().parents[2]
GARRISON = [sys.executable, "-m", "garrison"]
# The demo's mesh: its two apps, the CA (API and admin) and the sidecars' ports, by name.
MESH_PORTS = {
    "orders_app": "127.0.0.1:7002",
    "payments_app": "127.0.0.1:7003",
    "ca": "127.0.0.1:8700",
    "ca_admin": "127.0.0.1:9903",
    "orders_outbound": "127.0.0.1:15000",
    "orders_inbound": "127.0.0.1:15001",
    "payments_inbound": "127.0.0.1:15002",
    "payments_outbound": "127.0.0.1:15010",
    **AUDIT_PORTS,  # the audit collector's intake and admin listener
}


@pytest.fixture
def ports() -> Iterator[dict[str, int]]:
    """The demo's ports by name, held for the test."""
    with contextlib.ExitStack() as stack:
        names = ("gateway", "admin", "redirect", "demo", "identity", "identity_admin", *MESH_PORTS)
        yield {name: stack.enter_context(reserved_port()) for name in names}


def write_demo_config(tmp_path: Path, ports: dict[str, int]) -> dict[str, int]:
    """examples/garrison.yaml on ``ports`` with its state under ``tmp_path``; the ports by name."""
    shutil.copy(ROOT / "examples" / "demo_upstream.py", tmp_path / "demo_upstream.py")
    shutil.copy(ROOT / "examples" / "demo_mesh_app.py", tmp_path / "demo_mesh_app.py")
    config = (ROOT / "examples" / "garrison.yaml").read_text()
    for old, new in (
        ("127.0.0.1:8443", f"127.0.0.1:{ports['gateway']}"),
        ("127.0.0.1:9901", f"127.0.0.1:{ports['admin']}"),
        ("127.0.0.1:9902", f"127.0.0.1:{ports['identity_admin']}"),
        ("127.0.0.1:8080", f"127.0.0.1:{ports['redirect']}"),
        ("127.0.0.1:7001", f"127.0.0.1:{ports['demo']}"),
        ("127.0.0.1:9443", f"127.0.0.1:{ports['identity']}"),
        ("https://localhost:9443", f"https://localhost:{ports['identity']}"),
        ("state_dir: ../.garrison", f"state_dir: {tmp_path / 'state'}"),
        ("127.0.0.1:8200", "127.0.0.1:0"),  # the vault: the apps get its address from its ready file
        *((address, f"127.0.0.1:{ports[name]}") for name, address in MESH_PORTS.items()),
    ):
        assert old in config
        config = config.replace(old, new)
    (tmp_path / "garrison.yaml").write_text(config)
    return ports


def test_up_runs_the_demo_and_stops_cleanly_on_ctrl_c(tmp_path: Path, ports: dict[str, int]) -> None:
    write_demo_config(tmp_path, ports)
    output = tmp_path / "up.out"
    with output.open("wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "garrison", "up", "-c", str(tmp_path / "garrison.yaml"), "--demo"],
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 90  # ten processes, a CA and a vault to create, on two cores
            while "Press Ctrl-C" not in output.read_text():
                assert proc.poll() is None, output.read_text()
                assert time.monotonic() < deadline, output.read_text()
                time.sleep(0.1)
            text = output.read_text()
            assert "Garrison is up" in text
            assert f"gateway 127.0.0.1:{ports['gateway']}" in text
            assert "-> 200" in text and '"service": "demo"' in text  # one request went through
            assert "curl -i --cacert" in text
            # A service got a token from the identity provider and called the protected route with it.
            assert f"identity 127.0.0.1:{ports['identity']}" in text
            assert "/token -> 200 (client_credentials" in text
            assert "/api/orders/42 without a token -> 401" in text
            assert "/api/orders/42 with the token -> 200" in text
            assert '"x-garrison-scopes": "orders:read"' in text
            try_it_yourself_reads_the_secret_from_a_private_file(text, tmp_path / "state")
            the_mesh_allowed_one_call_and_denied_the_other(text, tmp_path / "state")
            the_vault_gave_orders_its_password_and_refused_payments(text, tmp_path / "state", ports)
            the_attack_was_detected_and_blocked(text, tmp_path / "garrison.yaml", ports["gateway"])
            proc.send_signal(signal.SIGINT)
            assert proc.wait(20) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert "stopped." in output.read_text()
    the_log_verifies(tmp_path / "garrison.yaml")
    for port in (ports["gateway"], ports["demo"], ports["identity"], ports["identity_admin"]):
        with socket.socket() as sock:
            assert sock.connect_ex(("127.0.0.1", port)) != 0, f"port {port} still open"


def the_mesh_allowed_one_call_and_denied_the_other(text: str, state_dir: Path) -> None:
    """A CA was created on this first run; orders -> payments went through both sidecars (payments
    saw orders' verified identity); payments -> orders was refused, and orders' sidecar logged it."""
    assert f"created a CA for demo.local under {state_dir / 'ca'}" in text
    assert "--offline-root" in text
    assert "orders -> payments: POST /charges -> 200" in text
    assert "payments' app saw the caller spiffe://demo.local/svc/orders" in text
    assert "payments -> orders: POST /orders/42 -> 403" in text
    trace = re.search(r"mesh\.call\.denied line above \(trace_id ([0-9a-f]{32})\)", text)
    assert trace is not None, text
    denied = [
        json.loads(line)
        for line in text.splitlines()
        if line.startswith("{") and '"event":"mesh.call.denied"' in line
    ]
    [line] = [record for record in denied if record["trace_id"] == trace[1]]
    assert line["caller"] == "spiffe://demo.local/svc/payments" and line["path"] == "/orders/42"
    assert text.index('"event":"mesh.call.denied"') < trace.start()  # above the demo's line, as it says
    assert "GARRISON_JOIN_TOKEN" not in text and "gjt_" not in text


def the_vault_gave_orders_its_password_and_refused_payments(
    text: str, state_dir: Path, ports: dict[str, int]
) -> None:
    """The vault child is up and unsealed itself (dev mode, said loudly); the orders app logged in with
    its own workload certificate (cert login, no bootstrap secret) and read secret/orders/db before it
    served; payments' app, logged in the same way, is refused it (403). The password, which only the
    vault and orders hold, is nowhere in up's output or the vault's audit file."""
    ready = read_ready(state_dir / "run" / "up-vault.ready")
    assert ready is not None and ready.component == "vault"
    vault = f"https://localhost:{ready.listeners['vault'].rpartition(':')[2]}"
    assert f"vault {ready.listeners['vault']}" in text  # in up's table
    status, body = https(vault + "/v1/sys/health", state_dir / "ca" / "bundle.pem")
    assert status == 200, body
    assert json.loads(body)["initialized"] is True and json.loads(body)["sealed"] is False
    assert '"event":"vault.dev_mode"' in text and "The vault runs in DEV MODE" in text
    # Started before the apps that read its secrets, after the CA it joined.
    order = [
        json.loads(line)["name"] for line in text.splitlines() if '"event":"up.join_token.minted"' in line
    ]
    assert order.index("vault") < order.index("orders app") < order.index("payments app")

    orders = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{ports['orders_app']}/vault").read())
    assert orders["login"] == "auth/cert/login" and orders["spiffe_id"] == "spiffe://demo.local/svc/orders"
    assert orders["policies"] == ["default", "svc-orders"]
    assert orders["password"] == {"source": "vault", "path": "secret/orders/db", "version": 1}
    assert "orders -> vault: auth/cert/login as spiffe://demo.local/svc/orders -> 200" in text
    assert "orders read its database password from the vault at start: secret/orders/db (version 1)" in text
    payments_app = f"http://127.0.0.1:{ports['payments_app']}"
    tried = json.loads(urllib.request.urlopen(payments_app + "/vault/read/secret/orders/db").read())
    assert tried["status"] == 403 and tried["errors"] == ["permission denied"] and "keys" not in tried
    assert "payments -> vault: GET secret/orders/db -> 403 permission denied" in text

    token_file = state_dir / "vault" / "dev-root.token"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    root = token_file.read_text().strip()
    status, body = https(
        vault + "/v1/secret/data/orders/db", state_dir / "ca" / "bundle.pem", {"X-Vault-Token": root}
    )
    assert status == 200, body
    password = json.loads(body)["data"]["data"]["password"]
    assert len(password) >= 24
    audit = (state_dir / "vault" / "audit.log").read_text()
    assert '"auth/cert/login"' in audit
    for shown in (text, audit):
        assert password not in shown and root not in shown
    try_it = next(line.strip() for line in text.splitlines() if "garrison secret list secret/orders" in line)
    assert f"VAULT_TOKEN=$(cat {token_file})" in try_it
    listed = subprocess.run(["bash", "-c", try_it], capture_output=True, text=True, timeout=60, check=False)
    assert listed.returncode == 0 and listed.stdout.split() == ["db"], listed.stderr


def try_it_yourself_reads_the_secret_from_a_private_file(text: str, state_dir: Path) -> None:
    """The demo client's secret is in a 0600 file under state_dir, never on the terminal: the printed
    curl line reads it with $(cat ...), and run by a shell as printed, it gets a token."""
    secret_file = state_dir / "demo-client.secret"
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    secret = secret_file.read_text().strip()
    assert secret.startswith("gcs_") and secret not in text
    assert "gcs_" not in text  # no client secret at all in the output
    token_line = next(line.strip() for line in text.splitlines() if line.strip().startswith("TOKEN=$(curl"))
    assert f"$(cat {secret_file})" in token_line
    # The line as a user would paste it (TLS to the provider's local CA, as printed): a token comes back.
    env = {"PATH": os.environ["PATH"]}
    done = subprocess.run(
        ["bash", "-c", f'{token_line} && test -n "$TOKEN" && echo "got a token"'],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
        check=False,
    )
    assert done.returncode == 0 and "got a token" in done.stdout, done.stderr
    assert not re.search(r"gcs_\S+", done.stderr)


class UpProcess:
    """`garrison up --demo` on the demo config, its output in a file the test reads as it grows."""

    def __init__(self, tmp_path: Path, ports: dict[str, int], env: dict[str, str] | None = None) -> None:
        self.tmp_path = tmp_path
        self.ports = ports
        self.state = tmp_path / "state"
        self.output = tmp_path / "up.out"
        self.sink = self.output.open("wb")
        self.proc = subprocess.Popen(
            [*GARRISON, "up", "-c", str(tmp_path / "garrison.yaml"), "--demo"],
            stdout=self.sink,
            stderr=subprocess.STDOUT,
            env=os.environ | (env or {}),
        )
        self.wait_for(lambda: "Press Ctrl-C" in self.text(), "up to start", timeout=90)

    def text(self) -> str:
        return self.output.read_text()

    def wait_for(self, condition: Callable[[], bool], what: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert self.proc.poll() is None, f"up exited while waiting for {what}:\n{self.text()}"
            assert time.monotonic() < deadline, f"timed out waiting for {what}:\n{self.text()}"
            time.sleep(0.05)

    def child_pid(self, command: str) -> int:
        """The pid of up's child running `garrison COMMAND` (read from /proc: up is its parent)."""
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
        for pid in children:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            if command.encode() in argv and b"garrison" in argv:
                return int(pid)
        raise AssertionError(f"no `garrison {command}` among up's children {children}")

    def events(self, event: str, name: str) -> list[dict[str, Any]]:
        """up's structured log lines of one event about one component."""
        found = []
        for line in self.text().splitlines():
            if line.startswith("{") and f'"event":"{event}"' in line:
                record = json.loads(line)
                if record.get("name") == name:
                    found.append(record)
        return found

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(30)
        finally:
            self.sink.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.sink.close()


def port_refuses(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def bind_succeeds(sock: socket.socket, port: int) -> bool:
    try:
        sock.bind(("127.0.0.1", port))
    except OSError:
        return False
    return True


def https(
    url: str, ca: Path, headers: dict[str, str] | None = None, data: bytes | None = None
) -> tuple[int, str]:
    context = ssl.create_default_context(cafile=str(ca))
    request = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with urllib.request.urlopen(request, context=context, timeout=10) as response:
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read().decode()


def test_up_restarts_a_killed_component_while_the_others_keep_serving(
    tmp_path: Path, ports: dict[str, int]
) -> None:
    """kill -9 the identity provider: the gateway keeps serving (open route, and a token it verified
    before the kill), and the provider comes back on its own (after a failed restart, retried) and
    issues tokens again. Then kill -9 the gateway: the provider keeps answering, and the gateway comes
    back and serves again."""
    write_demo_config(tmp_path, ports)
    up = UpProcess(tmp_path, ports)
    try:
        state = up.state
        issuer = f"https://localhost:{ports['identity']}"
        config = load_config(tmp_path / "garrison.yaml").config
        idp_ca, gw_ca = auto_trust_file(config, state / "identity"), auto_trust_file(config, state)
        client_secret = (state / "demo-client.secret").read_text().strip()
        client_id = re.search(r'-u "([^:"]+):\$\(cat ', up.text())  # from the printed curl line
        assert client_id is not None, up.text()
        basic = base64.b64encode(f"{client_id[1]}:{client_secret}".encode()).decode()

        def new_token() -> str:
            status, body = https(
                issuer + "/token",
                idp_ca,
                {"Authorization": f"Basic {basic}", "Content-Type": "application/x-www-form-urlencoded"},
                b"grant_type=client_credentials&scope=orders:read",
            )
            assert status == 200, body
            return str(json.loads(body)["access_token"])

        def gateway_serves(token: str) -> None:
            gateway = f"https://localhost:{ports['gateway']}"
            status, body = https(gateway + "/api/hello", gw_ca)
            assert status == 200 and '"service": "demo"' in body, body
            status, body = https(gateway + "/api/orders/42", gw_ca, {"Authorization": f"Bearer {token}"})
            assert status == 200 and '"x-garrison-scopes": "orders:read"' in body, body

        token_before = new_token()
        gateway_serves(token_before)  # the gateway now holds the provider's keys
        identity_pid, gateway_pid = up.child_pid("identity"), up.child_pid("gateway")

        # 1. The identity provider dies hard; nothing else does. Someone else holds its port for a while,
        #    so its first restart fails too: it is retried after a longer back-off, and comes back once
        #    the port is free.
        os.kill(identity_pid, signal.SIGKILL)
        squatter = socket.socket()
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Taken the moment the dead provider's listener is gone (its restart is a second away, at least).
        up.wait_for(
            lambda: bind_succeeds(squatter, ports["identity"]), "the identity provider's port to close"
        )
        squatter.listen()
        with squatter:
            # Once up has seen the death (where it used to stop everything), the same gateway still serves.
            up.wait_for(lambda: bool(up.events("up.component.died", "identity")), "up to see the death")
            gateway_serves(token_before)
            up.wait_for(lambda: len(up.events("up.component.died", "identity")) == 2, "a failed restart")
        up.wait_for(lambda: bool(up.events("up.component.restarted", "identity")), "the provider to return")
        assert up.child_pid("gateway") == gateway_pid and up.events("up.component.died", "gateway") == []
        killed, failed = up.events("up.component.died", "identity")
        assert killed["signal"] == "SIGKILL" and killed["pid"] == identity_pid
        assert killed["restart_in"] == 1.0 and killed["restarts"] == 1
        assert failed["exit_code"] == 2 and failed["restart_in"] == 2.0 and failed["restarts"] == 2
        assert "Address already in use" in up.text()
        assert up.child_pid("identity") not in (identity_pid, failed["pid"])
        [back] = up.events("up.component.restarted", "identity")
        assert back["listeners"] == {
            "identity": f"127.0.0.1:{ports['identity']}",
            "admin": f"127.0.0.1:{ports['identity_admin']}",
        }
        token_after = new_token()
        status, jwks = https(issuer + "/jwks", idp_ca)
        assert status == 200 and '"keys"' in jwks
        gateway_serves(token_after)

        # 2. The gateway dies hard; the identity provider keeps answering.
        identity_pid = up.child_pid("identity")
        os.kill(gateway_pid, signal.SIGKILL)
        up.wait_for(lambda: port_refuses(ports["gateway"]), "the gateway's port to close")
        up.wait_for(lambda: bool(up.events("up.component.died", "gateway")), "up to see the death")
        new_token()
        up.wait_for(lambda: bool(up.events("up.component.restarted", "gateway")), "the gateway to return")
        assert up.child_pid("identity") == identity_pid  # untouched by the gateway's death
        assert len(up.events("up.component.died", "identity")) == 2  # the two of part 1, no more
        [died] = up.events("up.component.died", "gateway")
        assert died["signal"] == "SIGKILL" and died["pid"] == gateway_pid and died["restart_in"] == 1.0
        ready = read_ready(state / "run" / "up-gateway.ready")
        assert ready is not None and ready.component == "gateway" and ready.pid != gateway_pid
        gateway_serves(token_after)
        gateway_serves(token_before)  # still valid: same keys, within its lifetime
        assert up.events("up.component.died", "demo upstream") == []

        # 3. The vault dies hard: it comes back unsealed (dev mode) from its saved mesh identity (no new
        #    join token). Then the orders app: it logs in again and reads the same password.
        vault_pid = up.child_pid("vault")
        os.kill(vault_pid, signal.SIGKILL)
        up.wait_for(lambda: bool(up.events("up.component.restarted", "vault")), "the vault to return")
        assert len(up.events("up.join_token.minted", "vault")) == 1
        ready = read_ready(state / "run" / "up-vault.ready")
        assert ready is not None and ready.pid not in (None, vault_pid)
        vault = f"https://localhost:{ready.listeners['vault'].rpartition(':')[2]}"
        status, body = https(vault + "/v1/sys/health", state / "ca" / "bundle.pem")
        assert status == 200 and json.loads(body)["sealed"] is False, body
        orders_pid = next(
            int(pid)
            for pid in Path(f"/proc/{up.proc.pid}/task/{up.proc.pid}/children").read_text().split()
            if b"orders" in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            and b"--vault-secret" in Path(f"/proc/{pid}/cmdline").read_bytes()
        )
        os.kill(orders_pid, signal.SIGKILL)
        up.wait_for(lambda: bool(up.events("up.component.restarted", "orders app")), "orders to return")
        assert len(up.events("up.join_token.minted", "orders app")) == 1  # its saved identity
        seeded = [
            json.loads(line)["message"] for line in up.text().splitlines() if "up.demo.vault_secret" in line
        ]
        assert seeded == [
            "put secret/orders/db in the vault (a random password, version 1)",
            "secret/orders/db is in the vault already (kept)",
        ]
        orders_app = f"http://127.0.0.1:{ports['orders_app']}"
        report = json.loads(urllib.request.urlopen(orders_app + "/vault", timeout=10).read())
        assert report["password"]["version"] == 1 and report["policies"] == ["default", "svc-orders"]

        assert up.stop() == 0
    finally:
        up.kill()
    assert "stopped." in up.text()
    for port in (ports["gateway"], ports["demo"], ports["identity"], ports["identity_admin"]):
        assert port_refuses(port), f"port {port} still open"
