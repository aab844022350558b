"""TLS termination with ``cert: auto`` and the plaintext redirect listener, over real sockets."""

from __future__ import annotations

import re
import signal
import socket
import ssl
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from gateway_harness import (
    GatewayProcess,
    RawClient,
    RecordingUpstream,
    forwarded_params,
    get,
    tls_client_context,
    wait_until,
)

HSTS = b"max-age=31536000; includeSubDomains"


@pytest.fixture(scope="module")
def gw(module_gateway_factory, module_upstream: RecordingUpstream) -> GatewayProcess:
    overrides = {
        "gateway": {"tls": {"cert": "auto", "insecure_disable": False}, "redirect_http": "127.0.0.1:0"}
    }
    return module_gateway_factory(module_upstream, overrides)


@pytest.fixture
def upstream(module_upstream: RecordingUpstream) -> Iterator[RecordingUpstream]:
    module_upstream.settle()  # let a previous test's late arrivals land before forgetting them
    module_upstream.reset()
    yield module_upstream
    module_upstream.reset()


def test_auto_certificate_files(gw: GatewayProcess) -> None:
    tls_dir = gw.state_dir / "tls"
    assert gw.ca_path.exists()
    for key in ("ca.key", "server.key"):
        assert (tls_dir / key).stat().st_mode & 0o077 == 0, f"{key} is readable by others"


@pytest.mark.parametrize(
    "version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3], ids=["tls1.2", "tls1.3"]
)
@pytest.mark.parametrize("server_hostname", ["localhost", "127.0.0.1"])
def test_tls_versions_served_with_hsts(
    gw: GatewayProcess, upstream: RecordingUpstream, version: ssl.TLSVersion, server_hostname: str
) -> None:
    context = tls_client_context(gw.ca_path, minimum_version=version, maximum_version=version)
    with RawClient(gw.port, tls=context, server_hostname=server_hostname) as client:
        assert isinstance(client.sock, ssl.SSLSocket)
        assert client.sock.version() == {"tls1.2": "TLSv1.2", "tls1.3": "TLSv1.3"}[_name(version)]
        client.send(get("/secure"))
        response = client.read_response()
    assert response.status == 200
    assert response.header("strict-transport-security") == HSTS
    (request,) = upstream.wait_for_requests(1)
    assert request.header("x-forwarded-proto") == b"https"
    assert forwarded_params(request) == {"for": "127.0.0.1", "proto": "https", "host": "test.local"}


def _name(version: ssl.TLSVersion) -> str:
    return "tls1.2" if version == ssl.TLSVersion.TLSv1_2 else "tls1.3"


def test_tls12_uses_forward_secret_aead_cipher(gw: GatewayProcess) -> None:
    context = tls_client_context(gw.ca_path, maximum_version=ssl.TLSVersion.TLSv1_2)
    with RawClient(gw.port, tls=context) as client:
        assert isinstance(client.sock, ssl.SSLSocket)
        cipher = client.sock.cipher()
        assert cipher is not None
        assert cipher[0].startswith("ECDHE-") and ("GCM" in cipher[0] or "CHACHA20" in cipher[0]), cipher


