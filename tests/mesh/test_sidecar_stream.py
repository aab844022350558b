"""Request bodies stream through the sidecar: decided at the head, forwarded as they arrive, with flow
control instead of a size cap (issue 9).

A 64 MiB upload goes app -> orders' sidecar (outbound) -> payments' sidecar (inbound, mTLS) -> an app
that hashes it, through two real `garrison sidecar` processes, and their resident memory stays far
below the body's size; a refused call is answered at its head; an upstream's early answer is
relayed; a client that stalls mid-body meets the body timeout; pipelined bodies keep their order.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import random
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hashing_app import HashingApp
from mesh_sidecars import MeshPki, SidecarThread, client_context, close_clients, write_mesh
from ports import reserved_port
from sidecar_process import SidecarProcess
from waiting import wait_until

from garrison.mesh.sidecar import relay
from garrison.mesh.sidecar import server as sidecar_server

pytestmark = pytest.mark.process

MIB = 1024 * 1024
UPLOAD_BLOCKS = 64  # of 1 MiB: the upload is 64 MiB
RSS_GROWTH_LIMIT = 16 * MIB  # a quarter of the body: buffering it would blow far past this


def blocks(count: int) -> Iterator[bytes]:
    """``count`` distinct 1 MiB blocks (each starts with its number, so reordering changes the hash)."""
    base = random.Random(9).randbytes(MIB)
    for i in range(count):
        yield i.to_bytes(8, "big") + base[8:]


def digest_of(count: int) -> str:
    h = hashlib.sha256()
    for block in blocks(count):
        h.update(block)
    return h.hexdigest()


class Response:
    def __init__(self, status: int, headers: dict[bytes, bytes], body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body


def read_response(sock: socket.socket | ssl.SSLSocket, buffer: bytearray) -> Response:
    """One response with a Content-Length body (or none) read from ``sock``; leftovers stay in ``buffer``."""
    while b"\r\n\r\n" not in buffer:
        data = sock.recv(65536)
        assert data, f"closed before a response head: {bytes(buffer)!r}"
        buffer += data
    head, _, rest = bytes(buffer).partition(b"\r\n\r\n")
    status_line, *lines = head.split(b"\r\n")
    headers = {
        name.strip().lower(): value.strip() for name, _, value in (line.partition(b":") for line in lines)
    }
    length = int(headers.get(b"content-length", b"0"))
    while len(rest) < length:
        data = sock.recv(65536)
        assert data, "closed inside a response body"
        rest += data
    buffer[:] = rest[length:]
    return Response(int(status_line.split()[1]), headers, rest[:length])


def reaches_eof(sock: socket.socket | ssl.SSLSocket) -> bool:
    """Whether the peer closes (EOF or reset) before the socket's timeout, discarding what it sends."""
    try:
        while sock.recv(65536):
            pass
    except (ConnectionResetError, ssl.SSLError):
        return True
    except TimeoutError:
        return False
    return True


# -- two sidecar processes: the 64 MiB uploads ---------------------------------------------------------
@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[tuple[SidecarProcess, SidecarProcess, HashingApp]]:
    """orders' and payments' sidecars as processes; payments' app hashes, slower than the client
    (it stops reading for 20 ms after every MiB), so the sidecars must hold or push back."""
    app = HashingApp(throttle=(MIB, 0.02)).start()
    started: list[SidecarProcess] = []
    try:
        with reserved_port() as orders_in, reserved_port() as payments_in:
            config = write_mesh(tmp_path, MeshPki(), app.port, orders_in, payments_in)
            started.append(SidecarProcess(config, "payments", tmp_path / "payments"))
            started.append(SidecarProcess(config, "orders", tmp_path / "orders"))
            yield started[1], started[0], app
    finally:
        close_clients()
        for process in started:
            process.stop()
        app.stop()


