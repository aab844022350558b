"""Two sidecars, orders -> payments: the outbound side (mTLS origination, the peer's SPIFFE ID checked),
quarantine both ways, and certificate rotation in place under load with zero failed requests."""

from __future__ import annotations

import http.client
import json
import ssl
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography import x509
from gateway_harness import RecordingUpstream
from mesh_sidecars import (
    LogLines,
    MeshPki,
    SidecarThread,
    answer,
    close_clients,
    mtls,
    plain,
    svc,
    write_mesh,
)
from ports import reserved_port

from garrison.mesh.sidecar.identity import StaticState
from garrison.telemetry import logging as log

pytestmark = pytest.mark.process

Pair = tuple[SidecarThread, SidecarThread]


@pytest.fixture
def logs() -> Iterator[LogLines]:
    lines = LogLines()
    log.configure("sidecar", stream=lines)
    try:
        yield lines
    finally:
        log.configure("garrison", stream=sys.stderr)


@pytest.fixture
def pki() -> MeshPki:
    return MeshPki()


@pytest.fixture
def start_pair(
    tmp_path: Path, pki: MeshPki, upstream: RecordingUpstream, logs: LogLines
) -> Iterator[Callable[[str], Pair]]:
    """Starts orders' and payments' sidecars; payments' runs with the certificate of ``as_service``."""
    started: list[SidecarThread] = []
    with reserved_port() as orders_in, reserved_port() as payments_in:
        config = write_mesh(tmp_path, pki, upstream.port, orders_in, payments_in)

        def start(as_service: str = "payments") -> Pair:
            """``as_service`` empty: payments' sidecar is not started (its port refuses)."""
            orders = SidecarThread(config, "orders", tmp_path / "orders").start()
            started.append(orders)
            if not as_service:
                return orders, orders
            payments = SidecarThread(config, "payments", tmp_path / as_service).start()
            started.append(payments)
            return orders, payments

        try:
            yield start
        finally:
            close_clients()  # first: draining waits for open connections
            for sidecar in started:
                sidecar.stop()


def test_outbound_call_reaches_the_peer_app_over_mtls(
    start_pair: Callable[[str], Pair], upstream: RecordingUpstream
) -> None:
    orders, _ = start_pair("payments")
    conn = plain(orders.port("outbound"))
    status, _ = answer(conn, "GET", "/payments/charges/7?x=1", {"garrison-caller": svc("payments")})
    assert status == 200
    assert answer(conn, "POST", "/payments/charges", body=b'{"amount": 5}')[0] == 200
    first, second = upstream.wait_for_requests(2)
    assert first.target == b"/charges/7?x=1"
    assert first.header_values("garrison-caller") == [svc("orders").encode()]
    assert second.body == b'{"amount": 5}'


def test_outbound_call_the_policy_denies_comes_back_403(
    start_pair: Callable[[str], Pair], upstream: RecordingUpstream
) -> None:
    orders, _ = start_pair("payments")
    status, body = answer(plain(orders.port("outbound")), "DELETE", "/payments/charges/7")
    assert status == 403
    assert json.loads(body)["error"] == "forbidden"
    assert upstream.requests == []


def test_an_unknown_peer_is_404(start_pair: Callable[[str], Pair]) -> None:
    orders, _ = start_pair("payments")
    assert answer(plain(orders.port("outbound")), "GET", "/billing/x")[0] == 404


def test_a_server_presenting_another_services_certificate_is_refused(
    start_pair: Callable[[str], Pair], upstream: RecordingUpstream, logs: LogLines
) -> None:
    orders, _ = start_pair("inventory")  # payments' address answers with inventory's certificate
    status, body = answer(plain(orders.port("outbound")), "GET", "/payments/charges/1")
    assert status == 502
    assert json.loads(body)["error"] == "bad_gateway"
    (mismatch,) = logs.events("mesh.peer.mismatch")
    assert mismatch["expected"] == svc("payments")
    assert mismatch["presented"] == svc("inventory")
    assert upstream.requests == []


def test_a_dead_peer_is_retried_then_its_breaker_opens(start_pair: Callable[[str], Pair]) -> None:
    orders, _ = start_pair("")
    conn = plain(orders.port("outbound"))
    statuses = [answer(conn, "GET", "/payments/charges/1")[0] for _ in range(3)]
    conn.request("GET", "/payments/charges/1")
    refused = conn.getresponse()
    refused.read()
    statuses.append(refused.status)
    assert int(refused.headers["retry-after"]) >= 1
    # Each GET is tried twice (one retry); five failures in a row open the breaker: the third
    # request's first attempt is the fifth failure, its retry finds the circuit open (503), and so
    # does every request after it, without a connection attempt.
    assert statuses == [502, 502, 503, 503]
    assert orders.component.metrics.upstream_errors[("payments", "ConnectionRefusedError")] == 5