def legacy_client_context(ca: Path, maximum: ssl.TLSVersion) -> ssl.SSLContext:
    """A client willing to speak TLS 1.0 up to ``maximum`` (OpenSSL 3 needs SECLEVEL=0 for 1.0/1.1)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(str(ca))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the ssl module deprecates TLS 1.0/1.1 too
        context.minimum_version = ssl.TLSVersion.TLSv1
        context.maximum_version = maximum
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    return context


def test_tls11_client_is_refused(gw: GatewayProcess) -> None:
    with (
        pytest.raises(ssl.SSLError),
        socket.create_connection(("127.0.0.1", gw.port), timeout=3) as sock,
        legacy_client_context(gw.ca_path, ssl.TLSVersion.TLSv1_1).wrap_socket(
            sock, server_hostname="localhost"
        ),
    ):
        pass
    # The same client, allowed TLS 1.2, connects: what failed above was the version, not the client.
    with (
        socket.create_connection(("127.0.0.1", gw.port), timeout=3) as sock,
        legacy_client_context(gw.ca_path, ssl.TLSVersion.TLSv1_2).wrap_socket(
            sock, server_hostname="localhost"
        ) as tls,
    ):
        assert tls.version() == "TLSv1.2"


def test_untrusted_ca_fails_verification(gw: GatewayProcess) -> None:
    context = ssl.create_default_context()  # the system store does not know Garrison's local CA
    with pytest.raises(ssl.SSLCertVerificationError), RawClient(gw.port, tls=context):
        pass


def test_alpn_negotiates_http11(gw: GatewayProcess) -> None:
    context = tls_client_context(gw.ca_path)
    context.set_alpn_protocols(["h2", "http/1.1"])
    with RawClient(gw.port, tls=context) as client:
        assert isinstance(client.sock, ssl.SSLSocket)
        assert client.sock.selected_alpn_protocol() == "http/1.1"


def test_plaintext_on_the_tls_port_is_not_served(gw: GatewayProcess, upstream: RecordingUpstream) -> None:
    with RawClient(gw.port) as client:
        client.send(get("/plain"))
        data = client.read_until_closed()
    assert b"200 OK" not in data
    assert upstream.settle() == []


def test_error_responses_over_tls_carry_hsts(gw: GatewayProcess) -> None:
    context = tls_client_context(gw.ca_path)
    with RawClient(gw.port, tls=context) as client:
        client.send(get("/a/..%2f/b"))
        response = client.read_response()
    assert response.status == 400
    assert response.header("strict-transport-security") == HSTS


def test_httpx_with_the_ca_context(gw: GatewayProcess) -> None:
    context = ssl.create_default_context(cafile=str(gw.ca_path))
    with httpx.Client(verify=context, timeout=5) as client:
        response = client.get(f"https://localhost:{gw.port}/httpx", headers={"X-Request-Id": "httpx-1"})
    assert response.status_code == 200
    assert response.http_version == "HTTP/1.1"
    assert response.headers["strict-transport-security"] == HSTS.decode()
    assert response.headers["x-request-id"] == "httpx-1"
    assert response.json() == {"ok": True}


def test_httpx_with_the_ca_path(gw: GatewayProcess) -> None:
    """``verify=<path>`` still works in httpx 0.28, with a DeprecationWarning of its own."""
    with pytest.warns(DeprecationWarning, match="verify=<str>"):
        client = httpx.Client(verify=str(gw.ca_path), timeout=5)
    with client:
        response = client.get(f"https://127.0.0.1:{gw.port}/httpx")
    assert response.status_code == 200


# -- the plaintext redirect listener ---------------------------------------------------------------------
def redirect(gw: GatewayProcess, data: bytes) -> tuple[int, bytes | None, bytes]:
    with RawClient(gw.redirect_port) as client:
        client.send(data)
        response = client.read_response()
        assert client.closed_by_peer(1.0)
    return (
        response.status,
        response.header("location"),
        response.raw_head + b"".join(b"%s: %s\n" % pair for pair in response.headers),
    )


def test_redirect_to_https(gw: GatewayProcess, upstream: RecordingUpstream) -> None:
    status, location, _ = redirect(gw, b"GET /path?q HTTP/1.1\r\nHost: localhost\r\n\r\n")
    assert status == 308
    assert location is not None
    assert re.fullmatch(rb"https://localhost:\d+/path\?q", location), location
    assert upstream.settle() == []


def test_redirect_names_the_bound_https_port(gw: GatewayProcess) -> None:
    _, location, _ = redirect(gw, b"GET /path?q HTTP/1.1\r\nHost: localhost\r\n\r\n")
    assert location == b"https://localhost:%d/path?q" % gw.port


def test_redirect_normalizes_the_path_and_drops_the_port_of_host(gw: GatewayProcess) -> None:
    status, location, _ = redirect(gw, b"GET /a/./b/../c?x=1&y=%2F HTTP/1.1\r\nHost: LocalHost:8080\r\n\r\n")
    assert status == 308
    assert location is not None
    assert re.fullmatch(rb"https://localhost:\d+/a/c\?x=1&y=%2F", location), location


@pytest.mark.parametrize(
    "host_lines",
    [
        pytest.param(b"Host: a b\r\n", id="space"),
        pytest.param(b"Host: evil.com/x\r\n", id="slash"),
        pytest.param(b"Host: evil.com\\@x\r\n", id="backslash"),
        pytest.param(b"Host: user@evil.com\r\n", id="userinfo"),
        pytest.param(b"Host: evil.com\rx: y\r\n", id="bare_cr"),
        pytest.param(b"Host: \r\n", id="empty"),
        pytest.param(b"", id="missing"),
    ],
)
def test_redirect_refuses_hostile_hosts(gw: GatewayProcess, host_lines: bytes) -> None:
    status, location, _ = redirect(gw, b"GET /path HTTP/1.1\r\n" + host_lines + b"\r\n")
    assert status == 400
    assert location is None


@pytest.mark.parametrize(
    "host", [b"evil.example", b"evil.example:443", b"localhost.evil.example", b"127.0.0.1", b"[::1]"]
)
def test_redirect_refuses_hosts_the_config_does_not_name(gw: GatewayProcess, host: bytes) -> None:
    """Issue 7, item 8: ``Host: evil.example`` was redirected to ``https://evil.example:PORT``.

    Only ``public_host``, route hosts and ``tls.server_names`` (here the default, localhost) are."""
    status, location, everything = redirect(gw, b"GET /p HTTP/1.1\r\nHost: %s\r\n\r\n" % host)
    assert status == 400
    assert location is None
    assert host not in everything


def test_redirect_host_cannot_inject_headers(gw: GatewayProcess) -> None:
    """``localhost\\r\\nx: y`` on the wire is two header fields: no byte of the second reaches the answer."""
    status, location, everything = redirect(gw, b"GET /p HTTP/1.1\r\nHost: localhost\r\nx: y\r\n\r\n")
    assert status == 308
    assert location == b"https://localhost:%d/p" % gw.port
    assert b"\r" not in location and b"\n" not in location
    assert b"x: y" not in everything


def test_redirect_refuses_bad_targets_and_bodies(gw: GatewayProcess) -> None:
    assert redirect(gw, b"GET /a/..%2f HTTP/1.1\r\nHost: localhost\r\n\r\n")[0] == 400
    assert redirect(gw, b"POST /a HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1\r\n\r\nx")[0] == 400


def test_redirect_uses_public_host(gateway_factory, module_upstream: RecordingUpstream) -> None:
    overrides = {
        "gateway": {
            "tls": {"cert": "auto", "insecure_disable": False},
            "redirect_http": "127.0.0.1:0",
            "public_host": "shop.example",
        }
    }
    gw = gateway_factory(module_upstream, overrides)
    status, location, _ = redirect(gw, b"GET /x HTTP/1.1\r\nHost: evil.com\r\n\r\n")
    assert status == 308
    assert location is not None and location.startswith(b"https://shop.example:")


def test_redirect_under_workers_names_route_hosts_and_follows_reloads(
    gateway_factory, module_upstream: RecordingUpstream
) -> None:
    """With ``workers: 2`` the supervisor owns the redirect listener: the same host check, the
    workers' shared HTTPS port, and new names after a reload (SIGHUP)."""
    route = {
        "match": {"path": "/", "prefix": True, "hosts": ["shop.example", "*.apps.example"]},
        "service": "rec",
        "auth": {"require": "none"},
        "name": "shop",
    }
    tls = {"cert": "auto", "insecure_disable": False, "server_names": ["gw.example"]}
    overrides = {"gateway": {"workers": 2, "tls": tls, "redirect_http": "127.0.0.1:0"}, "routes": [route]}
    gw = gateway_factory(module_upstream, overrides)
    for host in (b"shop.example", b"x.apps.example", b"gw.example"):
        status, location, _ = redirect(gw, b"GET /p?q HTTP/1.1\r\nHost: %s:8080\r\n\r\n" % host)
        assert (status, location) == (308, b"https://%s:%d/p?q" % (host, gw.port))
    for host in (b"evil.example", b"localhost", b"apps.example", b"new.example"):
        status, location, _ = redirect(gw, b"GET /p HTTP/1.1\r\nHost: %s\r\n\r\n" % host)
        assert (status, location) == (400, None), host

    route["match"]["hosts"] = ["shop.example", "new.example"]  # type: ignore[index]
    gw.config_path.write_text(yaml.safe_dump(gw.config, sort_keys=False))
    assert gw.proc is not None
    gw.proc.send_signal(signal.SIGHUP)
    assert wait_until(lambda: "gateway.redirect.reloaded" in gw.stderr_text())
    status, location, _ = redirect(gw, b"GET /p HTTP/1.1\r\nHost: new.example\r\n\r\n")
    assert (status, location) == (308, b"https://new.example:%d/p" % gw.port)
    assert redirect(gw, b"GET /p HTTP/1.1\r\nHost: x.apps.example\r\n\r\n")[:2] == (400, None)


SIDE_LISTENER_REQUEST_TIMEOUT = 10.0  # simplehttp.REQUEST_TIMEOUT: fixed, not gateway.limits.header_timeout


@pytest.mark.slow
def test_redirect_listener_times_out_idle_clients(gw: GatewayProcess) -> None:
    """A client that never finishes its request is answered 408 and cut off (it used to be held forever)."""
    with RawClient(gw.redirect_port, timeout=SIDE_LISTENER_REQUEST_TIMEOUT + 2.0) as client:
        start = time.monotonic()
        client.send(b"GET /path HTTP/1.1\r\nHost: local")
        response = client.read_response()
        assert response.status == 408
        assert client.closed_by_peer(1.0)
        assert time.monotonic() - start <= SIDE_LISTENER_REQUEST_TIMEOUT + 1.0
