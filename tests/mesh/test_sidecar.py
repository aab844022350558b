"""The sidecar's inbound side: real mTLS with certificates minted by pki/authority, the policy on the
normalised path, the caller's identity in Garrison-owned headers, handshake refusals, revocation."""

from __future__ import annotations

import datetime as dt
import json
import socket
import ssl
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from gateway_harness import RecordingUpstream, Reply
from mesh_sidecars import (
    LogLines,
    MeshPki,
    SidecarThread,
    answer,
    client_context,
    close_clients,
    mtls,
    svc,
    write_mesh,
)
from ports import reserved_port

from garrison.mesh.policy import gateway_id
from garrison.mesh.sidecar.identity import StaticState
from garrison.telemetry import logging as log

pytestmark = pytest.mark.process


@pytest.fixture
def logs() -> Iterator[LogLines]:
    lines = LogLines()
    log.configure("sidecar", stream=lines)
    try:
        yield lines
    finally:
        log.configure("garrison", stream=sys.stderr)


@pytest.fixture(autouse=True)
def clients() -> Iterator[None]:
    yield
    close_clients()


@pytest.fixture
def pki() -> MeshPki:
    return MeshPki()


@pytest.fixture
def payments(tmp_path: Path, pki: MeshPki, upstream, logs: LogLines) -> Iterator[SidecarThread]:
    """The payments sidecar (its app: the recording upstream); orders' and inventory's certs issued."""
    with reserved_port() as orders_in, reserved_port() as payments_in:
        config = write_mesh(tmp_path, pki, upstream.port, orders_in, payments_in)
        sidecar = SidecarThread(config, "payments", tmp_path / "payments").start()
        try:
            yield sidecar
        finally:
            close_clients()  # first: draining waits for open connections
            sidecar.stop()


def test_allowed_call_reaches_the_app_with_the_callers_identity_only(
    payments: SidecarThread,
    tmp_path: Path,
    upstream: RecordingUpstream,
) -> None:
    conn = mtls(payments.port("inbound"), tmp_path / "orders")
    spoofed = {
        "garrison-caller": svc("admin"),
        "Garrison-Caller-Service": "admin",
        "X-Garrison-Caller": "x",
        "garrison_caller": svc("admin"),  # CGI-style frameworks read it as garrison-caller
    }
    status, _ = answer(conn, "GET", "/charges/42?full=1", spoofed)
    assert status == 200
    (seen,) = upstream.wait_for_requests(1)
    assert seen.target == b"/charges/42?full=1"
    assert seen.header_values("garrison-caller") == [svc("orders").encode()]
    assert seen.header_values("garrison-caller-service") == [b"orders"]
    assert seen.header_values("x-garrison-caller") == []
    assert seen.header_values("garrison_caller") == []
    assert seen.header("traceparent") is not None


@pytest.mark.parametrize(
    ("caller", "method", "path"),
    [
        ("inventory", "GET", "/charges/42"),  # a caller the policy does not list
        ("orders", "DELETE", "/charges/42"),  # a method not allowed
        ("orders", "POST", "/charges/42"),  # POST only on /charges itself
        ("orders", "GET", "/refunds"),  # a path not allowed
        ("orders", "GET", "/charges/../admin"),  # decided as /admin
        ("orders", "GET", "/charges/%2e%2e/admin"),  # decoded, then decided as /admin
        ("orders", "GET", "/charges/x/%2E%2E/%2e%2e/admin"),
        ("orders", "GET", "//admin//charges"),  # slashes merge: /admin/charges
    ],
)
def test_denied_calls_get_a_json_403_and_an_audit_line(
    payments: SidecarThread,
    tmp_path: Path,
    upstream: RecordingUpstream,
    logs: LogLines,
    caller: str,
    method: str,
    path: str,
) -> None:
    conn = mtls(payments.port("inbound"), tmp_path / caller)
    status, body = answer(conn, method, path)
    assert status == 403
    assert json.loads(body)["error"] == "forbidden"
    (denied,) = logs.events("mesh.call.denied")
    assert denied["caller"] == svc(caller)
    assert denied["callee"] == "payments"
    assert denied["method"] == method
    assert len(denied["trace_id"]) == 32
    assert upstream.requests == []


def test_double_slashes_merge_as_the_normaliser_says(
    payments: SidecarThread,
    tmp_path: Path,
    upstream: RecordingUpstream,
) -> None:
    conn = mtls(payments.port("inbound"), tmp_path / "orders")
    assert answer(conn, "GET", "//charges///42")[0] == 200
    (seen,) = upstream.wait_for_requests(1)
    assert seen.target == b"/charges/42"


def test_a_target_that_does_not_normalise_is_refused_before_the_policy(
    payments: SidecarThread,
    tmp_path: Path,
    upstream: RecordingUpstream,
) -> None:
    conn = mtls(payments.port("inbound"), tmp_path / "orders")
    assert answer(conn, "GET", "/charges/..%2fadmin")[0] == 400
    assert upstream.requests == []


