"""The admin listener is a control plane: a credential for every change, no browser, bounded sets.

Regression tests for what a red team found (issue 7, item 1): ``POST /blocklist`` and
``POST /revocations`` answered 200 with no credential, to a cross-site ``text/plain`` POST and to a
rebound ``Host``. Every test here drives a real gateway process over real sockets.
"""

from __future__ import annotations

import json
import ssl
import stat
import uuid
from pathlib import Path
from typing import Any

import pytest
from certs import TestCA
from gateway_harness import (
    GatewayProcess,
    RawClient,
    RecordingUpstream,
    garrison_cli,
    get,
    http_call,
    wait_until,
)
from prometheus_client.parser import text_string_to_metric_families


def call(
    gw: GatewayProcess,
    target: str,
    method: str = "GET",
    *,
    token: str | None = None,
    host: str | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """One admin request with exactly the Host, token and extra headers given."""
    sent = {"Host": host or f"127.0.0.1:{gw.admin_port}", **(headers or {})}
    if token is not None:
        sent["Authorization"] = f"Bearer {token}"
    return http_call(gw.admin_port, target, sent, method=method)


def blocked(gw: GatewayProcess) -> list[str]:
    status, _, body = call(gw, "/blocklist")
    assert status == 200
    return [entry["ip"] for entry in json.loads(body)["blocked"]]


def counter(gw: GatewayProcess, family: str, labels: dict[str, str]) -> float:
    status, _, body = call(gw, "/metrics")
    assert status == 200
    for metric in text_string_to_metric_families(body.decode()):
        if metric.name == family:
            for sample in metric.samples:
                if sample.name.endswith("_total") and sample.labels == labels:
                    return sample.value
    return 0.0


def test_changes_need_the_admin_token(gateway_factory: Any, upstream: RecordingUpstream) -> None:
    gw = gateway_factory(upstream)
    token_file = gw.state_dir / "admin.token"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert len(gw.admin_token) >= 43  # 256 random bits, base64url

    status, headers, body = call(gw, "/blocklist?ip=127.0.0.1&for=365d", "POST")
    assert status == 401 and headers["www-authenticate"].startswith("Bearer")
    assert json.loads(body)["error"] == "unauthorized"
    assert call(gw, "/blocklist?ip=127.0.0.1&for=1h", "POST", token="wrong-" + gw.admin_token)[0] == 401
    assert call(gw, "/revocations?jti=abc&for=10m", "POST")[0] == 401
    assert call(gw, "/blocklist?ip=127.0.0.1", "DELETE")[0] == 401
    assert blocked(gw) == [] and http_call(gw.port, "/x")[0] == 200  # nothing changed

    assert call(gw, "/blocklist?ip=192.0.2.9&for=1h", "POST", token=gw.admin_token)[0] == 200
    assert call(gw, "/revocations?jti=abc&for=10m", "POST", token=gw.admin_token)[0] == 200
    assert blocked(gw) == ["192.0.2.9"]
    assert counter(gw, "garrison_gateway_admin_denied", {"reason": "credential"}) == 4


def test_reads_stay_open_on_loopback(gateway_factory: Any, upstream: RecordingUpstream) -> None:
    gw = gateway_factory(upstream)
    for path in ("/live", "/ready", "/metrics", "/blocklist", "/revocations"):
        assert call(gw, path)[0] == 200, path
        assert call(gw, path, "HEAD")[0] == 200, path
    assert_admin_headers(call(gw, "/blocklist")[1])


def assert_admin_headers(headers: dict[str, str]) -> None:
    """Every admin listener's answers carry the common security headers (admin/listener.py)."""
    lowered = {name.lower(): value for name, value in headers.items()}
    assert lowered.get("x-content-type-options") == "nosniff", headers
    assert "default-src 'none'" in lowered.get("content-security-policy", ""), headers


def test_cross_site_requests_are_refused_even_with_the_token(
    gateway_factory: Any, upstream: RecordingUpstream
) -> None:
    """What a web page can make a browser send: a simple POST with a foreign Origin (no preflight)."""
    gw = gateway_factory(upstream)
    evil = {"Origin": "http://evil.example", "Content-Type": "text/plain"}
    status, _, body = call(gw, "/blocklist?ip=192.0.2.1&for=1h", "POST", headers=evil)
    assert status == 403 and json.loads(body)["error"] == "forbidden"
    assert call(gw, "/blocklist?ip=192.0.2.1&for=1h", "POST", token=gw.admin_token, headers=evil)[0] == 403
    assert call(gw, "/metrics", headers={"Origin": "null"})[0] == 403
    # Another port on the same host is another origin.
    other = {"Origin": f"http://127.0.0.1:{gw.port}"}
    assert call(gw, "/blocklist?ip=192.0.2.1&for=1h", "POST", token=gw.admin_token, headers=other)[0] == 403
    assert blocked(gw) == []
    same = {"Origin": f"http://127.0.0.1:{gw.admin_port}"}
    assert call(gw, "/blocklist?ip=192.0.2.1&for=1h", "POST", token=gw.admin_token, headers=same)[0] == 200
    assert counter(gw, "garrison_gateway_admin_denied", {"reason": "origin"}) == 4


@pytest.mark.parametrize(
    "host",
    ["x", "evil.example", "evil.example:{port}", "127.0.0.1:{other}", "127.0.0.2:{port}", "127.0.0.1"],
)
def test_a_host_that_is_not_the_listener_is_refused(
    gateway_factory: Any, upstream: RecordingUpstream, host: str
) -> None:
    """DNS rebinding: a page on evil.example, rebound to 127.0.0.1, sends `Host: evil.example:PORT`."""
    gw = gateway_factory(upstream)
    value = host.format(port=gw.admin_port, other=gw.port)
    status, _, body = call(gw, "/metrics", host=value)
    assert status == 421 and json.loads(body)["error"] == "misdirected_request"
    assert call(gw, "/blocklist?ip=192.0.2.1&for=1h", "POST", token=gw.admin_token, host=value)[0] == 421
    assert blocked(gw) == []


def test_a_request_without_host_is_refused(gateway_factory: Any, upstream: RecordingUpstream) -> None:
    gw = gateway_factory(upstream)
    with RawClient(gw.admin_port) as client:
        client.send(b"GET /metrics HTTP/1.0\r\n\r\n")
        assert client.read_response().status == 421
    with RawClient(gw.admin_port) as client:
        client.send(get("/ready", host=f"localhost:{gw.admin_port}"))
        assert client.read_response().status == 200


def test_block_durations_are_bounded(gateway_factory: Any, upstream: RecordingUpstream) -> None:
    gw = gateway_factory(upstream, {"gateway": {"blocklist": {"max_duration": "1d"}}})
    token = gw.admin_token
    for too_long in ("365d", "25h", "inf"):
        status, _, body = call(gw, f"/blocklist?ip=192.0.2.1&for={too_long}", "POST", token=token)
        assert status == 400, (too_long, body)
    assert (
        "max_duration"
        in json.loads(call(gw, "/blocklist?ip=192.0.2.1&for=2d", "POST", token=token)[2])["error"]
    )
    assert call(gw, "/blocklist?ip=192.0.2.1&for=1d", "POST", token=token)[0] == 200


def _fill_and_overflow(gw: GatewayProcess) -> None:
    token = gw.admin_token
    for last in (1, 2):
        assert call(gw, f"/blocklist?ip=192.0.2.{last}&for=1h", "POST", token=token)[0] == 200
    status, _, body = call(gw, "/blocklist?ip=192.0.2.3&for=1h", "POST", token=token)
    assert status == 507 and "full" in json.loads(body)["error"]
    assert call(gw, "/blocklist?ip=192.0.2.1&for=2h", "POST", token=token)[0] == 200  # a renewal
    assert sorted(blocked(gw)) == ["192.0.2.1", "192.0.2.2"]
    assert call(gw, "/blocklist?ip=192.0.2.2", "DELETE", token=token)[0] == 200
    assert call(gw, "/blocklist?ip=192.0.2.3&for=1h", "POST", token=token)[0] == 200  # room again

    for jti in ("a", "b"):
        assert call(gw, f"/revocations?jti={jti}&for=10m", "POST", token=token)[0] == 200
    assert call(gw, "/revocations?jti=c&for=10m", "POST", token=token)[0] == 507
    assert call(gw, "/revocations?jti=a&for=20m", "POST", token=token)[0] == 200  # a renewal
    assert counter(gw, "garrison_gateway_admin_refused", {"set": "blocklist", "reason": "full"}) == 1
    assert counter(gw, "garrison_gateway_admin_refused", {"set": "revocations", "reason": "full"}) == 1


def test_sets_are_capped_in_memory(gateway_factory: Any, upstream: RecordingUpstream) -> None:
    caps = {"gateway": {"blocklist": {"max_entries": 2}}, "revocations": {"max_entries": 2}}
    _fill_and_overflow(gateway_factory(upstream, caps))


def test_sets_are_capped_in_redis(gateway_factory: Any, upstream: RecordingUpstream, redis_url: str) -> None:
    """The cap holds across every gateway sharing the Redis set (checked atomically in Redis)."""
    prefix = f"garrison-test:{uuid.uuid4().hex}"
    caps = {
        "redis": {"url": redis_url},
        "gateway": {"blocklist": {"max_entries": 2, "storage": "redis", "prefix": f"{prefix}:b"}},
        "revocations": {"max_entries": 2, "storage": "redis", "prefix": f"{prefix}:r"},
    }
    gw = gateway_factory(upstream, caps)
    _fill_and_overflow(gw)
    other = gateway_factory(upstream, caps)
    assert wait_until(lambda: sorted(blocked(other)) == ["192.0.2.1", "192.0.2.3"], timeout=3)
    assert call(other, "/blocklist?ip=192.0.2.4&for=1h", "POST", token=other.admin_token)[0] == 507


def test_the_cli_uses_the_token_file(
    gateway_factory: Any, upstream: RecordingUpstream, held_port: int
) -> None:
    gw = gateway_factory(upstream, {"gateway": {"admin": {"listen": f"127.0.0.1:{held_port}"}}})
    config = str(gw.config_path)
    done = garrison_cli("block", "192.0.2.5", "--for", "1h", "-c", config)
    assert done.returncode == 0, done.stderr
    assert gw.admin_token not in done.stdout + done.stderr
    assert blocked(gw) == ["192.0.2.5"]
    (gw.state_dir / "admin.token").chmod(0o644)
    refused = garrison_cli("block", "192.0.2.6", "-c", config)
    assert refused.returncode == 2 and "chmod 600" in refused.stderr


def test_workers_guard_the_shared_admin_listener(gateway_factory: Any, upstream: RecordingUpstream) -> None:
    gw = gateway_factory(upstream, {"gateway": {"workers": 2}})
    assert call(gw, "/blocklist?ip=192.0.2.1&for=1h", "POST")[0] == 401
    assert call(gw, "/blocklist?ip=192.0.2.1&for=1h", "POST", host="evil.example")[0] == 421
    assert call(gw, "/blocklist?ip=192.0.2.1&for=1h", "POST", token=gw.admin_token)[0] == 200
    assert counter(gw, "garrison_gateway_admin_denied", {"reason": "credential"}) == 1
    assert_admin_headers(call(gw, "/live")[1])


# -- TLS and client certificates ------------------------------------------------------------------------
def _admin_tls(tmp_path: Path) -> tuple[dict[str, Any], TestCA, ssl.SSLContext]:
    server_ca, client_ca = TestCA.create("admin server CA"), TestCA.create("admin client CA")
    from cryptography.x509.oid import ExtendedKeyUsageOID

    cert, key = server_ca.issue(
        tmp_path,
        "admin-server",
        common_name="admin",
        dns=("localhost",),
        usage=ExtendedKeyUsageOID.SERVER_AUTH,
    )
    chain = tmp_path / "admin-chain.pem"
    chain.write_bytes(cert.read_bytes() + server_ca.write(tmp_path / "server-ca.pem").read_bytes())
    tls = {"cert": str(chain), "key": str(key), "client_ca": str(client_ca.write(tmp_path / "client-ca.pem"))}
    trust = ssl.create_default_context(cafile=str(tmp_path / "server-ca.pem"))
    return tls, client_ca, trust


def _tls_call(gw: GatewayProcess, context: ssl.SSLContext, target: str, method: str, token: str = "") -> int:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with RawClient(gw.admin_port, tls=context) as client:
        client.send(get(target, host=f"127.0.0.1:{gw.admin_port}", headers=headers, method=method))
        return client.read_response().status


def test_a_client_certificate_is_a_credential(
    gateway_factory: Any, upstream: RecordingUpstream, tmp_path: Path, held_port: int
) -> None:
    tls, client_ca, trust = _admin_tls(tmp_path)
    # A concrete port, held for the test: the CLI at the end reads it from the config.
    gw = gateway_factory(upstream, {"gateway": {"admin": {"listen": f"127.0.0.1:{held_port}", "tls": tls}}})
    assert _tls_call(gw, trust, "/blocklist?ip=192.0.2.1&for=1h", "POST") == 401
    with_cert = ssl.create_default_context(cafile=str(tmp_path / "server-ca.pem"))
    with_cert.load_cert_chain(*client_ca.issue(tmp_path, "operator", common_name="operator"))
    assert _tls_call(gw, with_cert, "/blocklist?ip=192.0.2.1&for=1h", "POST") == 200
    assert _tls_call(gw, trust, "/blocklist?ip=192.0.2.2&for=1h", "POST", gw.admin_token) == 200
    # A certificate from any other CA fails the handshake.
    stranger = ssl.create_default_context(cafile=str(tmp_path / "server-ca.pem"))
    stranger.load_cert_chain(*TestCA.create("other").issue(tmp_path, "stranger"))
    with pytest.raises((ssl.SSLError, ConnectionError, AssertionError)):
        _tls_call(gw, stranger, "/blocklist?ip=192.0.2.3&for=1h", "POST")
    # The CLI speaks TLS to it, pinning the listener's own certificate chain.
    done = garrison_cli("blocklist", "-c", str(gw.config_path))
    assert done.returncode == 0 and "192.0.2.1" in done.stdout and "192.0.2.2" in done.stdout, done.stderr