def test_quarantine_cuts_a_service_off_both_ways_at_once(
    start_pair: Callable[[str], Pair], tmp_path: Path, upstream: RecordingUpstream, logs: LogLines
) -> None:
    orders, payments = start_pair("payments")
    outbound = plain(orders.port("outbound"))
    inbound = mtls(payments.port("inbound"), tmp_path / "orders")
    assert answer(outbound, "GET", "/payments/charges/1")[0] == 200
    assert answer(inbound, "GET", "/charges/1")[0] == 200
    quarantine = StaticState(quarantined=frozenset({"payments"}))
    published = time.monotonic()
    payments.on_loop(lambda: payments.identity.publish(quarantine))
    orders.on_loop(lambda: orders.identity.publish(quarantine))
    # Ordering, not wall clock: every request sent after the state was applied is refused, on
    # connections opened before it too.
    assert answer(inbound, "GET", "/charges/2")[0] == 403  # payments refuses its callers
    assert answer(outbound, "GET", "/payments/charges/2")[0] == 403  # orders refuses to call payments
    refused_after = time.monotonic() - published
    reasons = sorted(line["reason"] for line in logs.events("mesh.call.denied"))
    assert reasons == ["peer_quarantined", "quarantined"]
    assert len(upstream.requests) == 2
    print(f"quarantine: publish -> both sides refused in {refused_after * 1000:.1f} ms")


class LoadLoop:
    """Threads calling through orders' outbound side (keep-alive) and straight into payments'
    inbound side (a new connection, so a new handshake, per request) until told to stop."""

    def __init__(self, orders: SidecarThread, payments: SidecarThread, orders_dir: Path) -> None:
        self.outbound = orders.port("outbound")
        self.inbound = payments.port("inbound")
        self.orders_dir = orders_dir
        self.stop = threading.Event()
        self.lock = threading.Condition()
        self.done = 0
        self.failures: list[str] = []
        self.threads = [threading.Thread(target=self._through_outbound) for _ in range(3)]
        self.threads.append(threading.Thread(target=self._new_handshakes))

    def count(self, ok: bool, what: str) -> None:
        with self.lock:
            self.done += 1
            if not ok:
                self.failures.append(what)
            self.lock.notify_all()

    def _through_outbound(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.outbound, timeout=30)
        try:
            while not self.stop.is_set():
                try:
                    status, _ = answer(conn, "GET", "/payments/charges/1")
                    self.count(status == 200, f"outbound {status}")
                except (OSError, http.client.HTTPException) as exc:
                    self.count(False, f"outbound {exc!r}")
                    conn.close()
        finally:
            conn.close()

    def _new_handshakes(self) -> None:
        while not self.stop.is_set():
            conn = mtls(self.inbound, self.orders_dir)
            try:
                status, _ = answer(conn, "GET", "/charges/1", {"connection": "close"})
                self.count(status == 200, f"inbound {status}")
            except (OSError, http.client.HTTPException) as exc:
                self.count(False, f"inbound {exc!r}")
            finally:
                conn.close()

    def wait_for(self, more: int) -> None:
        """Until ``more`` further requests have completed (a count, not a time)."""
        with self.lock:
            target = self.done + more
            # The timeout is a ceiling for a loaded machine, never the expected duration.
            reached = self.lock.wait_for(lambda: self.done >= target or len(self.failures) > 10, timeout=120)
        assert reached, f"the load loop stalled at {self.done} requests"


def _presented_serial(port: int, client_dir: Path) -> int:
    conn = mtls(port, client_dir)
    answer(conn, "GET", "/charges/1")
    sock = conn.sock
    assert isinstance(sock, ssl.SSLSocket)
    der = sock.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def test_three_rotations_under_load_fail_no_request(
    start_pair: Callable[[str], Pair], tmp_path: Path, pki: MeshPki
) -> None:
    orders, payments = start_pair("payments")
    pki.issue(tmp_path / "client", svc("orders"))  # the test's own client, not rotated under it
    load = LoadLoop(orders, payments, tmp_path / "client")
    for thread in load.threads:
        thread.start()
    try:
        load.wait_for(50)
        for _ in range(3):
            new_payments = pki.issue(tmp_path / "payments", svc("payments"))
            pki.issue(tmp_path / "orders", svc("orders"))
            payments.on_loop(payments.identity.reload)
            orders.on_loop(orders.identity.reload)
            # New handshakes present the new certificate; open connections carried on meanwhile.
            assert (
                _presented_serial(payments.port("inbound"), tmp_path / "orders") == new_payments.serial_number
            )
            load.wait_for(50)
    finally:
        load.stop.set()
        for thread in load.threads:
            thread.join(30)
    assert load.failures == []
    assert load.done >= 200
