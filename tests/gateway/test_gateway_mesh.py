"""The gateway in the mesh: a route to a service with a sidecar goes through that sidecar over mTLS, as
``spiffe://<td>/gateway``, joined at a real CA process (`garrison ca serve`) with GARRISON_JOIN_TOKEN.

The gateway and the sidecar run in-process (each on its own uvloop thread, as their commands run them);
the CA is a real process, and every certificate (gateway, sidecars) comes from it. Then ``tls.cert:
auto`` listener certificates from the CA's files (pki/tls.py)."""

from __future__ import annotations

import asyncio
import datetime as dt
import socket
import ssl
import sys
import threading
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import uvloop
import yaml
from ca_harness import CaProcess
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from gateway_harness import GatewayProcess, RecordingUpstream
from mesh_sidecars import LogLines, SidecarThread, answer, close_clients, plain
from ports import reserved_port
from waiting import wait_until

from garrison.config.loader import load_config
from garrison.gateway.component import GatewayComponent
from garrison.pki.authority import new_key, request_for
from garrison.pki.authority_files import AuthorityFiles
from garrison.pki.kek import KeyEncryption
from garrison.pki.tls import CaIssuer, resolve_certificate
from garrison.pki.workload import JoinTokenNeeded, WorkloadIdentity
from garrison.telemetry import logging as log

pytestmark = pytest.mark.process

T = TypeVar("T")
GATEWAY_ID = "spiffe://shop.local/gateway"


class GatewayThread:
    """A ``GatewayComponent`` on its own uvloop thread (the test thread stays synchronous)."""

    def __init__(self, config: Path) -> None:
        self.component = GatewayComponent(load_config(config))
        self.loop = uvloop.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="gateway", daemon=True)
        self.listeners: dict[str, str] = {}

    def start(self) -> GatewayThread:
        self.thread.start()
        try:
            self.listeners = self.run(self.component.start())
        except BaseException:
            self._stop_loop()
            raise
        return self

    def run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(60)

    @property
    def port(self) -> int:
        return int(self.listeners["gateway"].rsplit(":", 1)[1])

    @property
    def identity(self) -> WorkloadIdentity:
        assert self.component.server is not None and self.component.server.identity is not None
        return self.component.server.identity

    def stop(self) -> None:
        try:
            self.run(self.component.drain())
        finally:
            self._stop_loop()

    def _stop_loop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        # A TLS connection interrupted by the drain (the CA long-poll, cancelled mid-handshake) may
        # still owe the loop its closing callbacks; uvloop refuses to close a loop with live handles
        # (EBUSY). A bounded grace on this thread lets them run; nothing is asserted on it.
        self.loop.run_until_complete(asyncio.sleep(0.2))
        self.loop.close()


def join_files(ca: CaProcess, service: str, directory: Path) -> None:
    """A workload certificate for ``service`` from the CA, in the layout of ``sidecar --cert-dir``."""
    key = new_key()
    csr = request_for(key).public_bytes(serialization.Encoding.PEM).decode()
    issued = ca.api("POST", "/v1/join", {"token": ca.join_token(service), "csr": csr})
    assert issued.status_code == 200, issued.text
    directory.mkdir(parents=True, exist_ok=True)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    (directory / "key.pem").write_bytes(key_pem)
    (directory / "cert.pem").write_text(issued.json()["certificate_chain"])
    (directory / "bundle.pem").write_text(issued.json()["trust_bundle"])


def gateway_token(ca: CaProcess) -> str:
    spiffe_id = urllib.parse.quote(GATEWAY_ID, safe="")
    issued = ca.admin("POST", f"/join-tokens?spiffe_id={spiffe_id}&ttl=10m")
    assert issued.status_code == 200, issued.text
    return str(issued.json()["token"])