def _upload(port: int, chunked: bool) -> dict[str, object]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        if chunked:
            conn.request("POST", "/payments/charges", body=blocks(UPLOAD_BLOCKS), encode_chunked=True)
        else:
            length = {"content-length": str(UPLOAD_BLOCKS * MIB)}
            conn.request("POST", "/payments/charges", body=blocks(UPLOAD_BLOCKS), headers=length)
        response = conn.getresponse()
        body = response.read()
        assert response.status == 200, body
        answer: dict[str, object] = json.loads(body)
        return answer
    finally:
        conn.close()


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_64_mib_upload_streams_through_both_sidecars_in_bounded_memory(
    mesh: tuple[SidecarProcess, SidecarProcess, HashingApp], chunked: bool
) -> None:
    orders, payments, app = mesh
    warm = http.client.HTTPConnection("127.0.0.1", orders.port("outbound"), timeout=30)
    warm.request("POST", "/payments/charges", body=b"warm-up")  # TLS, pools and parsers in place
    assert warm.getresponse().status == 200
    warm.close()
    before = {name: p.rss_bytes() for name, p in (("orders", orders), ("payments", payments))}
    started = time.perf_counter()
    answer = _upload(orders.port("outbound"), chunked)
    seconds = time.perf_counter() - started
    after = {name: p.rss_bytes() for name, p in (("orders", orders), ("payments", payments))}
    assert answer == {
        "sha256": digest_of(UPLOAD_BLOCKS),
        "bytes": UPLOAD_BLOCKS * MIB,
        "framing": "chunked" if chunked else "length",
    }
    upload = app.uploads[-1]
    if chunked:
        assert upload.headers[b"transfer-encoding"] == b"chunked"
        assert b"content-length" not in upload.headers
    else:
        assert upload.headers[b"content-length"] == b"%d" % (UPLOAD_BLOCKS * MIB)
    growth = {name: after[name] - before[name] for name in before}
    # The figures, with -s (the app is throttled: 20 ms pause per MiB, so at least 1.3 s).
    print(f"64 MiB in {seconds:.2f} s; sidecar RSS before {before}, after {after}, growth {growth}")
    assert all(grown < RSS_GROWTH_LIMIT for grown in growth.values()), growth


# -- payments' sidecar in process: refusals, early answers, timeouts, pipelining -------------------------
@pytest.fixture
def app() -> Iterator[HashingApp]:
    server = HashingApp().start()
    try:
        yield server
    finally:
        server.stop()


def _start_payments(tmp_path: Path, app: HashingApp, read_timeout: str | None = None) -> SidecarThread:
    with reserved_port() as orders_in, reserved_port() as payments_in:
        config = write_mesh(tmp_path, MeshPki(), app.port, orders_in, payments_in)
    if read_timeout is not None:
        text = config.read_text().replace(
            "  payments:\n    targets:", f"  payments:\n    read_timeout: {read_timeout}\n    targets:"
        )
        config.write_text(text)
    return SidecarThread(config, "payments", tmp_path / "payments").start()


@pytest.fixture
def payments(tmp_path: Path, app: HashingApp, monkeypatch: pytest.MonkeyPatch) -> Iterator[SidecarThread]:
    # The seams the timeout tests need: a short body timeout, and a sweeper that looks often
    # enough to see it pass (module constants, read at each use).
    monkeypatch.setattr(relay, "BODY_TIMEOUT", 0.3)
    monkeypatch.setattr(sidecar_server, "SWEEP_INTERVAL", 0.05)
    sidecar = _start_payments(tmp_path, app)
    try:
        yield sidecar
    finally:
        close_clients()
        sidecar.stop()


def _connect(sidecar: SidecarThread, directory: Path, timeout: float = 10) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", sidecar.port("inbound")), timeout=timeout)
    return client_context(directory).wrap_socket(raw)


