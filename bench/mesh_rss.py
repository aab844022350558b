"""Resident memory of one ``garrison sidecar`` process (issue 9's target: <= 40 MB).

Mints a workload PKI with garrison.pki.authority, writes a garrison.yaml with one sidecar in front
of a tiny local app, starts ``garrison sidecar --cert-dir``, and prints VmRSS (and its anonymous and
file-backed parts) from /proc/<pid>/status after start and after ``--requests`` mTLS requests on
keep-alive connections. ``--imports`` also prints import time per top-level package.

    .venv/bin/python bench/mesh_rss.py [--requests 2000] [--imports]
"""

from __future__ import annotations

import argparse
import datetime as dt
import http.client
import http.server
import json
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
    raise SystemExit(f"sidecar exited {proc.returncode}:\n{stderr.read_text()}")


def load(port: int, client_dir: Path, requests: int, connections: int = 4) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.load_verify_locations(cafile=str(client_dir / "bundle.pem"))
    context.load_cert_chain(str(client_dir / "cert.pem"), str(client_dir / "key.pem"))
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
    code = "import garrison.cli, garrison.mesh.sidecar.main"  # what `garrison sidecar` imports
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--imports", action="store_true", help="also print the import profile")
    args = parser.parse_args()
    app = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _App)
    threading.Thread(target=app.serve_forever, daemon=True).start()
    with tempfile.TemporaryDirectory(prefix="mesh-rss-") as tmp:
        root = Path(tmp)
        issue_pki(root)
        config = root / "garrison.yaml"
        config.write_text(
            CONFIG.format(td=TD, state=root / "state", app=app.server_address[1], inbound=free_port())
        )
        ready = root / "ready.json"
        command = [str(GARRISON), "sidecar", "-c", str(config), "--service", "payments"]
        command += ["--cert-dir", str(root / "payments"), "--ready-file", str(ready)]
        stderr = root / "sidecar.stderr"
        with open(stderr, "wb") as err:
            proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
        try:
            listeners = wait_ready(ready, proc, stderr)
            started = rss_kib(proc.pid)
            port = int(listeners["inbound"].rsplit(":", 1)[1])
            load(port, root / "orders", args.requests)
            loaded = rss_kib(proc.pid)
        finally:
            proc.terminate()
            proc.wait(30)
            app.shutdown()
    print(f"sidecar VmRSS after start: {describe(started)}")
    print(f"sidecar VmRSS after {args.requests} mTLS requests: {describe(loaded)}")
    if args.imports:
        import_profile()


if __name__ == "__main__":
    main()
