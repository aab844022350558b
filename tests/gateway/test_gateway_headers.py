"""Header rewriting through the real gateway: what the upstream is told, and what the client gets back."""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator

import pytest
from gateway_harness import (
    GatewayProcess,
    RawClient,
    RecordedRequest,
    RecordingUpstream,
    Reply,
    Response,
    forwarded_params,
)

HEX32 = re.compile(rb"[0-9a-f]{32}")
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"
_ids = itertools.count()


@pytest.fixture(scope="module")
def gw(module_gateway_factory, module_upstream: RecordingUpstream) -> GatewayProcess:
    """Only ``/api`` is routed (no catch-all), so other paths are 404s from the gateway itself."""
    routes = [
        {
            "match": {"path": "/api", "prefix": True},
            "service": "rec",
            "auth": {"require": "none"},
            "name": "api",
        }
    ]
    return module_gateway_factory(module_upstream, {"routes": routes})


@pytest.fixture
def upstream(module_upstream: RecordingUpstream) -> Iterator[RecordingUpstream]:
    module_upstream.settle()  # let a previous test's late arrivals land before forgetting them
    module_upstream.reset()
    yield module_upstream
    module_upstream.reset()


def exchange(
    gw: GatewayProcess,
    upstream: RecordingUpstream,
    header_lines: list[bytes],
    *,
    path: bytes = b"/api/x",
    host: bytes = b"test.local",
    body: bytes | None = None,
) -> tuple[Response, RecordedRequest]:
    method = b"GET" if body is None else b"POST"
    head = b"%s %s HTTP/1.1\r\nHost: %s\r\n" % (method, path, host)
    head += b"".join(line + b"\r\n" for line in header_lines)
    if body is not None:
        head += b"Content-Length: %d\r\n" % len(body)
    with RawClient(gw.port) as client:
        client.send(head + b"\r\n" + (body or b""))
        response = client.read_response()
    assert response.status == 200, response
    (request,) = upstream.wait_for_requests(1)
    return response, request


# -- hop-by-hop and Connection ---------------------------------------------------------------------------
def test_hop_by_hop_headers_are_removed(gw: GatewayProcess, upstream: RecordingUpstream) -> None:
    _, request = exchange(
        gw,
        upstream,
        [
            b"Connection: keep-alive, X-Foo",
            b"Keep-Alive: timeout=5",
            b"TE: trailers",
            b"Trailer: X-Checksum",
            b"Upgrade: websocket",
            b"Proxy-Connection: keep-alive",
            b"Proxy-Authorization: Basic dXNlcjpwYXNz",
            b"X-Foo: named-by-connection",
            b"X-Kept: yes",
        ],
    )
    names = request.header_names()
    for name in (
        b"connection",
        b"keep-alive",
        b"te",
        b"trailer",
        b"upgrade",
        b"proxy-connection",
        b"proxy-authorization",
        b"x-foo",
    ):
        assert name not in names, request.head
    assert request.header("x-kept") == b"yes"


def test_connection_cannot_remove_what_the_gateway_sets(
    gw: GatewayProcess, upstream: RecordingUpstream
) -> None:
    _, request = exchange(
        gw,
        upstream,
        [
            b"Connection: X-Forwarded-For, X-Forwarded-Proto, X-Forwarded-Host, Forwarded, X-Request-Id, "
            b"Traceparent, Host, Content-Length",
            b"Connection: close",
        ],
        body=b"hello",
    )
    assert request.header("x-forwarded-for") == b"127.0.0.1"
    assert request.header("x-forwarded-proto") == b"http"
    assert request.header("x-forwarded-host") == b"test.local"
    assert request.header("forwarded") is not None
    assert request.header("x-request-id") is not None
    assert request.header("traceparent") is not None
    assert request.header("host") == b"test.local"
    assert request.header("content-length") == b"5"
    assert request.body == b"hello"


