"""Resident memory of one ``garrison sidecar`` process (issue 9's target: <= 40 MB), both ways it runs.

``--cert-dir``: mints a workload PKI with garrison.pki.authority, writes a garrison.yaml with one
sidecar in front of a tiny local app, starts ``garrison sidecar --cert-dir``. Joined: runs ``garrison
ca init`` and ``garrison ca serve`` (workload certificates of ``--ttl`` seconds), mints a join token
with ``garrison ca join-token`` and starts the sidecar with ``GARRISON_JOIN_TOKEN``; the client joins
the same CA. Prints VmRSS (and its anonymous and file-backed parts) from /proc/<pid>/status after
start, after ``--requests`` mTLS requests on keep-alive connections, and (joined) after the sidecar's
first renewal, at about half of ``--ttl``. ``--imports`` also prints import time per top-level package.
``--audit`` adds an ``audit`` section whose collector never answers (nothing listens on its port):
the sidecar carries its audit emitter, and spools what it emits (the edge of the first allowed
call) on disk, retrying with back-off; tests/mesh/test_sidecar_audit.py checks the same bound with a
collector that takes the events.

    .venv/bin/python bench/mesh_rss.py [--requests 2000] [--ttl 60] [--no-joined] [--imports] [--audit]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import http.client
import http.server
import json
import os
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from garrison.pki.authority import new_intermediate, new_key, new_root, pem, request_for, sign_workload
from garrison.pki.workload import WorkloadIdentity

GARRISON = Path(sys.executable).parent / "garrison"
TD = "bench.local"
CONFIG = """
trust_domain: {td}
state_dir: {state}
services:
  payments:
    targets: [http://127.0.0.1:{app}]
  orders:
    targets: [http://127.0.0.1:{app}]
    calls:
      - {{service: payments, methods: [GET], paths: ["/**"]}}
mesh:
  sidecars:
    payments: {{inbound: "127.0.0.1:{inbound}"}}
"""
AUDIT = """audit:
  listen: "127.0.0.1:{port}"
"""
EXTRA: list[str] = []  # --audit: the audit section, appended to every config
CA = """
  ca:
    listen: "127.0.0.1:{port}"
    workload_ttl: {ttl}
    admin: {{listen: "127.0.0.1:0"}}
"""


def issue_pki(directory: Path) -> None:
    """cert.pem/key.pem/bundle.pem for payments (the sidecar) and orders (the client)."""
    now = dt.datetime.now(dt.UTC)
    root = new_root(TD, now=now)
    intermediate = new_intermediate(root, TD, now=now)
    for name in ("payments", "orders"):
        key = new_key()
        cert = sign_workload(
            intermediate,
            request_for(key),
            f"spiffe://{TD}/svc/{name}",
            now=now,
            lifetime=dt.timedelta(hours=1),
        )
        out = directory / name
        out.mkdir()
        key_pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        (out / "key.pem").write_bytes(key_pem)
        (out / "cert.pem").write_bytes(pem(cert, intermediate.certificate))
        (out / "bundle.pem").write_bytes(pem(root.certificate))


class _App(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        body = b'{"ok":true}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def free_port() -> int:
    """A port free now (the config names every sidecar's inbound address: peers dial it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def rss_kib(pid: int) -> dict[str, int]:
    """VmRSS and its anonymous and file-backed parts (shared libraries' pages are shared between
    the sidecars of a host), in KiB."""
    fields = ("VmRSS", "RssAnon", "RssFile")
    found = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in fields:
            found[name] = int(value.split()[0])
    return found


def describe(rss: dict[str, int]) -> str:
    return (
        f"{rss['VmRSS'] / 1024:.1f} MiB (anon {rss['RssAnon'] / 1024:.1f}, file {rss['RssFile'] / 1024:.1f})"
    )


def wait_ready(ready: Path, proc: subprocess.Popen[bytes], stderr: Path) -> dict[str, str]:
    """Poll the ready file (a benchmark harness, not a test: a short poll is fine)."""
    while proc.poll() is None:
        if ready.exists() and ready.stat().st_size:
            listeners: dict[str, str] = json.loads(ready.read_text())["listeners"]
            return listeners
        time.sleep(0.05)
    raise SystemExit(f"{ready.stem} exited {proc.returncode}:\n{stderr.read_text()}")


def client_context(bundle: Path, cert: Path, key: Path | None = None) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.load_verify_locations(cafile=str(bundle))
    context.load_cert_chain(str(cert), str(key) if key else None)
    return context


def load(port: int, context: ssl.SSLContext, requests: int, connections: int = 4) -> None:
    conns = [http.client.HTTPSConnection("127.0.0.1", port, context=context) for _ in range(connections)]
    for i in range(requests):
        conn = conns[i % connections]
        conn.request("GET", f"/items/{i}")
        response = conn.getresponse()
        response.read()
        if response.status != 200:
            raise SystemExit(f"request {i}: HTTP {response.status}")
    for conn in conns:
        conn.close()


def import_profile(top: int = 15) -> None:
    """Import time (self, summed) per top-level package: where the entry path's imports go."""
    code = "import garrison.entry, garrison.mesh.sidecar.main"  # what `garrison sidecar` imports
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True, check=True
    )
    per_package: dict[str, int] = {}
    for line in result.stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line or "cumulative" in line:
            continue
        own, _, name = line.split("|")
        package = name.strip().split(".")[0]
        per_package[package] = per_package.get(package, 0) + int(own.split(":")[1])
    print("import time (self, summed per top-level package):")
    for package, micros in sorted(per_package.items(), key=lambda kv: -kv[1])[:top]:
        print(f"  {package:24} {micros / 1000:8.1f} ms")
    modules = subprocess.run(
        [sys.executable, "-c", code + "; import sys; print(len(sys.modules))"],
        capture_output=True,
        text=True,
        check=True,
    )
    print(f"modules loaded by the sidecar entry path: {modules.stdout.strip()}")


class Sidecar:
    """A ``garrison sidecar`` process for payments; stopped on exit."""

    def __init__(self, root: Path, config: Path, extra: list[str], env: dict[str, str] | None = None) -> None:
        self.ready = root / "sidecar.ready.json"
        self.stderr = root / "sidecar.stderr"
        command = [str(GARRISON), "sidecar", "-c", str(config), "--service", "payments"]
        command += [*extra, "--ready-file", str(self.ready)]
        with open(self.stderr, "wb") as err:
            self.proc = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err, env=env
            )
        self.listeners = wait_ready(self.ready, self.proc, self.stderr)

    def rss(self) -> dict[str, int]:
        return rss_kib(self.proc.pid)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


def cert_dir_run(root: Path, app_port: int, requests: int) -> list[dict[str, int]]:
    issue_pki(root)
    config = root / "garrison.yaml"
    text = CONFIG.format(td=TD, state=root / "state", app=app_port, inbound=free_port())
    config.write_text(text + "".join(EXTRA))
    sidecar = Sidecar(root, config, ["--cert-dir", str(root / "payments")])
    try:
        started = sidecar.rss()
        port = int(sidecar.listeners["inbound"].rsplit(":", 1)[1])
        orders = root / "orders"
        load(port, client_context(orders / "bundle.pem", orders / "cert.pem", orders / "key.pem"), requests)
        return [started, sidecar.rss()]
    finally:
        sidecar.stop()


def garrison(config: Path, *args: str) -> str:
    done = subprocess.run(
        [str(GARRISON), *args, "-c", str(config)], capture_output=True, text=True, timeout=120, check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"garrison {' '.join(args)}: {done.stderr}")
    return done.stdout.strip()


def joined_run(root: Path, app_port: int, requests: int, ttl: int) -> list[dict[str, int]]:
    config = root / "garrison.yaml"
    state = root / "state"
    text = CONFIG.format(td=TD, state=state, app=app_port, inbound=free_port())
    config.write_text(text + CA.format(port=free_port(), ttl=ttl) + "".join(EXTRA))
    garrison(config, "ca", "init")
    ready, stderr = root / "ca.ready.json", root / "ca.stderr"
    with open(stderr, "wb") as err:
        ca = subprocess.Popen(
            [str(GARRISON), "ca", "serve", "-c", str(config), "--ready-file", str(ready)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
        )  # fmt: skip
    try:
        ca_url = "https://" + wait_ready(ready, ca, stderr)["ca"]
        client = asyncio.run(
            _join_client(
                ca_url, root / "orders", state, garrison(config, "ca", "join-token", "--service", "orders")
            )
        )
        env = {
            **os.environ,
            "GARRISON_JOIN_TOKEN": garrison(config, "ca", "join-token", "--service", "payments"),
        }
        sidecar = Sidecar(root, config, [], env)
        try:
            started = sidecar.rss()
            port = int(sidecar.listeners["inbound"].rsplit(":", 1)[1])
            try:
                load(port, client, requests)
            except OSError as exc:
                raise SystemExit(f"{exc!r}; the sidecar said:\n{sidecar.stderr.read_text()}") from None
            loaded = sidecar.rss()
            saved = state / "sidecars" / "payments" / "identity.pem"
            first = saved.read_bytes()
            deadline = time.monotonic() + ttl  # renewed at about half-life
            while saved.read_bytes() == first:
                if time.monotonic() > deadline:
                    raise SystemExit(f"no renewal within {ttl} s:\n{sidecar.stderr.read_text()}")
                time.sleep(0.2)
            # New handshakes on the renewed certificate, from a client joined again (its own
            # certificate, as short-lived, may have lapsed meanwhile: this client does not renew).
            token = garrison(config, "ca", "join-token", "--service", "orders")
            load(port, asyncio.run(_join_client(ca_url, root / "orders-again", state, token)), requests // 10)
            return [started, loaded, sidecar.rss()]
        finally:
            sidecar.stop()
    finally:
        ca.terminate()
        ca.wait(30)


async def _join_client(ca_url: str, directory: Path, state: Path, token: str) -> ssl.SSLContext:
    """orders joins the CA here (pki/workload.py), as a Python service would; its client context."""
    identity = WorkloadIdentity(
        ca_url, directory, ca_bundle=state / "ca" / "bundle.pem", join_token=token, follow_state=False
    )
    await identity.start()
    await identity.close()
    return client_context(directory / "bundle.pem", directory / "identity.pem")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument(
        "--ttl", type=int, default=60, help="joined: workload certificate lifetime, s (>= 60)"
    )
    parser.add_argument("--no-joined", action="store_true", help="measure the --cert-dir sidecar only")
    parser.add_argument("--imports", action="store_true", help="also print the import profile")
    parser.add_argument("--audit", action="store_true", help="with an audit emitter (collector away)")
    args = parser.parse_args()
    if args.audit:
        EXTRA.append(AUDIT.format(port=free_port()))
    app = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _App)
    threading.Thread(target=app.serve_forever, daemon=True).start()
    rows: list[tuple[str, list[dict[str, int]]]] = []
    try:
        with tempfile.TemporaryDirectory(prefix="mesh-rss-") as tmp:
            rows.append(("--cert-dir", cert_dir_run(Path(tmp), app.server_address[1], args.requests)))
        if not args.no_joined:
            with tempfile.TemporaryDirectory(prefix="mesh-rss-") as tmp:
                rows.append(("joined", joined_run(Path(tmp), app.server_address[1], args.requests, args.ttl)))
    finally:
        app.shutdown()
    header = ["after start", f"after {args.requests} mTLS requests", "after a renewal"]
    print(f"{'sidecar VmRSS':14}" + "".join(f" | {title:33}" for title in header))
    for name, figures in rows:
        print(f"{name:14}" + "".join(f" | {describe(rss):33}" for rss in figures))
    if args.imports:
        import_profile()


if __name__ == "__main__":
    main()