def test_a_denied_upload_is_refused_at_its_head_without_its_body(
    payments: SidecarThread, tmp_path: Path, app: HashingApp
) -> None:
    with _connect(payments, tmp_path / "inventory") as tls:  # inventory may not call payments
        tls.sendall(
            b"POST /charges HTTP/1.1\r\nhost: payments\r\ncontent-length: %d\r\n"
            b"expect: 100-continue\r\n\r\n" % (64 * MIB)
        )
        buffer = bytearray()
        response = read_response(tls, buffer)  # no 100 Continue first: the body is never asked for
        assert response.status == 403
        assert json.loads(response.body)["error"] == "forbidden"
        assert response.headers[b"connection"] == b"close"  # its body would follow: never a next request
        assert not buffer
        assert reaches_eof(tls)
    assert app.uploads == []


def test_an_allowed_upload_with_expect_gets_100_continue_once_the_upstream_is_ready(
    payments: SidecarThread, tmp_path: Path, app: HashingApp
) -> None:
    body = b"x" * (3 * MIB)
    with _connect(payments, tmp_path / "orders") as tls:
        tls.sendall(
            b"POST /charges HTTP/1.1\r\nhost: payments\r\ncontent-length: %d\r\n"
            b"expect: 100-continue\r\n\r\n" % len(body)
        )
        buffer = bytearray()
        assert read_response(tls, buffer).status == 100
        tls.sendall(body)
        response = read_response(tls, buffer)
        assert response.status == 200
        assert json.loads(response.body)["sha256"] == hashlib.sha256(body).hexdigest()
        assert b"connection" not in response.headers  # the body was all read: keep-alive
    (upload,) = app.uploads
    assert b"expect" not in upload.headers


def test_an_upstreams_early_answer_is_relayed_and_the_connection_closes(
    payments: SidecarThread, tmp_path: Path, app: HashingApp
) -> None:
    app.early = 413
    with _connect(payments, tmp_path / "orders") as tls:
        tls.sendall(b"POST /charges HTTP/1.1\r\nhost: payments\r\ncontent-length: %d\r\n\r\n" % (64 * MIB))
        tls.sendall(b"y" * MIB)  # a first part only: the answer comes before the rest is sent
        response = read_response(tls, bytearray())
        assert response.status == 413
        assert json.loads(response.body) == {"error": "early"}
        assert response.headers[b"connection"] == b"close"
        assert reaches_eof(tls)


def test_a_client_that_stalls_mid_body_meets_the_body_timeout(
    payments: SidecarThread, tmp_path: Path, app: HashingApp
) -> None:
    with _connect(payments, tmp_path / "orders") as tls:
        tls.sendall(b"POST /charges HTTP/1.1\r\nhost: payments\r\ncontent-length: 1000\r\n\r\n" + b"z" * 10)
        response = read_response(tls, bytearray())  # nothing more is sent: BODY_TIMEOUT (0.3 s) passes
        assert response.status == 408
        assert json.loads(response.body)["error"] == "request_timeout"
        assert response.headers[b"connection"] == b"close"
        assert reaches_eof(tls)
    assert app.uploads == []  # the app's connection was dropped mid-body, never completed


def test_pipelined_uploads_are_answered_in_order(
    payments: SidecarThread, tmp_path: Path, app: HashingApp
) -> None:
    bodies = [b"a" * 300_000, b"b" * 5, b"c" * 700_000]
    requests = []
    for i, body in enumerate(bodies):
        if i == 1:  # one of them chunked
            framed = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
            requests.append(
                b"POST /charges HTTP/1.1\r\nhost: p\r\ntransfer-encoding: chunked\r\n\r\n" + framed
            )
        else:
            requests.append(
                b"POST /charges HTTP/1.1\r\nhost: p\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)
            )
    with _connect(payments, tmp_path / "orders") as tls:
        tls.sendall(b"".join(requests))
        buffer = bytearray()
        digests = [json.loads(read_response(tls, buffer).body)["sha256"] for _ in bodies]
    assert digests == [hashlib.sha256(body).hexdigest() for body in bodies]
    wait_until(lambda: len(app.uploads) == 3, what="three uploads")
    assert [upload.framing for upload in app.uploads] == ["length", "chunked", "length"]


