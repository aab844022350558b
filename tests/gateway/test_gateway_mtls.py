"""Client certificates at the edge (`require: mtls`), with certificates minted here and a real TLS client."""

from __future__ import annotations

import datetime as dt
import json
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
from certs import TestCA
from cryptography.x509.oid import ExtendedKeyUsageOID
from gateway_harness import GatewayProcess, RawClient, RecordingUpstream, Response, get, tls_client_context

BILLING_ID = "spiffe://partner.example/billing"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> tuple[TestCA, Path]:
    directory = tmp_path_factory.mktemp("pki")
    ca = TestCA.create()
    ca.write(directory / "clients-ca.pem")
    return ca, directory


@pytest.fixture(scope="module")
def gw(
    module_gateway_factory, module_upstream: RecordingUpstream, pki: tuple[TestCA, Path]
) -> GatewayProcess:
    _, directory = pki
    overrides = {
        "gateway": {
            "tls": {"cert": "auto", "insecure_disable": False},
            "mtls": {
                "ca": str(directory / "clients-ca.pem"),
                "clients": [
                    {"id": "billing", "uri": BILLING_ID, "scopes": ["invoices:read"]},
                    {"id": "reporting", "common_name": "reporting.partner", "scopes": ["reports"]},
                ],
            },
        },
        "routes": [
            {
                "match": {"path": "/invoices", "prefix": True},
                "service": "rec",
                "auth": {"require": "mtls", "scopes": ["invoices:read"]},
                "rate_limit": [{"rate": "5/minute", "key": "client"}],
            },
            {
                "match": {"path": "/public", "prefix": True},
                "service": "rec",
                "auth": {"require": "none"},
            },
        ],
    }
    return module_gateway_factory(module_upstream, overrides)


@pytest.fixture
def upstream(module_upstream: RecordingUpstream) -> Iterator[RecordingUpstream]:
    module_upstream.settle()
    module_upstream.reset()
    yield module_upstream
    module_upstream.reset()


def client_context(gw: GatewayProcess, cert: tuple[Path, Path] | None) -> ssl.SSLContext:
    context = tls_client_context(gw.ca_path)
    if cert is not None:
        context.load_cert_chain(*cert)
    return context


def fetch(gw: GatewayProcess, path: str, cert: tuple[Path, Path] | None, **headers: str) -> Response:
    with RawClient(gw.port, tls=client_context(gw, cert)) as client:
        client.send(get(path, headers=headers))
        return client.read_response()


def error_of(response: Response) -> str:
    return str(json.loads(response.body)["error"])


def test_a_listed_certificate_reaches_the_upstream_as_its_client(
    gw: GatewayProcess, upstream: RecordingUpstream, pki: tuple[TestCA, Path]
) -> None:
    ca, directory = pki
    cert = ca.issue(directory, "billing", common_name="billing-service", uris=(BILLING_ID,))
    response = fetch(gw, "/invoices/1", cert, **{"X-Garrison-Client": "admin"})
    assert response.status == 200, response.body
    assert response.header("www-authenticate") is None
    (request,) = upstream.wait_for_requests(1)
    assert request.header("x-garrison-subject") == b"mtls:billing"
    assert request.header_values("x-garrison-client") == [b"billing"]  # the client's copy was dropped
    assert request.header("x-garrison-scopes") == b"invoices:read"
    line = gw.wait_access_log(lambda entry: entry.get("path") == "/invoices/1")
    assert line["subject"] == "mtls:billing"


def test_no_certificate_is_refused_on_mtls_routes_only(
    gw: GatewayProcess, upstream: RecordingUpstream
) -> None:
    response = fetch(gw, "/invoices/1", None)
    assert response.status == 403
    assert error_of(response) == "client_certificate_required"
    assert response.header("www-authenticate") is None
    assert fetch(gw, "/public/x", None).status == 200  # the same listener serves clients without one
    assert [r.path for r in upstream.wait_for_requests(1)] == [b"/public/x"]


def test_a_valid_certificate_that_is_not_listed_is_refused(
    gw: GatewayProcess, pki: tuple[TestCA, Path]
) -> None:
    ca, directory = pki
    stranger = ca.issue(directory, "stranger", common_name="stranger", uris=("spiffe://partner.example/x",))
    response = fetch(gw, "/invoices/1", stranger)
    assert response.status == 403
    assert error_of(response) == "unknown_client_certificate"


def test_a_listed_client_without_the_scope_is_refused(gw: GatewayProcess, pki: tuple[TestCA, Path]) -> None:
    ca, directory = pki
    reporting = ca.issue(directory, "reporting", common_name="reporting.partner")
    response = fetch(gw, "/invoices/1", reporting)
    assert response.status == 403
    assert error_of(response) == "insufficient_scope"
    assert response.header("www-authenticate") is None


def test_a_certificate_naming_two_clients_is_refused(gw: GatewayProcess, pki: tuple[TestCA, Path]) -> None:
    ca, directory = pki
    both = ca.issue(directory, "both", common_name="reporting.partner", uris=(BILLING_ID,))
    response = fetch(gw, "/invoices/1", both)
    assert response.status == 403
    assert error_of(response) == "unknown_client_certificate"


@pytest.mark.parametrize(
    "kind",
    ["other_ca", "expired", "server_only_usage"],
)
def test_certificates_that_do_not_verify_fail_the_handshake(
    gw: GatewayProcess, upstream: RecordingUpstream, pki: tuple[TestCA, Path], kind: str
) -> None:
    ca, directory = pki
    if kind == "other_ca":
        cert = TestCA.create("Someone else").issue(directory, kind, uris=(BILLING_ID,))
    elif kind == "expired":
        past = dt.datetime.now(dt.UTC) - dt.timedelta(days=2)
        cert = ca.issue(directory, kind, uris=(BILLING_ID,), not_before=past, valid_for=dt.timedelta(days=1))
    else:
        cert = ca.issue(directory, kind, uris=(BILLING_ID,), usage=ExtendedKeyUsageOID.SERVER_AUTH)
    assert tls_refused(gw, cert)
    assert upstream.settle() == []


def tls_refused(gw: GatewayProcess, cert: tuple[Path, Path]) -> bool:
    """True if the gateway ends the TLS session without answering (an alert, a reset or EOF)."""
    with socket.create_connection(("127.0.0.1", gw.port), timeout=3) as raw:
        try:
            # TLS 1.3 reports a refused client certificate on the first read, not in the handshake.
            with client_context(gw, cert).wrap_socket(raw, server_hostname="localhost") as tls:
                tls.sendall(get("/invoices/1"))
                return tls.recv(1024) == b""
        except (ssl.SSLError, ConnectionError):
            return True


def test_client_limits_count_per_certificate(
    gw: GatewayProcess, upstream: RecordingUpstream, pki: tuple[TestCA, Path]
) -> None:
    ca, directory = pki
    # Two certificates for the same listed name are one client: they share its budget.
    first = ca.issue(directory, "billing-a", uris=(BILLING_ID,))
    second = ca.issue(directory, "billing-b", uris=(BILLING_ID,))
    statuses = [fetch(gw, "/invoices/limit", cert).status for cert in (first, second) * 4]
    # Earlier tests spent part of this minute's budget, so count what is left rather than assume.
    assert 429 in statuses
    allowed = statuses.index(429)
    assert statuses[allowed:] == [429] * (len(statuses) - allowed)
    refused = fetch(gw, "/invoices/limit", first)
    assert refused.header("retry-after") is not None
    assert refused.header("ratelimit-limit") == b"5"
