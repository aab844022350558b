"""Sidecars in a test: a workload PKI minted by pki/authority, in-process sidecars on a loop thread,
mTLS and plain clients, and the sidecar's log lines captured.

``MeshPki`` is a root and an intermediate of a trust domain, as `garrison ca` keeps them; ``issue``
writes ``cert.pem`` (leaf and intermediate), ``key.pem`` and ``bundle.pem`` (the root) in a directory,
the layout of ``garrison sidecar --cert-dir``. ``SidecarThread`` runs a ``SidecarComponent`` on its own
event loop in a thread (the test thread stays synchronous); ``on_loop`` runs a function there.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import http.client
import io
import json
import ssl
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import uvloop
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from garrison.mesh.sidecar.component import SidecarComponent
from garrison.mesh.sidecar.identity import FileIdentity
from garrison.mesh.sidecar.settings import load_settings
from garrison.pki.authority import new_intermediate, new_key, new_root, pem, request_for, sign_workload

T = TypeVar("T")
TD = "shop.local"


def svc(name: str) -> str:
    return f"spiffe://{TD}/svc/{name}"


CONFIG = """
trust_domain: shop.local
state_dir: {state}
services:
  orders:
    targets: [http://127.0.0.1:{orders_app}]
    calls:
      - {{service: payments, methods: [POST], paths: [/charges]}}
      - {{service: payments, methods: [GET], paths: [/charges/**]}}
  payments:
    targets: [http://127.0.0.1:{payments_app}]
  inventory:
    targets: [http://127.0.0.1:{payments_app}]
mesh:
  sidecars:
    orders: {{inbound: "127.0.0.1:{orders_in}"}}
    payments: {{inbound: "127.0.0.1:{payments_in}"}}
"""


def write_mesh(directory: Path, pki: MeshPki, app_port: int, orders_in: int, payments_in: int) -> Path:
    """garrison.yaml for orders -> payments (both apps: ``app_port``); certs for orders, payments,
    inventory in ``directory/<name>``."""
    config = directory / "garrison.yaml"
    config.write_text(
        CONFIG.format(
            state=directory / "state",
            orders_app=app_port,
            payments_app=app_port,
            orders_in=orders_in,
            payments_in=payments_in,
        )
    )
    for name in ("orders", "payments", "inventory"):
        pki.issue(directory / name, svc(name))
    return config


class MeshPki:
    def __init__(self, trust_domain: str = TD) -> None:
        now = dt.datetime.now(dt.UTC)
        self.root = new_root(trust_domain, now=now)
        self.intermediate = new_intermediate(self.root, trust_domain, now=now)

    def issue(
        self, directory: Path, spiffe_id: str, *, now: dt.datetime | None = None, hours: float = 1.0
    ) -> x509.Certificate:
        """A workload certificate for ``spiffe_id`` in ``directory`` (files replaced atomically)."""
        directory.mkdir(parents=True, exist_ok=True)
        key = new_key()
        cert = sign_workload(
            self.intermediate,
            request_for(key),
            spiffe_id,
            now=now or dt.datetime.now(dt.UTC),
            lifetime=dt.timedelta(hours=hours),
        )
        key_pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        for name, data in (
            ("key.pem", key_pem),
            ("cert.pem", pem(cert, self.intermediate.certificate)),
            ("bundle.pem", pem(self.root.certificate)),
        ):
            tmp = directory / f".{name}.tmp"
            tmp.write_bytes(data)
            tmp.replace(directory / name)
        return cert


def client_context(directory: Path, bundle: Path | None = None) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.load_verify_locations(cafile=str(bundle or directory / "bundle.pem"))
    context.load_cert_chain(str(directory / "cert.pem"), str(directory / "key.pem"))
    return context


def answer(
    conn: http.client.HTTPConnection,
    method: str,
    path: str,
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
) -> tuple[int, bytes]:
    conn.request(method, path, body=body, headers=headers or {})
    response = conn.getresponse()
    return response.status, response.read()


OPEN: list[http.client.HTTPConnection] = []  # closed by close_clients() (a test fixture's teardown)


def mtls(port: int, directory: Path, bundle: Path | None = None) -> http.client.HTTPSConnection:
    context = client_context(directory, bundle)
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=30)
    OPEN.append(conn)
    return conn


def plain(port: int) -> http.client.HTTPConnection:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    OPEN.append(conn)
    return conn


def close_clients() -> None:
    while OPEN:
        OPEN.pop().close()


class LogLines(io.TextIOBase):
    """A log stream keeping the JSON lines (thread-safe enough: appends under the GIL)."""

    def __init__(self) -> None:
        self.lines: list[dict[str, Any]] = []

    def write(self, text: str) -> int:
        for line in text.splitlines():
            if line.strip():
                self.lines.append(json.loads(line))
        return len(text)

    def events(self, name: str) -> list[dict[str, Any]]:
        return [line for line in list(self.lines) if line.get("event") == name]


class SidecarThread:
    """A sidecar component on its own loop thread; see the module docstring."""

    def __init__(self, config: Path, service: str, cert_dir: Path) -> None:
        self.identity = FileIdentity.from_directory(cert_dir)
        # as `garrison sidecar` does: the file validated in a child, the sidecar's copy of it here
        self.component = SidecarComponent(load_settings(config), service, self.identity)
        self.loop = uvloop.new_event_loop()  # as `garrison sidecar` runs
        self.thread = threading.Thread(target=self.loop.run_forever, name=f"sidecar-{service}", daemon=True)
        self.listeners: dict[str, str] = {}

    def start(self) -> SidecarThread:
        self.thread.start()
        self.listeners = asyncio.run_coroutine_threadsafe(self.component.start(), self.loop).result(30)
        return self

    def port(self, listener: str) -> int:
        return int(self.listeners[listener].rsplit(":", 1)[1])

    def on_loop(self, fn: Callable[[], T]) -> T:
        async def call() -> T:
            return fn()

        return asyncio.run_coroutine_threadsafe(call(), self.loop).result(30)

    def stop(self) -> None:
        try:
            asyncio.run_coroutine_threadsafe(self.component.drain(), self.loop).result(30)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            # As GatewayThread (tests/gateway/test_gateway_mesh.py): TLS connections interrupted by
            # the drain may owe the loop closing callbacks, and uvloop will not close a loop with
            # live handles. A bounded grace lets them run.
            self.loop.run_until_complete(asyncio.sleep(0.2))
            self.loop.close()