def mesh_config(ca: CaProcess, app_port: int, sidecar_port: int, methods: list[str]) -> dict[str, Any]:
    app = {"targets": [f"http://127.0.0.1:{app_port}"], "read_timeout": "5s", "pool": {"max_idle": 0}}
    return {
        "state_dir": str(ca.state_dir),  # the CA's: state_dir/ca/bundle.pem, state_dir/gateway/identity
        "trust_domain": "shop.local",
        "gateway": {
            "listen": "127.0.0.1:0",
            "tls": {"insecure_disable": True},
            "admin": {"listen": "127.0.0.1:0"},
            "drain_timeout": "1s",
            "watch_config": False,
        },
        "services": {"payments": app, "inventory": app, "direct": {"targets": app["targets"]}},
        "routes": [
            {
                "match": {"path": "/charges", "prefix": True, "methods": methods},
                "service": "payments",
                "auth": {"require": "none"},
            },
            {"match": {"path": "/direct", "prefix": True}, "service": "direct", "auth": {"require": "none"}},
        ],
        "mesh": {"ca": {"url": ca.url}, "sidecars": {"payments": {"inbound": f"127.0.0.1:{sidecar_port}"}}},
    }


class Mesh:
    def __init__(
        self, directory: Path, ca: CaProcess, upstream: RecordingUpstream, sidecar_port: int
    ) -> None:
        self.directory, self.ca, self.upstream, self.sidecar_port = directory, ca, upstream, sidecar_port
        self.started: list[GatewayThread | SidecarThread] = []

    def config(self, name: str, methods: list[str]) -> Path:
        path = self.directory / name
        path.write_text(yaml.safe_dump(mesh_config(self.ca, self.upstream.port, self.sidecar_port, methods)))
        return path

    def sidecar(self, config: Path, cert_service: str = "payments") -> SidecarThread:
        certs = self.directory / f"certs-{cert_service}"
        if not certs.exists():
            join_files(self.ca, cert_service, certs)
        sidecar = SidecarThread(config, "payments", certs).start()
        self.started.append(sidecar)
        return sidecar

    def gateway(self, config: Path) -> GatewayThread:
        gateway = GatewayThread(config).start()
        self.started.append(gateway)
        return gateway


@pytest.fixture
def logs() -> Iterator[LogLines]:
    lines = LogLines()
    log.configure("gateway", stream=lines)
    try:
        yield lines
    finally:
        log.configure("garrison", stream=sys.stderr)


@pytest.fixture
def mesh(
    tmp_path: Path, upstream: RecordingUpstream, monkeypatch: pytest.MonkeyPatch, logs: LogLines
) -> Iterator[Mesh]:
    ca = CaProcess(tmp_path / "ca").init().start()
    try:
        monkeypatch.setenv("GARRISON_JOIN_TOKEN", gateway_token(ca))
        with reserved_port() as sidecar_port:
            built = Mesh(tmp_path, ca, upstream, sidecar_port)
            try:
                yield built
            finally:
                close_clients()
                for started in reversed(built.started):
                    started.stop()
    finally:
        ca.stop()


def serial(path: Path) -> int:
    return x509.load_pem_x509_certificates(path.read_bytes())[0].serial_number


def test_a_route_to_a_service_with_a_sidecar_goes_through_it_as_the_gateway(
    mesh: Mesh, upstream: RecordingUpstream
) -> None:
    config = mesh.config("garrison.yaml", ["GET", "POST"])
    mesh.sidecar(config)
    gateway = mesh.gateway(config)
    client = plain(gateway.port)
    status, _ = answer(
        client, "POST", "/charges/7", {"garrison-caller": "spiffe://shop.local/svc/forged"}, b"{}"
    )
    assert status == 200
    [seen] = upstream.wait_for_requests(1)
    assert seen.path == b"/charges/7"
    assert seen.header_values("garrison-caller") == [GATEWAY_ID.encode()]  # the forged one was dropped
    # A service without a sidecar is still reached directly (no caller header: not through a sidecar).
    assert answer(client, "GET", "/direct/x")[0] == 200
    assert upstream.wait_for_requests(2)[1].header("garrison-caller") is None
    # The identity was joined with the token and saved: a restart renews it without a token.
    saved = gateway.identity.directory / "identity.pem"
    assert gateway.identity.spiffe_id == GATEWAY_ID and saved.exists()
    assert saved.stat().st_mode & 0o777 == 0o600


