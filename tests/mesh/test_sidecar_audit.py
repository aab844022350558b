"""Real `garrison sidecar` processes (orders and payments, --cert-dir) emitting their audit events to an
intake that follows the contract (tests/helpers/audit_receiver.py) over mutual TLS with their workload
certificates: ``mesh.edge`` once for an allowed pair, ``mesh.call`` for a refused call, the emitter's
metrics on the admin listener, and a sidecar still within its 40 MB."""

from __future__ import annotations

import datetime as dt
import shutil
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from audit_receiver import IntakePki, Receiver, ThreadedReceiver
from cryptography.hazmat.primitives import serialization
from gateway_harness import RecordingUpstream
from mesh_sidecars import MeshPki, answer, close_clients, mtls, plain, svc, write_mesh
from ports import reserved_port
from sidecar_process import SidecarProcess
from waiting import wait_until

from garrison.events.schema import Event
from garrison.pki.authority import new_key, pem, sign_server

pytestmark = pytest.mark.process

SIDECAR_RSS_MAX = 40 * 1024 * 1024
Sidecars = dict[str, SidecarProcess]


def collector_pki(state: Path, pki: MeshPki) -> IntakePki:
    """The mesh CA's files as `garrison ca init` leaves them, and the collector's certificate from it
    (``spiffe://shop.local/audit``), as the collector's ``tls: auto`` gets it when the CA exists."""
    ca, tls = state / "ca", state / "audit" / "tls"
    ca.mkdir(parents=True)
    tls.mkdir(parents=True)
    (ca / "bundle.pem").write_bytes(pem(pki.root.certificate))
    (ca / "issuing.pem").write_bytes(pem(pki.intermediate.certificate))
    key = new_key()
    now = dt.datetime.now(dt.UTC)
    cert = sign_server(
        pki.intermediate, key.public_key(), "spiffe://shop.local/audit", addresses=["127.0.0.1"], now=now
    )
    (tls / "server.pem").write_bytes(pem(cert, pki.intermediate.certificate))
    (tls / "server.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return IntakePki(None, tls / "server.pem", tls / "server.key", "no-token-in-this-test")  # type: ignore[arg-type]


@pytest.fixture
def mesh(tmp_path: Path, upstream: RecordingUpstream) -> Iterator[tuple[ThreadedReceiver, Sidecars]]:
    pki = MeshPki()
    state = tmp_path / "state"
    receiver = ThreadedReceiver(Receiver(collector_pki(state, pki), client_ca=state / "ca" / "bundle.pem"))
    receiver.start()
    sidecars: dict[str, SidecarProcess] = {}
    try:
        with reserved_port() as orders_in, reserved_port() as payments_in:
            config = write_mesh(tmp_path, pki, upstream.port, orders_in, payments_in)
            audit = f'audit:\n  listen: "127.0.0.1:{receiver.receiver.port}"\n'
            audit += "  emitter: {flush_interval: 0.05}\n"
            config.write_text(config.read_text() + audit)
            for name in ("payments", "orders"):
                sidecars[name] = SidecarProcess(config, name, tmp_path / name)
        yield receiver, sidecars
    finally:
        close_clients()
        for process in sidecars.values():
            process.stop()
        receiver.stop()


def test_sidecars_report_edges_and_refusals_with_their_certificates(
    mesh: tuple[ThreadedReceiver, Sidecars], tmp_path: Path
) -> None:
    receiver, sidecars = mesh
    orders_out = plain(sidecars["orders"].port("outbound"))
    for _ in range(3):  # three allowed calls orders -> payments: one edge
        assert answer(orders_out, "GET", "/payments/charges/1")[0] == 200
    inbound = sidecars["payments"].port("inbound")
    assert answer(mtls(inbound, tmp_path / "inventory"), "GET", "/charges/1")[0] == 403  # no grant

    def of(type_: str) -> list[Event]:
        return [event for event in receiver.events() if event.type == type_]

    wait_until(lambda: of("mesh.call") and of("mesh.edge"), timeout=30, what=lambda: repr(receiver.events()))
    (edge,) = of("mesh.edge")
    assert (edge.component, edge.instance, edge.outcome) == ("mesh", "payments", "success")
    assert (edge.actor.service, edge.target) == (svc("orders"), "payments")
    (denied,) = of("mesh.call")
    assert (denied.outcome, denied.actor.service, denied.target) == ("denied", svc("inventory"), "payments")
    expected = {"direction": "inbound", "method": "GET", "path": "/charges/1", "reason": "policy"}
    assert denied.details == expected
    assert {batch.origin for batch in receiver.receiver.batches} == {svc("payments")}  # its certificate
    assert not any(batch.authorization for batch in receiver.receiver.batches)
    admin = sidecars["payments"].port("admin")

    def scrape() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=30) as response:
            return str(response.read().decode())

    # The receiver records a batch before it answers; the emitter counts it delivered on the answer.
    wait_until(lambda: "garrison_audit_delivered_total 2.0" in scrape(), timeout=30, what=scrape)
    metrics = scrape()
    assert 'garrison_audit_dropped_total{reason="spool_full"} 0.0' in metrics
    promtool = shutil.which("promtool")
    if promtool is not None:  # the Debian package `prometheus` (NOTES.md); CI has it
        checked = subprocess.run(
            [promtool, "check", "metrics"],
            input=metrics.encode(),
            capture_output=True,
            timeout=60,
            check=False,
        )
        assert checked.returncode == 0, checked.stdout.decode() + checked.stderr.decode()
    for process in sidecars.values():
        assert process.rss_bytes() <= SIDECAR_RSS_MAX
    assert sidecars["payments"].stop() == 0
    assert len(of("mesh.edge")) == 1  # nothing more, nothing twice