def _refused_in_handshake(port: int, directory: Path, bundle: Path) -> None:
    with pytest.raises((ssl.SSLError, ConnectionError)):
        answer(mtls(port, directory, bundle), "GET", "/charges/1")


def test_a_client_certificate_from_another_ca_is_refused_in_the_handshake(
    payments: SidecarThread,
    tmp_path: Path,
    upstream: RecordingUpstream,
) -> None:
    other = MeshPki()
    other.issue(tmp_path / "impostor", svc("orders"))  # the right name, the wrong CA
    _refused_in_handshake(payments.port("inbound"), tmp_path / "impostor", tmp_path / "orders" / "bundle.pem")
    assert upstream.requests == []


def test_an_expired_client_certificate_is_refused_in_the_handshake(
    payments: SidecarThread,
    tmp_path: Path,
    pki: MeshPki,
    upstream: RecordingUpstream,
) -> None:
    past = dt.datetime.now(dt.UTC) - dt.timedelta(hours=3)
    pki.issue(tmp_path / "expired", svc("orders"), now=past, hours=1)
    _refused_in_handshake(payments.port("inbound"), tmp_path / "expired", tmp_path / "orders" / "bundle.pem")
    assert upstream.requests == []


def test_a_revoked_identity_is_refused_on_open_and_new_connections(
    payments: SidecarThread,
    tmp_path: Path,
    upstream: RecordingUpstream,
    logs: LogLines,
) -> None:
    conn = mtls(payments.port("inbound"), tmp_path / "orders")
    assert answer(conn, "GET", "/charges/1")[0] == 200
    payments.on_loop(lambda: payments.identity.publish(StaticState(revoked=frozenset({svc("orders")}))))
    assert answer(conn, "GET", "/charges/2")[0] == 403  # the same keep-alive connection
    assert answer(mtls(payments.port("inbound"), tmp_path / "orders"), "GET", "/charges/3")[0] == 403
    assert [line["reason"] for line in logs.events("mesh.call.denied")] == ["revoked", "revoked"]
    assert len(upstream.requests) == 1


def test_expect_100_continue_is_answered_before_the_body(
    payments: SidecarThread, tmp_path: Path, upstream: RecordingUpstream
) -> None:
    context = client_context(tmp_path / "orders")
    with (
        socket.create_connection(("127.0.0.1", payments.port("inbound")), timeout=30) as raw,
        context.wrap_socket(raw) as tls,
    ):
        tls.sendall(
            b"POST /charges HTTP/1.1\r\nhost: payments\r\ncontent-length: 5\r\nexpect: 100-continue\r\n\r\n"
        )
        assert tls.recv(4096).startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
        tls.sendall(b"hello")
        assert tls.recv(4096).startswith(b"HTTP/1.1 200 ")
    (seen,) = upstream.wait_for_requests(1)
    assert seen.body == b"hello"
    assert seen.header("expect") is None


def test_the_gateway_identity_may_call_what_the_routes_send_here(
    tmp_path: Path, pki: MeshPki, upstream: RecordingUpstream
) -> None:
    with reserved_port() as orders_in, reserved_port() as payments_in:
        config = write_mesh(tmp_path, pki, upstream.port, orders_in, payments_in)
        routes = (
            "routes:\n  - match: {path: /api/pay, prefix: true, methods: [GET]}\n"
            "    service: payments\n    auth: {require: none}\n"
        )
        config.write_text(config.read_text() + routes)
        pki.issue(tmp_path / "gateway", gateway_id("shop.local"))
        sidecar = SidecarThread(config, "payments", tmp_path / "payments").start()
        try:
            conn = mtls(sidecar.port("inbound"), tmp_path / "gateway")
            assert answer(conn, "GET", "/api/pay/1")[0] == 200
            assert answer(conn, "POST", "/api/pay/1")[0] == 403  # the route allows GET only
            assert answer(conn, "GET", "/charges/1")[0] == 403  # no route sends that here
            (seen,) = upstream.wait_for_requests(1)
            assert seen.header_values("garrison-caller") == [gateway_id("shop.local").encode()]
            assert seen.header_values("garrison-caller-service") == []  # not a service identity
        finally:
            close_clients()
            sidecar.stop()


def test_a_slow_app_is_a_504(tmp_path: Path, pki: MeshPki, upstream: RecordingUpstream) -> None:
    with reserved_port() as orders_in, reserved_port() as payments_in:
        config = write_mesh(tmp_path, pki, upstream.port, orders_in, payments_in)
        text = config.read_text().replace(
            "  payments:\n    targets:", "  payments:\n    read_timeout: 0.2s\n    targets:"
        )
        config.write_text(text)
        upstream.reply = Reply(delay=30.0)  # far past the read timeout: its expiry is what answers
        sidecar = SidecarThread(config, "payments", tmp_path / "payments").start()
        try:
            status, body = answer(mtls(sidecar.port("inbound"), tmp_path / "orders"), "GET", "/charges/1")
            assert status == 504
            assert json.loads(body)["error"] == "gateway_timeout"
        finally:
            close_clients()
            sidecar.stop()