def test_a_restart_renews_the_saved_identity_instead_of_joining(
    mesh: Mesh, upstream: RecordingUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = mesh.config("garrison.yaml", ["GET"])
    mesh.sidecar(config)
    first = mesh.gateway(config)
    saved = first.identity.directory / "identity.pem"
    before = serial(saved)
    mesh.started.remove(first)
    first.stop()
    monkeypatch.delenv("GARRISON_JOIN_TOKEN")  # the token is spent anyway
    second = mesh.gateway(config)
    assert second.identity.spiffe_id == GATEWAY_ID
    second.run(second.identity.renew())
    assert serial(saved) != before
    assert answer(plain(second.port), "GET", "/charges")[0] == 200


def test_without_a_token_or_a_saved_identity_the_gateway_does_not_start(
    mesh: Mesh, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GARRISON_JOIN_TOKEN")
    with pytest.raises(JoinTokenNeeded, match="GARRISON_JOIN_TOKEN"):
        GatewayThread(mesh.config("garrison.yaml", ["GET"])).start()


def test_a_sidecar_presenting_another_services_certificate_is_a_502(
    mesh: Mesh, upstream: RecordingUpstream, logs: LogLines
) -> None:
    config = mesh.config("garrison.yaml", ["GET"])
    mesh.sidecar(config, cert_service="inventory")  # payments' address, inventory's certificate
    gateway = mesh.gateway(config)
    status, body = answer(plain(gateway.port), "GET", "/charges")
    assert status == 502, body
    [line] = logs.events("gateway.mesh.peer_mismatch")
    assert line["service"] == "payments" and "svc/inventory" in line["message"]
    assert upstream.requests == []  # nothing was sent


def test_the_sidecar_refuses_what_the_routes_do_not_give_the_gateway(
    mesh: Mesh, upstream: RecordingUpstream
) -> None:
    # The gateway's file allows POST; the sidecar's policy (its own file) derives GET only.
    mesh.sidecar(mesh.config("sidecar.yaml", ["GET"]))
    gateway = mesh.gateway(mesh.config("garrison.yaml", ["GET", "POST"]))
    client = plain(gateway.port)
    assert answer(client, "GET", "/charges/1")[0] == 200
    status, body = answer(client, "POST", "/charges/1", body=b"{}")
    assert status == 403 and b"mesh policy" in body
    assert [request.method for request in upstream.settle()] == [b"GET"]


def test_gateway_identity_rotation_under_load_fails_no_request(
    mesh: Mesh, upstream: RecordingUpstream
) -> None:
    config = mesh.config("garrison.yaml", ["GET"])
    mesh.sidecar(config)
    gateway = mesh.gateway(config)
    saved = gateway.identity.directory / "identity.pem"
    serials = {serial(saved)}
    statuses: list[int] = []
    done = threading.Event()

    def load() -> None:  # fresh upstream connections (max_idle 0): each handshake uses the current cert
        client = plain(gateway.port)
        while not done.is_set() or len(statuses) < 60:
            statuses.append(answer(client, "GET", "/charges")[0])

    worker = threading.Thread(target=load)
    worker.start()
    try:
        for _ in range(3):
            wait_until(lambda: len(statuses) >= 10 * len(serials), timeout=60, what="requests")
            gateway.run(gateway.identity.renew())
            serials.add(serial(saved))
    finally:
        done.set()
        worker.join(60)
    assert len(serials) == 4
    assert len(statuses) >= 60 and set(statuses) == {200}


# -- `tls.cert: auto` from the CA ------------------------------------------------------------------


def tls_config(directory: Path, with_mesh: bool) -> Path:
    config: dict[str, Any] = {
        "state_dir": str(directory / "state"),
        "trust_domain": "shop.local",
        "gateway": {"listen": "127.0.0.1:0", "admin": {"listen": "127.0.0.1:0"}, "watch_config": False},
        "services": {"app": {"targets": ["http://127.0.0.1:9"]}},
        "routes": [{"match": {"path": "/", "prefix": True}, "service": "app", "auth": {"require": "none"}}],
    }
    if with_mesh:
        config["mesh"] = {"ca": {"listen": "127.0.0.1:0"}}
    path = directory / "garrison.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def make_ca(state_dir: Path) -> AuthorityFiles:
    files = AuthorityFiles(state_dir / "ca", KeyEncryption.load(state_dir))
    files.init("shop.local", now=dt.datetime.now(dt.UTC))
    return files


def test_auto_certificates_chain_to_the_ca_bundle_when_a_ca_exists(tmp_path: Path) -> None:
    config = tls_config(tmp_path, with_mesh=True)
    make_ca(tmp_path / "state")
    gateway = GatewayThread(config).start()
    try:
        client = ssl.create_default_context(cafile=tmp_path / "state" / "ca" / "bundle.pem")
        with (
            socket.create_connection(("127.0.0.1", gateway.port), timeout=30) as raw,
            client.wrap_socket(raw, server_hostname="127.0.0.1") as tls,  # the IP name is checked too
        ):
            presented = x509.load_der_x509_certificate(tls.getpeercert(binary_form=True) or b"")
    finally:
        gateway.stop()
    names = presented.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.UniformResourceIdentifier) == [GATEWAY_ID]
    assert "localhost" in names.get_values_for_type(x509.DNSName)


def test_auto_certificates_follow_an_intermediate_rotation_and_stay_local_without_a_ca(
    tmp_path: Path,
) -> None:
    loaded = load_config(tls_config(tmp_path, with_mesh=True)).config
    tls, state = loaded.gateway.tls, loaded.state_dir
    assert CaIssuer.for_config(loaded, "identity") is None  # no CA made yet: the local one, as before
    local_cert, _ = resolve_certificate(tls, state / "identity", tmp_path)
    assert local_cert.name == "server.pem"
    files = make_ca(state)
    issuer = CaIssuer.for_config(loaded, "identity")
    assert issuer is not None and issuer.spiffe_id == "spiffe://shop.local/identity"
    first, _ = resolve_certificate(tls, state / "identity", tmp_path, issuer)
    first_serial = serial(first)
    assert resolve_certificate(tls, state / "identity", tmp_path, issuer)[0] == first
    assert serial(first) == first_serial  # still valid: not issued again
    files.rotate_intermediate(files.root(), "shop.local", now=dt.datetime.now(dt.UTC))
    resolve_certificate(tls, state / "identity", tmp_path, issuer)
    chain = x509.load_pem_x509_certificates(first.read_bytes())
    assert serial(first) != first_serial
    assert chain[0].issuer == files.issuing().certificate.subject
    assert chain[1] == files.issuing().certificate


def test_workers_share_one_join_and_each_reaches_the_sidecar(
    mesh: Mesh, upstream: RecordingUpstream, tmp_path: Path
) -> None:
    """`workers: 2` as a real process: the supervisor joins with the token, the workers load the saved
    identity (a second join would be refused: the token is spent)."""
    config = mesh_config(mesh.ca, upstream.port, mesh.sidecar_port, ["GET"])
    mesh.sidecar(mesh.config("sidecar.yaml", ["GET"]))
    config["gateway"]["workers"] = 2
    gateway = GatewayProcess(tmp_path / "gw", config).start()
    try:
        for _ in range(20):  # fresh client connections: SO_REUSEPORT spreads them over both workers
            client = plain(gateway.port)
            assert answer(client, "GET", "/charges")[0] == 200
            client.close()
        assert {r.header("garrison-caller") for r in upstream.settle()} == {GATEWAY_ID.encode()}
    finally:
        assert gateway.stop() == 0, gateway.stderr_tail()
