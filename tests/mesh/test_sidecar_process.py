"""`garrison sidecar` as a process: ready file, SIGHUP reloading the call policy (and a certificate from
--cert-dir, in place), per-edge metrics on the admin listener, SIGTERM exiting 0."""

from __future__ import annotations

import signal
import ssl
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from gateway_harness import GARRISON, RecordingUpstream
from mesh_sidecars import MeshPki, answer, close_clients, mtls, svc, write_mesh
from ports import reserved_port
from prometheus_client.parser import text_string_to_metric_families
from sidecar_process import SidecarProcess
from waiting import wait_until

pytestmark = pytest.mark.process


@pytest.fixture
def payments(tmp_path: Path, upstream: RecordingUpstream) -> Iterator[tuple[SidecarProcess, Path, MeshPki]]:
    pki = MeshPki()
    with reserved_port() as orders_in, reserved_port() as payments_in:
        config = write_mesh(tmp_path, pki, upstream.port, orders_in, payments_in)
        process = SidecarProcess(config, "payments", tmp_path / "payments")
        try:
            yield process, config, pki
        finally:
            close_clients()
            process.stop()


def _serial(conn: object) -> int:
    sock = getattr(conn, "sock", None)
    assert isinstance(sock, ssl.SSLSocket)
    der = sock.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def test_sighup_reloads_the_policy_and_the_certificate(
    payments: tuple[SidecarProcess, Path, MeshPki], tmp_path: Path, upstream: RecordingUpstream
) -> None:
    process, config, pki = payments
    inbound = process.port("inbound")
    assert answer(mtls(inbound, tmp_path / "inventory"), "GET", "/charges/1")[0] == 403
    config.write_text(
        config.read_text().replace(
            "  inventory:\n", "  inventory:\n    calls:\n      - {service: payments, methods: [GET]}\n"
        )
    )
    rotated = pki.issue(tmp_path / "payments", svc("payments"))
    process.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: process.events("sidecar.reloaded"), timeout=30, what="sidecar.reloaded")
    conn = mtls(inbound, tmp_path / "inventory")
    assert answer(conn, "GET", "/charges/1")[0] == 200
    assert _serial(conn) == rotated.serial_number  # a new handshake: the new certificate
    (seen,) = upstream.wait_for_requests(1)
    assert seen.header_values("garrison-caller") == [svc("inventory").encode()]
    with urllib.request.urlopen(f"http://127.0.0.1:{process.port('admin')}/metrics", timeout=30) as response:
        metrics = response.read().decode()
    assert (
        'garrison_mesh_requests_total{callee="payments",caller="inventory",decision="denied",'
        'direction="inbound",status="4xx"} 1.0' in metrics
    )
    assert (
        'garrison_mesh_requests_total{callee="payments",caller="inventory",decision="allowed",'
        'direction="inbound",status="2xx"} 1.0' in metrics
    )
    expiry = [
        (sample.labels, sample.value)
        for family in text_string_to_metric_families(metrics)
        for sample in family.samples
        if sample.name == "garrison_mesh_certificate_expiry_timestamp_seconds"
    ]
    assert expiry == [({"service": "payments"}, rotated.not_valid_after_utc.timestamp())]
    assert process.stop() == 0


def test_a_bad_file_on_sighup_is_refused_and_the_policy_kept(
    payments: tuple[SidecarProcess, Path, MeshPki], tmp_path: Path
) -> None:
    """The file is validated in a child (mesh/sidecar/settings.py): its refusal reaches the log with
    the loader's own wording, and the running policy stays."""
    process, config, _ = payments
    inbound = process.port("inbound")
    assert answer(mtls(inbound, tmp_path / "orders"), "POST", "/charges")[0] == 200
    good = config.read_text()
    config.write_text(good.replace("methods: [POST], paths: [/charges]", "methods: [POST], pathz: [/x]"))
    process.proc.send_signal(signal.SIGHUP)
    (failed,) = wait_until(lambda: process.events("sidecar.reload.failed"), timeout=30, what="reload.failed")
    assert isinstance(failed["problems"], list)
    assert "services.orders.calls[0].pathz: unknown key" in failed["problems"][0]
    assert answer(mtls(inbound, tmp_path / "orders"), "POST", "/charges")[0] == 200  # the old policy
    assert answer(mtls(inbound, tmp_path / "inventory"), "POST", "/charges")[0] == 403
    assert process.stop() == 0


def test_a_bad_file_refuses_the_start_as_the_loader_words_it(tmp_path: Path) -> None:
    config = tmp_path / "garrison.yaml"
    config.write_text("trust_domain: shop.local\nservices: {}\nmesh: {sidecars: {payments: {}}}\n")
    done = subprocess.run(
        [str(GARRISON), "sidecar", "-c", str(config), "--service", "payments"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert f"cannot start: {config}:3: mesh.sidecars.payments.inbound: Field required" in done.stderr
    assert f"Run `garrison check -c {config}` for details." in done.stderr