def test_connection_cannot_remove_chunked_framing(gw: GatewayProcess, upstream: RecordingUpstream) -> None:
    data = (
        b"POST /api/x HTTP/1.1\r\nHost: test.local\r\nConnection: Transfer-Encoding\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    )
    with RawClient(gw.port) as client:
        client.send(data)
        assert client.read_response().status == 200
    (request,) = upstream.wait_for_requests(1)
    assert request.header("transfer-encoding") == b"chunked"
    assert request.body == b"hello"


# -- headers the gateway owns -----------------------------------------------------------------------------
def test_identity_headers_never_reach_the_upstream(gw: GatewayProcess, upstream: RecordingUpstream) -> None:
    _, request = exchange(
        gw,
        upstream,
        [
            b"X-Garrison-Subject: admin",
            b"x-garrison-subject: admin",
            b"X_Garrison_Subject: admin",
            b"X-GARRISON-ROLES: admin",
            b"X-Garrison-Scopes: *",
            b"x_garrison_roles: admin",
        ],
    )
    for name in request.header_names():
        assert not name.replace(b"_", b"-").startswith(b"x-garrison-"), request.head
    assert b"admin" not in request.head


def test_underscore_headers_are_dropped(gw: GatewayProcess, upstream: RecordingUpstream) -> None:
    _, request = exchange(
        gw,
        upstream,
        [b"X_Custom: 1", b"X_Forwarded_For: 6.6.6.6", b"Content_Length: 99", b"X-Custom-Dash: 2"],
    )
    assert not any(b"_" in name for name in request.header_names()), request.head
    assert b"6.6.6.6" not in request.head
    assert request.header("x-custom-dash") == b"2"


# -- forwarding headers ----------------------------------------------------------------------------------
def test_untrusted_peer_cannot_forge_forwarding_headers(
    gw: GatewayProcess, upstream: RecordingUpstream
) -> None:
    request_id = f"fwd-{next(_ids)}"
    _, request = exchange(
        gw,
        upstream,
        [
            b"X-Forwarded-For: 6.6.6.6",
            b"X-Forwarded-For: 7.7.7.7",
            b"X-Forwarded-Proto: https",
            b"X-Forwarded-Host: evil.example",
            b"X-Forwarded-Port: 1",
            b"X-Real-IP: 6.6.6.6",
            b"Forwarded: for=6.6.6.6;proto=https",
            b"X-Request-Id: " + request_id.encode(),
        ],
    )
    assert request.header("x-forwarded-for") == b"127.0.0.1"
    assert request.header("x-forwarded-proto") == b"http"
    assert request.header("x-forwarded-host") == b"test.local"
    assert forwarded_params(request) == {"for": "127.0.0.1", "proto": "http", "host": "test.local"}
    assert request.header("x-real-ip") is None
    assert request.header("x-forwarded-port") is None
    for forged in (b"6.6.6.6", b"7.7.7.7", b"evil.example", b"https"):
        assert forged not in request.head
    assert gw.log_for(request_id)["client_ip"] == "127.0.0.1"


def test_forwarded_host_with_port_is_quoted(gw: GatewayProcess, upstream: RecordingUpstream) -> None:
    _, request = exchange(gw, upstream, [], host=b"Test.Local:8080")
    assert request.header("host") == b"test.local:8080"
    assert request.header("x-forwarded-host") == b"test.local:8080"
    assert forwarded_params(request) == {"for": "127.0.0.1", "proto": "http", "host": "test.local:8080"}
    assert b'host="test.local:8080"' in request.head  # a port makes the host a quoted-string


@pytest.mark.parametrize("host", [b"x,for=6.6.6.6", b"x;for=6.6.6.6"], ids=["comma", "semicolon"])
def test_host_cannot_inject_into_forwarded(
    gw: GatewayProcess, upstream: RecordingUpstream, host: bytes
) -> None:
    _, request = exchange(gw, upstream, [], host=host)
    assert forwarded_params(request) == {"for": "127.0.0.1", "proto": "http", "host": host.decode()}


@pytest.fixture
def trusting_gateway(gateway_factory, module_upstream: RecordingUpstream) -> GatewayProcess:
    module_upstream.reset()
    return gateway_factory(module_upstream, {"gateway": {"trusted_proxies": ["10.0.0.0/8", "127.0.0.1/32"]}})


@pytest.mark.parametrize(
    ("xff", "client_ip"),
    [
        (b"1.2.3.4, 10.0.0.5", "1.2.3.4"),
        (b"6.6.6.6, 1.2.3.4, 10.0.0.5", "1.2.3.4"),  # forged entries left of the first untrusted hop
        (b"10.0.0.9, 10.0.0.5", "10.0.0.9"),  # all trusted: the leftmost believable address
        (b"1.2.3.4, not-an-ip", "127.0.0.1"),  # garbage in the trusted part stops the walk
        (b"[2001:db8::1]:443, 10.0.0.5", "2001:db8::1"),
    ],
)
def test_trusted_proxies_walk_xff_from_the_right(
    trusting_gateway: GatewayProcess, module_upstream: RecordingUpstream, xff: bytes, client_ip: str
) -> None:
    request_id = f"trust-{next(_ids)}"
    data = (
        b"GET /x HTTP/1.1\r\nHost: test.local\r\nX-Forwarded-For: %s\r\nX-Forwarded-Proto: https\r\n"
        b"X-Request-Id: %s\r\n\r\n" % (xff, request_id.encode())
    )
    with RawClient(trusting_gateway.port) as client:
        client.send(data)
        assert client.read_response().status == 200
    (request,) = module_upstream.wait_for_requests(1)
    assert request.header("x-forwarded-for") == xff + b", 127.0.0.1"
    assert request.header("x-forwarded-proto") == b"https"  # a trusted proxy says how the client came in
    assert trusting_gateway.log_for(request_id)["client_ip"] == client_ip


def test_only_loopback_trusted_stops_at_the_untrusted_hop(
    gateway_factory, module_upstream: RecordingUpstream
) -> None:
    module_upstream.reset()
    gw = gateway_factory(module_upstream, {"gateway": {"trusted_proxies": ["127.0.0.1/32"]}})
    with RawClient(gw.port) as client:
        client.send(
            b"GET /x HTTP/1.1\r\nHost: t\r\nX-Forwarded-For: 1.2.3.4, 10.0.0.5\r\nX-Request-Id: lo-1\r\n\r\n"
        )
        assert client.read_response().status == 200
    assert gw.log_for("lo-1")["client_ip"] == "10.0.0.5"


# -- request id and trace context ------------------------------------------------------------------------
def test_valid_request_id_is_kept(gw: GatewayProcess, upstream: RecordingUpstream) -> None:
    response, request = exchange(gw, upstream, [b"X-Request-Id: client-abc_123.x:y"])
    assert request.header("x-request-id") == b"client-abc_123.x:y"
    assert response.header("x-request-id") == b"client-abc_123.x:y"
    assert gw.log_for("client-abc_123.x:y")["status"] == 200


@pytest.mark.parametrize("value", [b"<script>", b"a" * 129, b"a b", b'"quoted"'])
def test_invalid_request_id_is_replaced(
    gw: GatewayProcess, upstream: RecordingUpstream, value: bytes
) -> None:
    response, request = exchange(gw, upstream, [b"X-Request-Id: " + value])
    sent = request.header("x-request-id")
    assert sent is not None and HEX32.fullmatch(sent)
    assert response.header("x-request-id") == sent
    assert value not in response.raw_head + b"".join(v for _, v in response.headers)


def test_valid_traceparent_is_continued(gw: GatewayProcess, upstream: RecordingUpstream) -> None:
    response, request = exchange(gw, upstream, [f"traceparent: 00-{TRACE_ID}-{CLIENT_SPAN}-01".encode()])
    sent = request.header("traceparent")
    assert sent is not None
    version, trace, span, flags = sent.decode().split("-")
    assert (version, trace, flags) == ("00", TRACE_ID, "01")
    assert re.fullmatch("[0-9a-f]{16}", span) and span != CLIENT_SPAN
    assert response.header("traceparent") == sent
    request_id = request.header("x-request-id")
    assert request_id is not None
    assert gw.log_for(request_id.decode())["trace_id"] == TRACE_ID


@pytest.mark.parametrize(
    "value",
    [
        b"00-zzzzf3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        b"00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        b"garbage",
    ],
)
def test_invalid_traceparent_starts_a_new_trace(
    gw: GatewayProcess, upstream: RecordingUpstream, value: bytes
) -> None:
    response, request = exchange(gw, upstream, [b"traceparent: " + value])
    sent = request.header("traceparent")
    assert sent is not None
    version, trace, span, _flags = sent.decode().split("-")
    assert version == "00" and re.fullmatch("[0-9a-f]{32}", trace) and trace != "0" * 32
    assert re.fullmatch("[0-9a-f]{16}", span)
    assert trace not in value.decode()
    assert response.header("traceparent") == sent


def test_a_request_without_ids_gets_a_new_request_id_and_trace(
    gw: GatewayProcess, upstream: RecordingUpstream
) -> None:
    response, request = exchange(gw, upstream, [])
    sent, request_id = request.header("traceparent"), request.header("x-request-id")
    assert sent is not None and request_id is not None
    assert re.fullmatch(rb"00-[0-9a-f]{32}-[0-9a-f]{16}-01", sent), sent
    assert re.fullmatch(rb"[0-9a-f]{32}", request_id), request_id
    assert sent.split(b"-")[1] != request_id
    assert response.header("traceparent") == sent and response.header("x-request-id") == request_id


# -- the response ----------------------------------------------------------------------------------------
def test_response_security_headers_and_banner_removed(
    gw: GatewayProcess, upstream: RecordingUpstream
) -> None:
    upstream.reply = Reply(
        headers=(
            (b"content-type", b"application/json"),
            (b"x-content-type-options", b"sniff-please"),
            (b"x-request-id", b"upstream-chose-this"),
            (b"connection", b"x-internal"),
            (b"x-internal", b"secret"),
            (b"keep-alive", b"timeout=1"),
            (b"x-app", b"kept"),
        )
    )
    response, _ = exchange(gw, upstream, [])
    assert response.header("x-content-type-options") == b"nosniff"
    assert response.header("referrer-policy") == b"no-referrer"
    assert response.header("strict-transport-security") is None  # plaintext: no HSTS
    assert response.header("server") is None
    assert response.header("x-powered-by") is None
    assert response.header("x-internal") is None
    assert response.header("keep-alive") is None
    assert response.header("x-request-id") != b"upstream-chose-this"
    assert response.header("x-app") == b"kept"
    assert response.body == b'{"ok":true}'


def test_upstream_referrer_policy_wins(gw: GatewayProcess, upstream: RecordingUpstream) -> None:
    upstream.reply = Reply(headers=((b"referrer-policy", b"same-origin"),))
    response, _ = exchange(gw, upstream, [])
    assert response.header_values("referrer-policy") == [b"same-origin"]


def test_error_response_is_json_and_never_echoes_the_request(
    gw: GatewayProcess, upstream: RecordingUpstream
) -> None:
    target = b"/nomatch/alert(1)/'-confirm(1)-'?q=<script>alert(1)</script>&r=%3Cimg%3E"
    with RawClient(gw.port) as client:
        client.send(b"GET %s HTTP/1.1\r\nHost: test.local\r\nX-Request-Id: err-1\r\n\r\n" % target)
        response = client.read_response()
        assert client.closed_by_peer(1.0)
    assert response.status == 404
    assert response.header("content-type") == b"application/json"
    csp = response.header("content-security-policy")
    assert csp is not None and b"default-src 'none'" in csp
    assert response.header("x-content-type-options") == b"nosniff"
    assert response.header("cache-control") == b"no-store"
    body = response.json()
    assert body["error"] == "not_found"
    assert body["message"] == "No route matches this request."
    assert set(body) <= {"error", "message", "request_id"}
    everything = response.raw_head + b"".join(v for _, v in response.headers) + response.body
    for echoed in (b"nomatch", b"alert", b"confirm", b"script", b"<", b"img"):
        assert echoed not in everything
    assert upstream.settle() == []