def test_an_upstream_failure_mid_body_is_a_502_and_the_connection_closes(
    payments: SidecarThread, tmp_path: Path, app: HashingApp
) -> None:
    app.abort_after = 256 * 1024  # the app resets its connection a quarter MiB into the body
    with _connect(payments, tmp_path / "orders") as tls:
        tls.sendall(b"POST /charges HTTP/1.1\r\nhost: payments\r\ncontent-length: %d\r\n\r\n" % (64 * MIB))
        tls.sendall(b"w" * MIB)
        response = read_response(tls, bytearray())
        assert response.status == 502  # never retried: its body has gone
        assert json.loads(response.body)["error"] == "bad_gateway"
        assert response.headers[b"connection"] == b"close"
        assert reaches_eof(tls)


def test_an_upstream_that_stops_draining_the_body_meets_its_read_timeout(
    tmp_path: Path, app: HashingApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The client is paused by flow control, so its body timeout (0.3 s) cannot fire; the upstream's
    read timeout (1 s) does: the app stopped reading after 64 KiB."""
    monkeypatch.setattr(relay, "BODY_TIMEOUT", 0.3)
    monkeypatch.setattr(sidecar_server, "SWEEP_INTERVAL", 0.05)
    app.throttle = (64 * 1024, 3600.0)
    sidecar = _start_payments(tmp_path, app, read_timeout="1s")
    try:
        with _connect(sidecar, tmp_path / "orders", timeout=0.5) as tls:
            tls.sendall(
                b"POST /charges HTTP/1.1\r\nhost: payments\r\ncontent-length: %d\r\n\r\n" % (1024 * MIB)
            )
            sent = 0
            piece = b"s" * (64 * 1024)
            with pytest.raises(TimeoutError):  # sockets fill up, then the sidecar stops reading
                while sent < 1024 * MIB:
                    tls.sendall(piece)
                    sent += len(piece)
            tls.settimeout(10)
            response = read_response(tls, bytearray())
            assert response.status == 504
            assert json.loads(response.body)["error"] == "gateway_timeout"
            assert response.headers[b"connection"] == b"close"
    finally:
        close_clients()
        sidecar.stop()


def test_client_chunk_extensions_and_trailers_are_not_passed_on(
    payments: SidecarThread, tmp_path: Path, app: HashingApp
) -> None:
    body = b"hello, chunked world"
    framed = b"5;ext=1\r\n%s\r\n%x\r\n%s\r\n0\r\nx-trailer: sneaky\r\n\r\n" % (
        body[:5],
        len(body) - 5,
        body[5:],
    )
    with _connect(payments, tmp_path / "orders") as tls:
        tls.sendall(b"POST /charges HTTP/1.1\r\nhost: p\r\ntransfer-encoding: chunked\r\n\r\n" + framed)
        response = read_response(tls, bytearray())
    assert response.status == 200
    assert json.loads(response.body)["sha256"] == hashlib.sha256(body).hexdigest()
    (upload,) = app.uploads
    assert upload.framing == "chunked"
    assert b"x-trailer" not in upload.headers  # the app's parser would have seen a forwarded trailer


def test_a_slow_upload_is_not_an_upstream_timeout(tmp_path: Path, app: HashingApp) -> None:
    """The upstream's read timeout (0.3 s) does not run while the client is still sending: gaps
    longer than it, well within the body timeout, still make a 200."""
    sidecar = _start_payments(tmp_path, app, read_timeout="0.3s")
    try:
        with _connect(sidecar, tmp_path / "orders") as tls:
            tls.sendall(b"POST /charges HTTP/1.1\r\nhost: payments\r\ncontent-length: 3\r\n\r\n")
            for piece in (b"a", b"b", b"c"):
                time.sleep(0.5)  # the gap under test: longer than the upstream's read timeout
                tls.sendall(piece)
            response = read_response(tls, bytearray())
        assert response.status == 200
        assert json.loads(response.body)["sha256"] == hashlib.sha256(b"abc").hexdigest()
    finally:
        close_clients()
        sidecar.stop()
